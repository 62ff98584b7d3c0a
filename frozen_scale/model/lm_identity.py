"""Naming a language model without reading it whole.

`lm_identity(folder)` is what decides whether a checkpoint or an export fits an LM. It reads the
config, each safetensors header (tensor names, dtypes, shapes) and a 64-byte sample from the
middle of every tensor; for PyTorch .bin weights, the zip directory with each member's CRC-32.
A 14 GB LM costs a few hundred small reads, not 14 GB. The tensor part does not depend on how
the weights are split into shard files. It is not a hash of every byte: two LMs with equal
configs and shapes that differ only outside the sampled bytes would share it.

`content_hash(folder)` is that hash of every byte (sha256 over config and weight files, names
and bytes). It is recorded for provenance, computed on a local folder only, and cached in
`$FROZEN_SCALE_CACHE/hashes/` keyed by each file's size and modification time, so a folder is
read whole at most once.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

from frozen_scale import storage
from frozen_scale.config import NotFoundError
from frozen_scale.model.lm_source import cache_root, wanted_files

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
SAMPLE_BYTES = 64
IGNORED_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash")
IDENTITY_PARTS = {
    "format": "its weight format differs",
    "config": "its config.json differs",
    "tensors": "its tensor names, dtypes or shapes differ",
    "values": "its weight values differ",
    "bytes": "its weights have another size",
}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def lm_identity(path: str) -> dict:
    """Cheap identity of the model folder at `path` (a local folder or any fsspec URL)."""
    fs, root = storage.filesystem(path)
    root = root.rstrip("/")
    names = [storage.base_name(p) for p in fs.ls(root, detail=False)]
    if "config.json" not in names:
        raise NotFoundError(f"no config.json in {path}: not a model folder (save_pretrained layout)")
    config = json.loads(fs.cat_file(f"{root}/config.json"))
    for key in IGNORED_CONFIG_KEYS:
        config.pop(key, None)
    weights = [n for n in wanted_files(names) if n.endswith((".safetensors", ".bin"))]
    if not weights:
        raise NotFoundError(f"no weight files (.safetensors or .bin) in {path}")
    if weights[0].endswith(".safetensors"):
        fmt, tensors, values, size = "safetensors", *_safetensors_parts(fs, [f"{root}/{n}" for n in weights])
    else:
        fmt, tensors, values, size = "bin", *_bin_parts(fs, root, weights)
    return {"format": fmt, "config": _digest(config), "tensors": tensors, "values": values, "bytes": size}


def _safetensors_header(fs, path: str) -> tuple[dict, int]:
    size = fs.size(path)
    (n,) = struct.unpack("<Q", fs.cat_file(path, start=0, end=8))
    if n + 8 > size:
        raise ValueError(f"{path} is not a safetensors file (header of {n} bytes in {size})")
    header = json.loads(fs.cat_file(path, start=8, end=8 + n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _safetensors_parts(fs, paths: list[str]) -> tuple[str, str, int]:
    """(tensors digest, values digest, tensor bytes) over all shards, by tensor name."""
    spans = {}
    for path in paths:
        header, base = _safetensors_header(fs, path)
        for name, t in header.items():
            start, end = t["data_offsets"]
            spans[name] = (t["dtype"], t["shape"], path, base + start, base + end)
    order = sorted(spans)
    reads = []
    for name in order:
        _, _, path, start, end = spans[name]
        offset = start + max(0, (end - start) // 2 - SAMPLE_BYTES // 2)
        reads.append((path, offset, min(end, offset + SAMPLE_BYTES)))
    samples = fs.cat_ranges([r[0] for r in reads], [r[1] for r in reads], [r[2] for r in reads], on_error="raise")
    values = hashlib.sha256()
    for name, sample in zip(order, samples):
        values.update(name.encode() + b"\0" + bytes(sample))
    tensors = _digest([[name, spans[name][0], spans[name][1]] for name in order])
    return tensors, values.hexdigest()[:16], sum(spans[n][4] - spans[n][3] for n in order)


def _bin_parts(fs, root: str, names: list[str]) -> tuple[str, str, int]:
    """PyTorch zip checkpoints: each member's name, size and CRC-32 from the zip directory."""
    members, size = [], 0
    for name in names:
        with fs.open(f"{root}/{name}", "rb", block_size=1 << 16) as fh:
            total = fs.size(f"{root}/{name}")
            size += total
            if zipfile.is_zipfile(fh):
                fh.seek(0)
                with zipfile.ZipFile(fh) as z:
                    members += [[name, i.filename.split("/", 1)[-1], i.file_size, i.CRC] for i in z.infolist()]
            else:  # a legacy (non-zip) pickle: its size and the CRC of its first and last 4 KiB
                head = fh.read(4096)
                fh.seek(max(0, total - 4096))
                members.append([name, "", total, zlib.crc32(head + fh.read())])
    tensors = _digest([m[:3] for m in members])
    values = _digest([m[3] for m in members])
    return tensors, values, size


def identity_mismatch(saved: dict, current: dict) -> list[str]:
    """What differs between two identities, in words."""
    return [why for key, why in IDENTITY_PARTS.items() if saved.get(key) != current.get(key)]


# -- the full hash ----------------------------------------------------------------------------
def _hashed_files(folder: Path) -> list[str]:
    out = []
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            if f.endswith(WEIGHT_SUFFIXES) or f.endswith("config.json"):
                out.append(os.path.relpath(os.path.join(dirpath, f), folder))
    return sorted(out)


def content_hash(folder: str, cache_dir: str | None = None) -> str:
    """sha256 over the config and weight files (relative names and bytes) of a local folder,
    cached by each file's size and modification time."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    files = _hashed_files(root)
    stats = {f: [(root / f).stat().st_size, (root / f).stat().st_mtime_ns] for f in files}
    record_path = Path(cache_dir or cache_root()) / "hashes" / f"{_digest(str(root.resolve()))}.json"
    try:
        record = json.loads(record_path.read_text())
        if record["files"] == stats:
            return record["sha256"]
    except (FileNotFoundError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.encode())
        with open(root / f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    record = {"folder": str(root.resolve()), "files": stats, "sha256": digest.hexdigest()}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_name(f"{record_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, record_path)
    return record["sha256"]
