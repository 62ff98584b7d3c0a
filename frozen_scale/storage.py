"""URL and filesystem helpers: the one place that turns a path into an fsspec filesystem.

Used by checkpoints (train.checkpoint), LM loading (model.lm_source, model.lm_identity), shard
listing and reading (data.shards, data.loader), the evaluation data readers and data_prep.
Every path is a URL (`/local/dir`, `file:///x`, `s3://bucket/prefix`, ...) plus optional
fsspec storage options. Writes are all-or-nothing: on a local disk through a temporary name and
an atomic rename; on object stores a single PUT, which the store makes visible only once whole.
That is what lets a *commit marker* (a small file written last) mean "everything before me is
complete".
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

StorageOptions = dict[str, Any]


def filesystem(url: str, storage_options: StorageOptions | None = None, fresh: bool = False):
    """(fs, path) for a URL; `path` is what `fs` methods take. `fresh`: forget the listings this
    process cached for that filesystem (object stores cache them per process; other processes
    write)."""
    fs, path = url_to_fs(url, **(storage_options or {}))
    if fresh:
        fs.invalidate_cache()
    return fs, path


def is_remote(url: str) -> bool:
    """A URL with a scheme other than file:// (s3://, gs://, ...)."""
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    """The local path of a local URL (`file:///x` -> `/x`; a plain path as given)."""
    return url[len("file://"):] if url.startswith("file://") else url


def base_name(url: str) -> str:
    """The last path segment: base_name('s3://b/ckpt/step_1/') == 'step_1'."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(base: str, *parts: str) -> str:
    """Join URL path segments with '/', keeping the scheme: join('s3://b/p', 'x.tar')."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def resolve(base: str, name: str) -> str:
    """`name` relative to the folder URL `base`, unless it is a URL or an absolute path itself."""
    return name if "://" in name or name.startswith("/") else join(base, name)


def exists(url: str, storage_options: StorageOptions | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def read_bytes(url: str, storage_options: StorageOptions | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path)


def _temp_name(path: str) -> str:
    head, _, name = path.rpartition("/")
    return f"{head}/.{name}.tmp-{uuid.uuid4().hex[:12]}"


def fsync_dir(path: str) -> None:
    """Make a local folder's entries (a rename just done) durable; a no-op where it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        fsync_dir(fs._parent(path))
    else:
        fs.pipe_file(path, data)


def atomic_put_file(local_path: str, url: str, storage_options: StorageOptions | None = None) -> None:
    """Upload (or move into place) a finished local file, all-or-nothing."""
    fs, path = filesystem(url, storage_options)
    if is_local(fs):
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = _temp_name(path)
        fs.put_file(local_path, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before the name (and any marker written after it) appears
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(fs._parent(path))
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


def read_json(url: str, storage_options: StorageOptions | None = None):
    with open_url(url, "r", storage_options) as fh:
        return json.load(fh)


def write_json(url: str, payload, storage_options: StorageOptions | None = None) -> None:
    """Write JSON all-or-nothing (see `atomic_write_bytes`)."""
    atomic_write_bytes(url, json.dumps(payload, indent=1).encode(), storage_options)


def upload_folder(local: Path, url: str) -> None:
    """Every file under the local folder `local` to the same relative path under `url`."""
    fs, root = filesystem(url)
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            fs.put_file(str(path), join(root, path.relative_to(local).as_posix()))


def download_folder(url: str, local: Path) -> None:
    """The folder at `url` into the local folder `local`, whole: fetched under a temporary name,
    then renamed into place (an earlier copy is replaced)."""
    fs, root = filesystem(url, fresh=True)
    local = Path(local)
    tmp = local.with_name(f"{local.name}.part{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fs.get(root.rstrip("/") + "/", str(tmp), recursive=True)
    shutil.rmtree(local, ignore_errors=True)
    tmp.rename(local)


def get_file(url: str, local: str, storage_options: StorageOptions | None = None) -> None:
    """Copy the file at `url` to the local path `local`."""
    fs, path = filesystem(url, storage_options)
    fs.get_file(path, local)
