"""Job-wide exact dedup of image content, decided by input order: the earliest row keeps an image.

Each shard task, once its downloads are done, settles the sha256 of its candidate samples with
the registry: it registers (sha256, row) pairs, waits until every earlier shard has registered
its own, and gets back, per hash, the row that keeps it (the smallest row holding it). Shards
only ever wait for earlier shards, which are submitted first, so the smallest shard in flight
never waits. The outcome depends on the input alone, not on which task finished first.

On resume the registry is seeded with the samples kept by committed shards: those keep their
images whatever row asks again. A shard that failed for good is released (`give_up`) so later
shards do not wait for it; what it registered before failing still counts, so its rows keep
their images when a re-run redoes it.

`LocalRegistry` is the one-process version (same answers), for tests and single-shard use.
"""

from __future__ import annotations

import asyncio

import ray


class _Owners:
    def __init__(self):
        self.kept: dict[str, int] = {}  # from committed shards: final
        self.first: dict[str, int] = {}  # the smallest row registered with each hash

    def seed(self, items: list[tuple[str, int]]) -> None:
        for h, row in items:
            self.kept.setdefault(h, row)

    def register(self, items: list[tuple[str, int]]) -> None:
        first = self.first
        for h, row in items:
            if h not in first or row < first[h]:
                first[h] = row

    def owners(self, items: list[tuple[str, int]]) -> list[int]:
        return [self.kept.get(h, self.first.get(h, row)) for h, row in items]


@ray.remote(num_cpus=0, max_restarts=0)
class HashRegistry:
    def __init__(self):
        self.table = _Owners()
        self.settled: set[int] = set()  # shards that registered (or are committed, or gave up)
        self.low = 0  # every shard below this has settled
        self.changed = asyncio.Condition()

    async def seed(self, items: list[tuple[str, int]], shards: list[int]) -> int:
        self.table.seed(items)
        await self._mark(shards)
        return len(self.table.kept)

    async def settle(self, shard: int, items: list[tuple[str, int]]) -> list[int]:
        self.table.register(items)
        await self._mark([shard])
        async with self.changed:
            await self.changed.wait_for(lambda: self.low >= shard)
        return self.table.owners(items)

    async def give_up(self, shard: int) -> None:
        await self._mark([shard])

    async def _mark(self, shards: list[int]) -> None:
        async with self.changed:
            self.settled.update(s for s in shards if s >= self.low)
            while self.low in self.settled:
                self.settled.discard(self.low)
                self.low += 1
            self.changed.notify_all()


class LocalRegistry:
    """In-process stand-in for the registry: the whole job is the one shard asking."""

    def __init__(self):
        self.table = _Owners()

    def seed(self, items: list[tuple[str, int]], shards: list[int] = ()) -> int:
        self.table.seed(items)
        return len(self.table.kept)

    def settle(self, shard: int, items: list[tuple[str, int]]) -> list[int]:
        self.table.register(items)
        return self.table.owners(items)


def committed_hashes(output_url: str, shards: list[int], storage_options=None) -> list[tuple[str, int]]:
    """(sha256, row) of every sample kept by the given committed shards."""
    import pyarrow.parquet as pq

    from frozen_scale import storage

    items = []
    for s in shards:
        with storage.open_url(storage.join(output_url, f"{s:05d}.parquet"), "rb", storage_options) as f:
            t = pq.read_table(f, columns=["row", "status", "sha256"]).to_pylist()
        items += [(r["sha256"], r["row"]) for r in t if r["status"] == "success" and r["sha256"]]
    return items
