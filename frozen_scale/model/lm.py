"""Loading the language model (any transformers causal LM) and freezing it.

The LM and tokenizer come from a local folder or any fsspec URL (s3://, gs://, ...; copied once
into a local cache). Under ZeRO-3 the caller keeps a `HfDeepSpeedConfig` alive while calling
`load_lm`, so transformers builds the model already partitioned (see frozen_scale.distributed).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import fsspec
import torch
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_copy(url: str, cache_dir: str | None = None) -> str:
    """A local folder with the contents of `url` (the path itself when already local)."""
    if not url:
        raise ValueError("no model path given (model.lm_path is empty)")
    if _is_local(url):
        path = url[len("file://"):] if url.startswith("file://") else url
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model folder not found: {path}")
        return path
    cache = Path(cache_dir or os.environ.get("FROZEN_SCALE_CACHE", Path.home() / ".cache" / "frozen_scale"))
    target = cache / "models" / hashlib.sha256(url.encode()).hexdigest()[:16]
    done = target / ".complete"
    if not done.exists():
        fs, root = fsspec.core.url_to_fs(url)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        fs.get(root.rstrip("/") + "/", str(tmp), recursive=True)
        if target.exists():  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(target)
        done.touch()
    return str(target)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_copy(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_lm(path: str, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> nn.Module:
    """Load a causal LM (partitioned on load when a ZeRO-3 HfDeepSpeedConfig is alive)."""
    from transformers import AutoModelForCausalLM

    local = local_copy(path)
    try:
        return AutoModelForCausalLM.from_pretrained(local, dtype=dtype, attn_implementation=attn_implementation)
    except (ValueError, ImportError):
        # Architectures without SDPA support fall back to the eager attention.
        return AutoModelForCausalLM.from_pretrained(local, dtype=dtype, attn_implementation="eager")


def freeze(lm: nn.Module) -> nn.Module:
    """requires_grad=False on every parameter and eval mode (no dropout)."""
    lm.requires_grad_(False)
    lm.eval()
    return lm


def content_hash(path: str) -> str:
    """sha256 over the LM's config and weight files (names and bytes): identifies the frozen LM."""
    fs, root = fsspec.core.url_to_fs(path)
    files = sorted(
        f for f in fs.find(root) if f.endswith(WEIGHT_SUFFIXES) or f.endswith("config.json")
    )
    digest = hashlib.sha256()
    for f in files:
        digest.update(os.path.relpath(f, root).encode())
        with fs.open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def lm_summary(path: str) -> dict:
    """What a checkpoint or export records about the LM it was trained against."""
    cfg = json.loads(Path(local_copy(path), "config.json").read_text())
    return {
        "path": path,
        "sha256": content_hash(path),
        "model_type": cfg.get("model_type"),
        "hidden_size": cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model"),
        "vocab_size": cfg.get("vocab_size"),
    }


def enable_activation_checkpointing(lm: nn.Module) -> int:
    """Non-reentrant activation checkpointing through the LM's decoder layers while it stays in
    eval mode: transformers checkpoints a layer only when that layer's `training` flag is set,
    so the flag is set on the decoder-layer modules alone; their dropout-bearing submodules stay
    in eval mode. Returns the number of layers checkpointed."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.training = True
    return len(layers)
