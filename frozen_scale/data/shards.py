"""Finding shards on any fsspec URL: a data_prep manifest.json, a brace pattern, or a folder of
shards without our manifest (img2dataset's output: NNNNN.tar with NNNNN_stats.json beside it)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from webdataset.shardlists import expand_urls

from frozen_scale import storage
from frozen_scale.config import ConfigError, InputError, NotFoundError
from frozen_scale.constants import SHARDS_MANIFEST


@dataclass(frozen=True)
class Shard:
    url: str
    num_samples: int | None  # None when unknown (counted while reading)


def _shard_name(manifest_url: str, name, allow_absolute: bool) -> str:
    """A manifest's shard name: relative to the manifest, inside its folder. A manifest from
    elsewhere could otherwise point training at any URL or file; `allow_absolute` lets one name
    shards by full URL on purpose."""
    if not isinstance(name, str) or not name:
        raise InputError(f"{manifest_url}: a shard has no name")
    outside = "://" in name or name.startswith("/") or ".." in name.split("/") or "\0" in name
    if outside and not allow_absolute:
        raise InputError(f"{manifest_url}: shard name {name!r} is not a path inside the manifest's folder; "
                         "set data.allow_absolute_shards=true to trust a manifest that names shards elsewhere")
    return name


def list_shards(spec: str, allow_absolute: bool = False) -> list[Shard]:
    """Shards named by `spec`: a folder/URL holding manifest.json, a manifest.json path, a brace
    pattern such as s3://bucket/train/{00000..00099}.tar, or a folder of .tar shards without a
    manifest (img2dataset's layout; see `folder_shards`)."""
    if not spec:
        raise ConfigError("data.train_shards is empty: give a shard folder (with manifest.json or .tar files) "
                         "or a pattern")
    if "{" in spec:
        return [Shard(u, None) for u in expand_urls(spec)]
    manifest_url = spec if spec.endswith(".json") else storage.join(spec, SHARDS_MANIFEST)
    root = manifest_url.rsplit("/", 1)[0]
    try:
        manifest = storage.read_json(manifest_url)
    except FileNotFoundError:
        shards = [] if spec.endswith(".json") else folder_shards(spec)
        if shards:
            return shards
        raise NotFoundError(
            f"no manifest at {manifest_url} and no .tar shards beside it: run `frozen-scale prep` to make "
            "shards, or give a folder of shards or a brace pattern like prefix/{00000..00009}.tar"
        ) from None
    shards = [Shard(storage.resolve(root, _shard_name(manifest_url, s.get("name"), allow_absolute)),
                    int(s["num_samples"])) for s in manifest.get("shards", [])]
    if not shards:
        raise InputError(f"{manifest_url} lists no committed shards: re-run its `frozen-scale prep` job (it "
                         "retries what failed), or give other shards")
    return shards


def folder_shards(folder: str, storage_options: dict | None = None) -> list[Shard]:
    """The .tar files directly in `folder`, in name order. A shard's sample count comes from the
    `{name}_stats.json` beside it (img2dataset's `successes`, which data_prep's stats also carry);
    without one it is None, and readers count while reading."""
    fs, path = storage.filesystem(folder, storage_options, fresh=True)
    try:
        names = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)}
    except (FileNotFoundError, NotADirectoryError):
        return []
    tars = sorted(n for n in names if n.endswith(".tar") and not n.startswith("."))
    stats_names = [f"{n[:-4]}_stats.json" for n in tars if f"{n[:-4]}_stats.json" in names]
    stats = fs.cat([f"{path.rstrip('/')}/{n}" for n in stats_names]) if stats_names else {}
    counts = {}
    for full, blob in stats.items():
        name = full.rsplit("/", 1)[-1][: -len("_stats.json")] + ".tar"
        counts[name] = _successes(blob)
    return [Shard(storage.join(folder, n), counts.get(n)) for n in tars]


def _successes(blob: bytes) -> int | None:
    try:
        value = json.loads(blob).get("successes")
    except (ValueError, AttributeError):
        return None  # an unreadable stats file: count while reading
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def total_samples(shards: list[Shard]) -> int | None:
    if any(s.num_samples is None for s in shards):
        return None
    return sum(s.num_samples for s in shards)
