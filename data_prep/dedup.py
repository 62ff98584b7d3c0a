"""Job-wide exact dedup of image content: a Ray actor mapping sha256 -> the key that owns it.

Shard tasks claim the hashes of their successful samples in batches; a hash already owned by
another key makes the sample a `duplicate`. A task retried after a crash re-claims with the same
keys and gets the same answers. On resume the registry is seeded from committed shards' status
tables, so content kept by a committed shard is never kept again.
"""

from __future__ import annotations

import ray

from data_prep.shard import LocalRegistry

HashRegistry = ray.remote(num_cpus=0, max_restarts=0)(LocalRegistry)
"""The registry as one Ray actor that every shard task of the job shares (LocalRegistry's claims)."""


def committed_hashes(output_url: str, shards: list[int], storage_options=None) -> list[tuple[str, str]]:
    """(sha256, key) of every sample kept by the given committed shards."""
    import pyarrow.parquet as pq

    from frozen_scale import storage

    items = []
    for s in shards:
        with storage.open_url(storage.join(output_url, f"{s:05d}.parquet"), "rb", storage_options) as f:
            t = pq.read_table(f, columns=["key", "status", "sha256"]).to_pylist()
        items += [(r["sha256"], r["key"]) for r in t if r["status"] == "success" and r["sha256"]]
    return items
