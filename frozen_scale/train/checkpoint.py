"""Checkpoints on any fsspec URL, visible only once complete.

Layout of one checkpoint:  {checkpoint_dir}/step_00000100/
    ds/...                    DeepSpeed engine state (trainable weights, optimizer, scheduler);
                              frozen LM parameters excluded: the LM is referenced, not copied
    rank_00000.json           per-rank state: data stream position, RNG states
    trainer_state.json        step, samples seen, LM reference (path, identity, sha256), fingerprint
    COMMITTED                 commit marker, written last by rank 0 after every rank is done

Remote URLs (s3://, ...) are staged in a local folder and uploaded by each node's local rank 0,
then committed; resume downloads the newest committed checkpoint first.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import fsspec
import numpy as np
import torch

COMMIT_MARKER = "COMMITTED"
PREFIX = "step_"


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _fs(url: str):
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()  # listings of object stores are cached per process; other ranks write
    return fs, root


def step_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def committed_steps(checkpoint_dir: str) -> list[int]:
    """Steps with a commit marker, oldest first."""
    fs, root = _fs(checkpoint_dir)
    if not fs.exists(root):
        return []
    steps = []
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(PREFIX) and fs.exists(f"{entry.rstrip('/')}/{COMMIT_MARKER}"):
            try:
                steps.append(int(name[len(PREFIX):]))
            except ValueError:
                continue
    return sorted(steps)


def resolve_resume(resume: str, checkpoint_dir: str) -> str | None:
    """The checkpoint URL to resume from ('' -> None; 'auto' -> newest committed or None)."""
    if not resume:
        return None
    if resume == "auto":
        steps = committed_steps(checkpoint_dir)
        return f"{checkpoint_dir.rstrip('/')}/{step_name(steps[-1])}" if steps else None
    fs, root = _fs(resume)
    if not fs.exists(f"{root.rstrip('/')}/{COMMIT_MARKER}"):
        raise ValueError(f"{resume} is not a committed checkpoint (no {COMMIT_MARKER} marker)")
    return resume


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def local_stage(run_dir: str, url: str, node: str = "node") -> Path:
    """Where a checkpoint lives locally while written or read (the URL itself when local). One
    folder per node: the run folder is often on a filesystem every node shares, and each node's
    local rank 0 uploads what its own ranks wrote and downloads for its own ranks."""
    if not is_remote(url):
        return Path(url[len("file://"):] if url.startswith("file://") else url)
    return Path(run_dir) / ".ckpt_stage" / node / url.rstrip("/").rsplit("/", 1)[-1]


def upload(local: Path, url: str) -> None:
    fs, root = _fs(url)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}")


def download(url: str, local: Path) -> None:
    fs, root = _fs(url)
    tmp = local.with_name(local.name + f".part{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fs.get(root.rstrip("/") + "/", str(tmp), recursive=True)
    shutil.rmtree(local, ignore_errors=True)
    tmp.rename(local)


def write_json(url_or_path: str, payload: dict) -> None:
    """Write JSON atomically where the store allows (local: temp name + rename)."""
    text = json.dumps(payload, indent=1)
    if is_remote(url_or_path):
        with fsspec.open(url_or_path, "w") as fh:
            fh.write(text)
        return
    path = Path(url_or_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(url_or_path: str) -> dict:
    with fsspec.open(url_or_path, "r") as fh:
        return json.load(fh)


def commit(url: str, payload: dict | None = None) -> None:
    """Write the commit marker: the checkpoint becomes visible."""
    fs, root = _fs(url)
    with fs.open(f"{root.rstrip('/')}/{COMMIT_MARKER}", "w") as fh:
        fh.write(json.dumps(payload or {}))


def prune(checkpoint_dir: str, keep_last: int) -> list[int]:
    """Delete committed checkpoints beyond the newest `keep_last`, and uncommitted leftovers
    older than the newest committed one. Never touches the newest committed checkpoint."""
    fs, root = _fs(checkpoint_dir)
    steps = committed_steps(checkpoint_dir)
    if not steps:
        return []
    doomed = steps[:-keep_last] if keep_last < len(steps) else []
    newest = steps[-1]
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith(PREFIX):
            continue
        try:
            step = int(name[len(PREFIX):])
        except ValueError:
            continue
        uncommitted_stale = step < newest and step not in steps
        if step in doomed or uncommitted_stale:
            fs.rm(entry, recursive=True)
    return doomed
