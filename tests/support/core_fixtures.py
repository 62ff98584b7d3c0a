"""Session fixtures for the training core: a tiny LM saved locally, tiny world shards, a config.

Everything is made by the tests themselves (save_pretrained into a temp folder); nothing is
downloaded.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("DS_ACCELERATOR", "cpu")

TINY = dict(n_layer=2, n_embd=32, n_head=2)


def save_tiny_lm(out: Path, arch: str = "gpt2", seed: int = 0) -> Path:
    """A tiny random LM of `arch` with the world's tokenizer, saved with save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    from frozen_scale.world import text
    from frozen_scale.world.pretrain_lm import tiny_lm_config

    tok = text.build_tokenizer()
    cfg = tiny_lm_config(arch, len(tok), TINY["n_layer"], TINY["n_embd"], TINY["n_head"], 128,
                         tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def write_shards_plain(out: Path, count: int, per_shard: int, split: str = "train", seed: int = 0,
                       image_size: int = 16) -> Path:
    """World shards written by data_prep's world shard writer in this process (no Ray), plus a manifest."""
    from frozen_scale.world.shards import write_world_shards

    write_world_shards(str(out), seed=seed, split=split, count=count, samples_per_shard=per_shard,
                       image_size=image_size, num_workers=0)
    return out


def truncate_shard(path: Path) -> None:
    """Cut a tar in the middle of a member (a shard whose upload died)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


def corrupt_first_png(path: Path) -> None:
    """Replace the first image of a tar with bytes that do not decode."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        done = False
        for m, data in members:
            if not done and m.name.endswith(".png"):
                data, done = b"this is not an image", True
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


class FixedVectors(torch.nn.Module):
    """Stands in for a prefix's free vectors: the same [k, d] rows for every image."""

    def __init__(self, rows):
        super().__init__()
        self.rows = torch.nn.Parameter(rows.clone())

    def forward(self, features):
        return self.rows.expand(features.shape[0], *self.rows.shape)


def tiny_config_dict(lm_dir: Path, shards: Path, run_dir: Path, **sections) -> dict:
    cfg = {
        "model": {"lm_path": str(lm_dir), "prefix_length": 2,
                  "vision": {"kind": "resnet", "image_size": 16, "resnet_widths": [8, 16]}},
        "data": {"train_shards": str(shards), "num_workers": 1, "shuffle_buffer": 16, "max_text_len": 24,
                 "prompt": "caption :"},
        "train": {"run_dir": str(run_dir), "steps": 4, "micro_batch_size": 4, "lr": 1e-3, "log_every": 2,
                  "progress": False, "tensorboard": False},
        "deepspeed": {"stage": 2, "extra": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
        "checkpoint": {"every": 2, "keep_last": 2},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def train_tiny_run(root: Path, lm_dir: Path, shards: Path, steps: int = 2) -> Path:
    """A finished tiny training run (one committed checkpoint at the end) in root/run."""
    from frozen_scale.config import load_config
    from frozen_scale.train.trainer import train

    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(lm_dir, shards, root / "run",
                                                    train={"steps": steps}, checkpoint={"every": 0})))
    assert train(load_config(path)) == 0
    return root / "run"


@pytest.fixture(scope="session", autouse=True)
def node_cache(tmp_path_factory):
    """FROZEN_SCALE_CACHE (node cache of fetched models, LM hash records) in a temp folder, so no
    test writes to the home folder; child processes inherit it."""
    saved = os.environ.get("FROZEN_SCALE_CACHE")
    os.environ["FROZEN_SCALE_CACHE"] = str(tmp_path_factory.mktemp("node_cache"))
    yield Path(os.environ["FROZEN_SCALE_CACHE"])
    if saved is None:
        os.environ.pop("FROZEN_SCALE_CACHE", None)
    else:
        os.environ["FROZEN_SCALE_CACHE"] = saved


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    return write_shards_plain(tmp_path_factory.mktemp("shards"), count=96, per_shard=24)


@pytest.fixture
def tiny_run_config(tiny_lm_dir, tiny_shards, tmp_path) -> Path:
    """A YAML config that trains the tiny LM for a few steps on CPU (run folder under tmp_path)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tiny_lm_dir, tiny_shards, tmp_path / "run")))
    return path


@pytest.fixture(scope="session")
def big_lm_dir(tmp_path_factory) -> Path:
    """The billion-parameter Llama-shaped LM of bench/big_lm.py (1.03B, bf16, 3 safetensors
    shards of at most 1 GB, the world's tokenizer), random init, saved once per session."""
    big_lm = bench_module("big_lm")
    return big_lm.build_lm(tmp_path_factory.mktemp("big_lm"), big_lm.BIG)


def bench_module(name: str):
    """A bench script imported as a module (its folder's `common` too), without touching sys.path
    for the rest of the session."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[2] / "bench"
    for mod in ("common", name):
        if mod not in sys.modules or not str(getattr(sys.modules[mod], "__file__", "")).startswith(str(bench)):
            spec = importlib.util.spec_from_file_location(mod, bench / f"{mod}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod] = module
            spec.loader.exec_module(module)
    return sys.modules[name]


def rewrite_checkpoint_file(checkpoint: Path, relative: str, data: str) -> None:
    """Change a committed checkpoint's file on purpose and record it in its marker (what a test
    that edits a checkpoint means to do; a change without this is damage, which loading refuses)."""
    import json

    from frozen_scale.train.integrity import hash_file

    (checkpoint / relative).write_text(data)
    marker = json.loads((checkpoint / "COMMITTED").read_text())
    marker["files"][relative] = hash_file(checkpoint / relative)
    (checkpoint / "COMMITTED").write_text(json.dumps(marker))
