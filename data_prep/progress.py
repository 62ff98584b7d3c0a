"""Job progress in rows, moving while shards are being worked on, not only when they finish.

Shard tasks report (rows done, successes) to a `ProgressBoard` actor about once a second; the
driver reads the board as often and shows finished shards' rows plus running ones' on one bar.
A retried task starts its shard again from zero: the board keeps its latest report only, so the
bar steps back rather than counting rows twice. The total is the input's row count when it is
cheap to know up front (parquet metadata, the synthetic world), else it is set once the driver
has read the input to its end.
"""

from __future__ import annotations

import time

import ray
from tqdm import tqdm

REFRESH_S = 1.0


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressBoard:
    def __init__(self):
        self.running: dict[int, tuple[int, int]] = {}

    def report(self, shard: int, rows: int, ok: int) -> None:
        self.running[shard] = (rows, ok)

    def snapshot(self) -> dict[int, tuple[int, int]]:
        return dict(self.running)


class JobProgress:
    def __init__(self, total: int | None, enabled: bool, rows_already_done: int = 0):
        self.bar = tqdm(total=total, unit="row", disable=not enabled, dynamic_ncols=True, smoothing=0,
                        initial=rows_already_done)
        self.enabled = enabled
        self.start = time.monotonic()
        self.base = rows_already_done
        self.finished: set[int] = set()
        self.rows = self.ok = 0  # of shards finished in this run
        self.running: dict[int, tuple[int, int]] = {}

    def shard_done(self, shard: int, stats: dict) -> None:
        self.finished.add(shard)
        self.running.pop(shard, None)
        self.rows += stats["count"]
        self.ok += stats["successes"]
        self._show()

    def shard_failed(self, shard: int) -> None:
        self.running.pop(shard, None)
        self._show()

    def update_running(self, snapshot: dict[int, tuple[int, int]]) -> None:
        self.running = {s: v for s, v in snapshot.items() if s not in self.finished}
        self._show()

    def set_total(self, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
            self._show()

    def _show(self) -> None:
        if not self.enabled:
            return
        rows = self.rows + sum(r for r, _ in self.running.values())
        ok = self.ok + sum(o for _, o in self.running.values())
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.bar.n = self.base + rows
        self.bar.set_postfix({"img/s": f"{ok / elapsed:.1f}", "success": f"{ok / max(rows, 1):.1%}"}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
