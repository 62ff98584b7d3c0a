"""Where a model's files come from: a local folder, an fsspec URL, or a Hugging Face Hub id.

`local_copy(path)` returns a local folder holding the model's files:
- a local folder (or `file://` URL) is used in place; an existing folder always wins;
- a remote fsspec URL (s3://, gs://, ...) is copied into the node cache
  `$FROZEN_SCALE_CACHE/models/<key>` (default `~/.cache/frozen_scale`): under a file lock, into a
  temp folder that is renamed into place, with the `.complete` marker written last, so two jobs on
  one node, or a cache on a shared filesystem, never see or make a half copy;
- `org/name` or `org/name@revision` is a Hub model id, resolved by huggingface_hub into its own
  cache (HF_HOME, HF_HUB_OFFLINE and HF_TOKEN are honoured there).

Only what loading needs is fetched: the top-level config, tokenizer and generation files and
one weight format (safetensors when present, else PyTorch .bin) with its index. Coordinating
ranks (one fetch per node) is the caller's business: nothing here knows about processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from frozen_scale import storage
from frozen_scale.config import ConfigError, NotFoundError

log = logging.getLogger("frozen_scale.model")

COMPLETE = ".complete"
# Files a model folder needs besides its weights: configs, tokenizers, chat templates.
SIDE_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
NOT_WEIGHTS = {"training_args.bin", "optimizer.bin", "scheduler.bin"}
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[A-Za-z0-9._/-]+))?$")  # org/name[@revision]
_LOCK_WAIT_LOG_S = 10.0


class ModelNotFoundError(NotFoundError):
    """A model path that is neither a local folder, a reachable URL, nor a Hub model."""


@dataclass(frozen=True)
class Source:
    kind: str  # "local" | "remote" | "hub"
    location: str  # local folder, URL, or Hub repo id
    revision: str | None = None


def cache_root() -> Path:
    """The node cache: $FROZEN_SCALE_CACHE, default ~/.cache/frozen_scale."""
    return Path(os.environ.get("FROZEN_SCALE_CACHE") or Path.home() / ".cache" / "frozen_scale")


def parse_source(path: str) -> Source:
    """Local folder, fsspec URL or Hub id; raises ModelNotFoundError for anything else."""
    if not path:
        raise ConfigError("model.lm_path is empty: set it to the LM's folder, an fsspec URL (s3://bucket/lm) "
                          "or a Hugging Face Hub id (org/name)")
    if path.startswith("file://"):
        return _local(path[len("file://"):], path)
    if storage.is_remote(path):
        return Source("remote", path.rstrip("/"))
    if Path(path).expanduser().is_dir():
        return Source("local", str(Path(path).expanduser()))
    match = _HUB_ID.match(path)
    if match and not path.startswith((".", "/", "~")):
        return Source("hub", match["repo"], match["rev"])
    return _local(path, path)


def _local(folder: str, given: str) -> Source:
    if not Path(folder).expanduser().is_dir():
        raise ModelNotFoundError(
            f"model folder not found: {given}. Give a folder with config.json, an fsspec URL "
            "(s3://bucket/lm) or a Hugging Face Hub id (org/name or org/name@revision)"
        )
    return Source("local", str(Path(folder).expanduser()))


def local_copy(path: str, cache_dir: str | None = None) -> str:
    """A local folder with the model at `path` (the folder itself when already local)."""
    source = parse_source(path)
    if source.kind == "local":
        return source.location
    if source.kind == "hub":
        return _hub_snapshot(source)
    return _remote_copy(source.location, Path(cache_dir) if cache_dir else cache_root())


def wanted_files(names: list[str]) -> list[str]:
    """The top-level files loading needs: side files plus one weight format (safetensors first)."""
    top = [n for n in names if "/" not in n]
    safetensors = [n for n in top if n.endswith(".safetensors") or n.endswith(".safetensors.index.json")]
    bins = [n for n in top if (n.endswith(".bin") or n.endswith(".bin.index.json")) and n not in NOT_WEIGHTS]
    weights = safetensors if any(n.endswith(".safetensors") for n in safetensors) else bins
    side = [n for n in top if n.endswith(SIDE_SUFFIXES) and not n.endswith(".index.json")]
    return sorted(set(side) | set(weights))


# -- remote URLs -> node cache ---------------------------------------------------------------
def _remote_listing(fs, root: str) -> dict[str, list]:
    """name -> [size, version] of the files to fetch (version: ETag or modification time)."""
    fs.invalidate_cache(root)  # a listing cached earlier in this process may be stale
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        entries = []
    files = {}
    for e in entries:
        if e.get("type") != "file":
            continue
        version = e.get("ETag") or e.get("etag") or e.get("LastModified") or e.get("mtime") or e.get("updated")
        files[storage.base_name(e["name"])] = [int(e.get("size") or 0), str(version)]
    return {name: files[name] for name in wanted_files(list(files))}


def _remote_copy(url: str, cache: Path) -> str:
    target = cache / "models" / hashlib.sha256(url.encode()).hexdigest()[:16]
    fs, root = storage.filesystem(url)
    listing = _remote_listing(fs, root)
    if not listing:
        raise ModelNotFoundError(f"model folder not found: {url} (no such folder, or no config, tokenizer "
                                 "or weight files directly in it)")
    if _complete_listing(target) == listing:
        return str(target)
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock")
    t0 = time.monotonic()
    with _acquire(lock, f"another process is filling the node cache for {url}"):
        if _complete_listing(target) == listing:  # filled while we waited
            return str(target)
        for stale in target.parent.glob(f"{target.name}.tmp-*"):  # left by a killed fill
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.with_name(f"{target.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        try:
            _download(fs, root, url, listing, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target.exists():  # an older or interrupted copy: replaced whole
            old = target.with_name(f"{target.name}.old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(target)
        (target / COMPLETE).write_text(json.dumps({"url": url, "files": listing}))  # last
    log.info("fetched %s into the node cache %s (%d files, %.1fs)", url, target, len(listing), time.monotonic() - t0)
    return str(target)


def _download(fs, root: str, url: str, listing: dict, folder: Path) -> None:
    folder.mkdir(parents=True)
    names = sorted(listing)
    fs.get([f"{root}/{n}" for n in names], [str(folder / n) for n in names])
    for n in names:
        got = (folder / n).stat().st_size
        if got != listing[n][0]:
            raise OSError(f"download of {url}/{n} is incomplete: {got} of {listing[n][0]} bytes")


def _complete_listing(target: Path) -> dict | None:
    try:
        return json.loads((target / COMPLETE).read_text())["files"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


class _acquire:
    """Take a file lock, logging once if someone else holds it."""

    def __init__(self, lock, waiting: str):
        self.lock, self.waiting = lock, waiting

    def __enter__(self):
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=_LOCK_WAIT_LOG_S)
        except Timeout:
            log.warning("%s (lock %s): waiting", self.waiting, self.lock.lock_file)
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


# -- Hugging Face Hub ------------------------------------------------------------------------
def _hub_snapshot(source: Source) -> str:
    """The snapshot folder of a Hub model, downloading what loading needs unless offline."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = source.location + (f"@{source.revision}" if source.revision else "")
    offline = constants.HF_HUB_OFFLINE
    try:
        if offline:
            folder = snapshot_download(source.location, revision=source.revision, local_files_only=True,
                                       allow_patterns=_cached_wanted_files(source))
        else:
            from huggingface_hub import HfApi

            files = HfApi().list_repo_files(source.location, revision=source.revision)
            folder = snapshot_download(source.location, revision=source.revision,
                                       allow_patterns=wanted_files(files))
    except GatedRepoError as err:
        raise ModelNotFoundError(f"Hub model {name} is gated: accept its terms on the Hub and set "
                                 f"HF_TOKEN ({_first_line(err)})") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as err:
        raise ModelNotFoundError(
            f"model folder not found: {name}, and no Hub model {name} ({_first_line(err)}). Give a "
            "folder with config.json, an fsspec URL (s3://bucket/lm) or a Hub id org/name[@revision]; "
            "private models need HF_TOKEN"
        ) from None
    except LocalEntryNotFoundError as err:
        where = constants.HF_HUB_CACHE
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise ModelNotFoundError(
            f"model folder not found: {name}, and it is not in the Hub cache {where} ({why}). Download "
            f"it once with network access (same HF_HOME), or point model.lm_path at a folder "
            f"({_first_line(err)})"
        ) from None
    return folder


def _cached_wanted_files(source: Source) -> list[str] | None:
    """What an earlier online fetch took, from the Hub cache's tree listing (None: unknown), so
    that files it skipped on purpose do not make the cached snapshot count as incomplete."""
    try:
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.errors import CachedRepoTreeNotFoundError
    except ImportError:  # older huggingface_hub: no tree cache, no completeness check
        return None
    try:
        return wanted_files([f.path for f in get_cached_repo_tree(source.location, revision=source.revision)])
    except CachedRepoTreeNotFoundError:
        return None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
