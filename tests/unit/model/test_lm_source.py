"""Where the LM comes from and how it is named: node cache for URLs (filled once, under a lock),
Hub ids from the Hub cache offline, the cheap identity (headers, not bytes), and a 2-rank start
that fetches the LM's weights once per node, counted at the S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from frozen_scale.model import lm_identity, lm_source
from frozen_scale.model.lm import lm_summary, load_lm, load_tokenizer
from tests.support.core_fixtures import save_tiny_lm, tiny_config_dict
from tests.support.dist_util import REPO, check, free_port, kill_tree, torchrun

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def s3fs_for(s3_server):
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)


def put_lm(s3_server, lm_dir: Path, extra: dict[str, bytes] | None = None) -> str:
    """The LM folder on a fresh bucket (plus extra files); returns its s3:// URL."""
    url = s3_server.new_bucket() + "/lm"
    fs = s3fs_for(s3_server)
    fs.put(str(lm_dir) + "/", url[5:] + "/", recursive=True)
    for name, data in (extra or {}).items():
        fs.pipe(f"{url[5:]}/{name}", data)
    return url


def gets(s3_server, url: str, name: str) -> int:
    return s3_server.requests()[("GET", f"{url[5:]}/{name}")]


def resave(src: Path, out: Path, **changes) -> Path:
    """The LM at `src` saved again, with config changes or another dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = changes.pop("dtype", None)
    cfg = AutoConfig.from_pretrained(str(src))
    for k, v in changes.items():
        setattr(cfg, k, v)
    if changes:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(src))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(out))
    return out


# -- identity --------------------------------------------------------------------------------
def test_identity_names_config_shapes_and_values(tmp_path, tiny_lm_dir):
    import torch

    base = lm_identity.lm_identity(str(tiny_lm_dir))
    assert lm_identity.lm_identity(str(save_tiny_lm(tmp_path / "again", seed=0))) == base
    differs = lambda other: lm_identity.identity_mismatch(base, lm_identity.lm_identity(str(other)))  # noqa: E731

    assert differs(save_tiny_lm(tmp_path / "seed1", seed=1)) == ["its weight values differ"]
    wider = resave(tiny_lm_dir, tmp_path / "wider", n_embd=64)
    assert "its tensor names, dtypes or shapes differ" in differs(wider)
    half = resave(tiny_lm_dir, tmp_path / "bf16", dtype=torch.bfloat16)
    assert "its tensor names, dtypes or shapes differ" in differs(half)
    edited = tmp_path / "edited"
    shutil.copytree(tiny_lm_dir, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["layer_norm_epsilon"] = 1e-3
    cfg["transformers_version"] = "0.0.1"  # bookkeeping keys do not count
    (edited / "config.json").write_text(json.dumps(cfg))
    assert differs(edited) == ["its config.json differs"]


def test_identity_of_a_sharded_lm_reads_only_headers_and_ignores_the_split(tmp_path, tiny_lm_dir, s3_server):
    from transformers import AutoModelForCausalLM

    bigger = resave(tiny_lm_dir, tmp_path / "one", n_embd=128)  # ~1.7 MB of weights
    AutoModelForCausalLM.from_pretrained(str(bigger)).save_pretrained(str(tmp_path / "sharded"), max_shard_size="500KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) >= 3 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    url = put_lm(s3_server, tmp_path / "sharded")
    s3_server.reset_counts()
    remote = lm_identity.lm_identity(url)
    assert remote == lm_identity.lm_identity(str(bigger))  # same tensors, another split: same identity
    sent = s3_server.bytes_sent()
    total = sum((tmp_path / "sharded" / n).stat().st_size for n in shards)
    read = sum(sent[("GET", f"{url[5:]}/{n}")] for n in shards)
    assert 0 < read < 0.02 * total, (read, total)


# -- the node cache --------------------------------------------------------------------------
def test_remote_lm_is_copied_once_into_the_node_cache(tmp_path, tiny_lm_dir, s3_server):
    url = put_lm(s3_server, tiny_lm_dir, {"README.md": b"hello", "pytorch_model.bin": b"unused",
                                          "original/consolidated.pth": b"unused"})
    cache = tmp_path / "cache"
    s3_server.reset_counts()
    first = lm_source.local_copy(url, str(cache))
    assert Path(first).parent == cache / "models"
    assert sorted(p.name for p in Path(first).iterdir()) == sorted(
        [".complete", *(p.name for p in tiny_lm_dir.iterdir())])  # no README, no .bin, no subfolder
    assert lm_source.local_copy(url, str(cache)) == first
    assert gets(s3_server, url, "model.safetensors") == 1
    assert not list(cache.glob("models/*.tmp-*"))

    (Path(first) / ".complete").unlink()  # a copy whose marker never got written is not trusted
    stale = Path(first + ".tmp-otherhost-123")  # what a killed fill leaves
    stale.mkdir()
    assert lm_source.local_copy(url, str(cache)) == first
    assert gets(s3_server, url, "model.safetensors") == 2
    assert not stale.exists()

    s3fs_for(s3_server).pipe(f"{url[5:]}/generation_config.json", b"{}")  # the store changed
    lm_source.local_copy(url, str(cache))
    assert (Path(first) / "generation_config.json").read_text() == "{}"
    assert gets(s3_server, url, "model.safetensors") == 3

    with pytest.raises(lm_source.ModelNotFoundError, match="model folder not found"):
        lm_source.local_copy(url + "-missing", str(cache))


def test_two_processes_fill_the_node_cache_once(tmp_path, tiny_lm_dir, s3_server):
    url = put_lm(s3_server, tiny_lm_dir, {"large.json": b"0" * (8 << 20)})  # a fill that takes a while
    s3_server.reset_counts()
    # both processes import first, say so, then start together when the go file appears
    code = ("import sys, time, pathlib, fsspec; from frozen_scale.model.lm_source import local_copy; "
            "fsspec.core.url_to_fs(sys.argv[1])[0].ls(sys.argv[1]); "
            "pathlib.Path(sys.argv[3]).touch(); go = pathlib.Path(sys.argv[4])\n"
            "while not go.exists(): time.sleep(0.001)\n"
            "print(local_copy(sys.argv[1], sys.argv[2]))")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", code, url, str(tmp_path / "cache"), str(tmp_path / f"ready{i}"),
                               str(go)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert gets(s3_server, url, "model.safetensors") == 1


def test_model_paths_are_folders_urls_or_hub_ids(tmp_path, tiny_lm_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert lm_source.parse_source("org/name").kind == "local"  # an existing folder wins
    assert lm_source.parse_source("org/other") == lm_source.Source("hub", "org/other", None)
    assert lm_source.parse_source(f"meta-llama/Llama-2-7b-hf@{COMMIT}") == lm_source.Source(
        "hub", "meta-llama/Llama-2-7b-hf", COMMIT)
    assert lm_source.parse_source("s3://b/lm/").kind == "remote"
    assert lm_source.parse_source(f"file://{tiny_lm_dir}").location == str(tiny_lm_dir)
    for missing in ["./lm", "/no/such/lm", "a/b/c", "lm", f"file://{tmp_path}/none"]:
        with pytest.raises(lm_source.ModelNotFoundError, match="model folder not found"):
            lm_source.parse_source(missing)
    with pytest.raises(ValueError, match="empty"):
        lm_source.parse_source("")


# -- Hugging Face Hub ids --------------------------------------------------------------------
def fake_hub_cache(hub_cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """`folder` laid out as huggingface_hub caches a download of `repo_id` at `commit` (main)."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, tiny_lm_dir, monkeypatch):
    from huggingface_hub import constants

    hf_home = tmp_path / "hf"
    fake_hub_cache(hf_home / "hub", "tiny-org/tiny-lm", tiny_lm_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_home


@pytest.mark.parametrize("name", ["tiny-org/tiny-lm", f"tiny-org/tiny-lm@{COMMIT}", "tiny-org/tiny-lm@main"])
def test_hub_id_loads_offline_from_the_hub_cache(offline_hub, tiny_lm_dir, name):
    import torch

    tok = load_tokenizer(name)
    assert tok("a red circle").input_ids == load_tokenizer(str(tiny_lm_dir))("a red circle").input_ids
    lm, ref = load_lm(name), load_lm(str(tiny_lm_dir))
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), ref.state_dict().values()))
    assert lm_summary(name)["identity"] == lm_identity.lm_identity(str(tiny_lm_dir))


def test_missing_hub_model_offline_says_where_it_looked(offline_hub):
    with pytest.raises(lm_source.ModelNotFoundError, match=r"not in the Hub cache .*HF_HUB_OFFLINE"):
        load_lm("tiny-org/missing")
    with pytest.raises(lm_source.ModelNotFoundError, match="not in the Hub cache"):
        load_lm("tiny-org/tiny-lm@v9")


def test_plan_reads_a_hub_config_offline(offline_hub, tiny_lm_dir):
    from launchers import plan

    assert plan.lm_shape(f"tiny-org/tiny-lm@{COMMIT}") == plan.lm_shape(str(tiny_lm_dir))


def write_run_config(tmp_path: Path, name: str, lm_path: str, shards, **sections) -> Path:
    path = tmp_path / f"{name}.yaml"
    cfg = tiny_config_dict(Path("unused"), shards, tmp_path / name, **sections)
    cfg["model"]["lm_path"] = lm_path
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_cli_takes_a_hub_id_offline_and_refuses_a_missing_one_without_traceback(
        tmp_path, tiny_lm_dir, tiny_shards):
    hf_home = tmp_path / "hf"
    fake_hub_cache(hf_home / "hub", "tiny-org/tiny-lm", tiny_lm_dir)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "FROZEN_SCALE_CACHE": str(tmp_path / "cache")}
    env.pop("HF_HUB_CACHE", None)
    cfg = write_run_config(tmp_path, "hub", f"tiny-org/tiny-lm@{COMMIT}", tiny_shards,
                           train={"steps": 2, "log_every": 1}, checkpoint={"every": 0})
    cli = [sys.executable, "-m", "frozen_scale.app.cli", "train", str(cfg)]
    done = subprocess.run(cli, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    state = json.loads((tmp_path / "hub" / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["lm"]["path"] == f"tiny-org/tiny-lm@{COMMIT}"
    assert state["lm"]["identity"] == lm_identity.lm_identity(str(tiny_lm_dir))

    missing = subprocess.run([*cli, "model.lm_path=tiny-org/no-such-lm", f"train.run_dir={tmp_path / 'hub2'}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2, missing.stderr[-4000:]
    assert "tiny-org/no-such-lm" in missing.stderr and "not in the Hub cache" in missing.stderr
    assert "Traceback" not in missing.stderr


# -- a 2-rank start against the local S3 server ----------------------------------------------
@pytest.mark.slow
def test_two_rank_start_fetches_the_lm_once_per_node_and_never_rereads_it(tmp_path, tiny_lm_dir, tiny_shards,
                                                                          s3_server):
    from frozen_scale.train.metrics import read_metrics

    url = put_lm(s3_server, tiny_lm_dir)
    env = {"FROZEN_SCALE_CACHE": str(tmp_path / "cache")}
    cfg = write_run_config(tmp_path, "s3lm", url, tiny_shards, train={"steps": 2, "log_every": 1},
                           checkpoint={"every": 0})
    s3_server.reset_counts()
    run = torchrun(2, ["train", str(cfg)], module="frozen_scale.app.cli", env=env)
    check(run)
    for name in ["model.safetensors", "config.json", "tokenizer.json"]:
        assert gets(s3_server, url, name) == 1, (name, s3_server.requests())  # one node: one fetch
    size = (tiny_lm_dir / "model.safetensors").stat().st_size
    assert s3_server.bytes_sent()[("GET", f"{url[5:]}/model.safetensors")] == size  # no hash read

    state = json.loads((tmp_path / "s3lm" / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["lm"]["identity"] == lm_identity.lm_identity(str(tiny_lm_dir))
    assert state["lm"]["sha256"] == lm_identity.content_hash(str(tiny_lm_dir), str(tmp_path / "other"))
    [startup] = read_metrics(str(tmp_path / "s3lm"), event="startup")
    for phase in ["download", "identity", "partitioned_load", "engine_build", "first_step"]:
        assert startup[f"{phase}_s"] >= 0, startup
    assert "start-up (s): download" in run.stderr + run.stdout
    assert [r["step"] for r in read_metrics(str(tmp_path / "s3lm"))] == [1, 2]

    # resume: the node cache answers, the store is listed but no weight byte is read again
    resumed = torchrun(2, ["train", str(cfg), "train.resume=auto", "train.steps=3"], module="frozen_scale.app.cli",
                       env=env)
    check(resumed)
    assert gets(s3_server, url, "model.safetensors") == 1


@pytest.mark.slow
def test_two_ranks_stop_together_with_one_message_on_a_missing_lm(tmp_path, tiny_shards):
    cfg = write_run_config(tmp_path, "nolm", str(tmp_path / "no-such-lm"), tiny_shards)
    run = torchrun(2, ["train", str(cfg)], module="frozen_scale.app.cli", timeout=300)
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert out.count("model folder not found") == 1, out[-4000:]
    assert "frozen_scale/" not in out, out[-4000:]  # no traceback through our code on any rank


@pytest.mark.slow
def test_two_nodes_sharing_a_cache_fetch_the_lm_once(tmp_path, tiny_lm_dir, tiny_shards, s3_server):
    """Two single-rank "nodes" (two torchrun launches, node ranks 0 and 1) whose node cache is one
    folder, as on a shared filesystem: each node leader lists the store, one fetches under the
    lock, the other finds the copy complete."""
    url = put_lm(s3_server, tiny_lm_dir)
    cfg = write_run_config(tmp_path, "nodes", url, tiny_shards, train={"steps": 1, "log_every": 1},
                           checkpoint={"every": 0})
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "FROZEN_SCALE_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    port = free_port()
    s3_server.reset_counts()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
         "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "frozen_scale.app.cli", "train", str(cfg)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_tree(p)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    requests = s3_server.requests()
    assert gets(s3_server, url, "model.safetensors") == 1, requests
    assert requests[("GET", url[5:].split("/")[0])] == 2, requests  # one listing per node
