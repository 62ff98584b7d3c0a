"""Finding shards: a data_prep manifest.json, or a brace pattern, on any fsspec URL."""

from __future__ import annotations

from dataclasses import dataclass

from webdataset.shardlists import expand_urls

from frozen_scale import storage
from frozen_scale.constants import SHARDS_MANIFEST


@dataclass(frozen=True)
class Shard:
    url: str
    num_samples: int | None  # None when unknown (brace pattern without a manifest)


def list_shards(spec: str) -> list[Shard]:
    """Shards named by `spec`: a folder/URL holding manifest.json, a manifest.json path, or a
    brace pattern such as s3://bucket/train/{00000..00099}.tar."""
    if not spec:
        raise ValueError("data.train_shards is empty: give a shard folder with manifest.json or a pattern")
    if "{" in spec:
        return [Shard(u, None) for u in expand_urls(spec)]
    manifest_url = spec if spec.endswith(".json") else storage.join(spec, SHARDS_MANIFEST)
    root = manifest_url.rsplit("/", 1)[0]
    try:
        manifest = storage.read_json(manifest_url)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no manifest at {manifest_url}: run `frozen-scale prep` to make shards, "
            "or give a brace pattern like prefix/{00000..00009}.tar"
        ) from None
    shards = [Shard(storage.resolve(root, s["name"]), int(s["num_samples"])) for s in manifest.get("shards", [])]
    if not shards:
        raise ValueError(f"{manifest_url} lists no committed shards")
    return shards


def total_samples(shards: list[Shard]) -> int | None:
    if any(s.num_samples is None for s in shards):
        return None
    return sum(s.num_samples for s in shards)
