"""Checkpoint integrity: every file's size and checksum in the commit marker, checked when read.

At a save each rank hashes and fsyncs the files it wrote (its own `rank_*.json` and DeepSpeed's
`*zero_pp_rank_{rank}_*` files; rank 0 also every file no rank's name is in), the hashes are
gathered to rank 0 and recorded in COMMITTED, which is written after the payload and its folders
are on disk. A checkpoint whose files do not match is *damaged*: it is set aside with a DAMAGED
marker beside COMMITTED (never deleted: the bytes stay for a post-mortem), and is no longer a
committed checkpoint for resume, export or pruning.

The checksum is SHA-256: it runs at ~1.3 GB/s on one core of a CPU with SHA extensions (the trained
prefix of a checkpoint is megabytes to a few GB), needs nothing outside the standard library, and
the project already names LMs by it. A fast non-cryptographic hash would also catch flipped and
truncated bytes, but would be one more dependency for no time that matters here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from frozen_scale import storage

HASH = "sha256"
DAMAGED_MARKER = "DAMAGED"
CHUNK = 4 << 20
_RANK_PATTERNS = (re.compile(r"zero_pp_rank_(\d+)_"), re.compile(r"^rank_(\d+)\.json$"))


def owner_of(relative: str) -> int:
    """The rank that writes this checkpoint file (0 for the files of no rank in particular)."""
    name = relative.rsplit("/", 1)[-1]
    for pattern in _RANK_PATTERNS:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return 0


def hash_file(path: Path, sync: bool = True) -> list:
    """[size, sha256 hex] of a local file, fsynced while it is read (it is in the page cache)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return [size, digest.hexdigest()]


def hash_owned(local: Path, rank: int) -> dict[str, list]:
    """{relative path: [size, sha256]} of the files under `local` that `rank` wrote."""
    out = {}
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        relative = path.relative_to(local).as_posix()
        if relative != "COMMITTED" and owner_of(relative) == rank:
            out[relative] = hash_file(path)
    return out


def fsync_dirs(local: Path) -> None:
    """fsync `local` and every folder below it: the new files' names are on disk too."""
    for folder in [local, *(p for p in local.rglob("*") if p.is_dir())]:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def verify(url: str, files: dict[str, list] | None, names: list[str] | None = None) -> str | None:
    """None when every recorded file (or the `names` among them) has its size and checksum; else
    what is wrong, naming the file. A checkpoint committed without a file list is not checked."""
    if files is None:
        return None
    fs, root = storage.filesystem(url, fresh=True)
    for relative in names if names is not None else sorted(files):
        if relative not in files:
            return f"{relative}: not recorded in the commit marker"
        size, expected = files[relative]
        path = storage.join(root, relative)
        try:
            actual_size = fs.size(path)
            if actual_size != size:
                return f"{relative}: {actual_size} bytes, {size} recorded at commit (truncated or rewritten)"
            digest = hashlib.sha256()
            with fs.open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
        except (OSError, FileNotFoundError) as err:
            return f"{relative}: unreadable ({type(err).__name__}: {err})"
        if digest.hexdigest() != expected:
            return f"{relative}: {HASH} differs from the one recorded at commit (damaged bytes)"
    return None


def is_damaged(url: str) -> bool:
    fs, root = storage.filesystem(url, fresh=True)
    return fs.exists(storage.join(root, DAMAGED_MARKER))


def set_aside(url: str, problem: str) -> None:
    """Mark a damaged checkpoint (its files stay): resume, export and pruning pass it by."""
    storage.atomic_write_bytes(storage.join(url, DAMAGED_MARKER), json.dumps({"problem": problem}).encode())
