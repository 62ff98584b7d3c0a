"""Small fsspec helpers shared by data preparation and checkpointing.

Every path is a URL (`/local/dir`, `file:///x`, `s3://bucket/prefix`, ...) plus optional
fsspec storage options. Writes are all-or-nothing: on a local disk through a temporary name and
an atomic rename; on object stores a single PUT, which the store makes visible only once whole.
That is what lets a *commit marker* (a small file written last) mean "everything before me is
complete".
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

StorageOptions = dict[str, Any]


def filesystem(url: str, storage_options: StorageOptions | None = None):
    """(fs, path) for a URL; `path` is what `fs` methods take."""
    return url_to_fs(url, **(storage_options or {}))


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(base: str, *parts: str) -> str:
    """Join URL path segments with '/', keeping the scheme: join('s3://b/p', 'x.tar')."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(url: str, storage_options: StorageOptions | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def read_bytes(url: str, storage_options: StorageOptions | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path)


def _temp_name(path: str) -> str:
    head, _, name = path.rpartition("/")
    return f"{head}/.{name}.tmp-{uuid.uuid4().hex[:12]}"


def atomic_write_bytes(url: str, data: bytes, storage_options: StorageOptions | None = None) -> None:
    """Write `data` so that readers see either nothing (or the old object) or all of it."""
    fs, path = filesystem(url, storage_options)
    if is_local(fs):
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = _temp_name(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def atomic_put_file(local_path: str, url: str, storage_options: StorageOptions | None = None) -> None:
    """Upload (or move into place) a finished local file, all-or-nothing."""
    fs, path = filesystem(url, storage_options)
    if is_local(fs):
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = _temp_name(path)
        fs.put_file(local_path, tmp)
        os.replace(tmp, path)
    else:
        fs.put_file(local_path, path)


def list_names(url: str, storage_options: StorageOptions | None = None) -> list[str]:
    """Base names of the files directly under a folder URL (empty if it does not exist)."""
    fs, path = filesystem(url, storage_options)
    try:
        entries = fs.ls(path, detail=False, refresh=True) if not is_local(fs) else fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


def open_url(url: str, mode: str = "rb", storage_options: StorageOptions | None = None, **kwargs):
    return fsspec.open(url, mode, **(storage_options or {}), **kwargs)
