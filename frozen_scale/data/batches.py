"""Batches of a CaptionStream through a DataLoader, with the stream's position kept (exact resume)
and its workers safe from the stop signals a scheduler sends to every process of a job."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import TYPE_CHECKING

from torch.utils.data import DataLoader

from frozen_scale.data.tar_stream import STALL_PREFIX, LoaderStalled

if TYPE_CHECKING:
    from frozen_scale.data.loader import CaptionStream


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
"""What a scheduler sends to every process of a job to stop it (Slurm signals each process of the
step; a terminal's Ctrl-C reaches the whole foreground group)."""


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """A loader worker's first act: ignore the stop signals. The trainer that owns it decides when
    to stop and commits a checkpoint first; a worker killed by the same signal would make the
    trainer's next batch raise instead. Workers still end with their trainer (the DataLoader shuts
    them down, and each notices its parent's exit)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def make_loader(dataset: CaptionStream, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset, batch_size=None, num_workers=num_workers, persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )


class ResumableBatches:
    """Iterates a CaptionStream's DataLoader and keeps the StreamState of what was consumed."""

    def __init__(self, dataset: CaptionStream, num_workers: int):
        self.dataset = dataset
        self.num_workers = max(1, num_workers)
        self.state = dataset.state
        self.state.num_workers = self.num_workers
        self.state.world_size = dataset.world_size
        self.corrupt: dict[int, int] = {}
        self.shard_errors: dict[int, int] = {}
        self._it = iter(make_loader(dataset, num_workers))

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch = next(self._it)
        except LoaderStalled as exn:  # from a worker it comes re-raised with the worker's traceback as text
            self.close()
            lines = [ln for ln in str(exn).splitlines() if STALL_PREFIX in ln]
            raise LoaderStalled(lines[-1][lines[-1].index(STALL_PREFIX):] if lines else str(exn)) from None
        worker = int(batch.pop("worker"))
        self.state.raw_consumed[worker] = int(batch.pop("raw_consumed"))
        # as JSON text: the DataLoader's default_convert walks lists element by element (13% of
        # the demo's loading time for a 256-sample buffer), a string it passes as is
        self.state.positions[worker] = json.loads(batch.pop("position"))
        self.state.batches += 1
        self.corrupt[worker] = int(batch.pop("corrupt"))
        self.shard_errors[worker] = int(batch.pop("shard_errors"))
        return batch

    def close(self, grace_s: float = 5.0) -> None:
        """End the loader's workers now. They ignore the stop signals (ignore_stop_signals), so a
        worker still reading when the loop gives up is killed after `grace_s` rather than left for
        the interpreter's exit to wait on forever."""
        workers = list(getattr(self._it, "_workers", []))
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            if getattr(self._it, "_worker_pids_set", False):  # a worker we kill is no failure to report
                from torch.utils.data._utils import signal_handling

                signal_handling._remove_worker_pids(id(self._it))
                self._it._worker_pids_set = False
            deadline = time.monotonic() + grace_s
            done = getattr(self._it, "_workers_done_event", None)
            if done is not None:  # a worker between samples leaves at once
                done.set()
            for w in workers:
                w.join(timeout=max(0.0, deadline - time.monotonic()))
                if w.is_alive():
                    os.kill(w.pid, signal.SIGKILL)
                    w.join(timeout=5)
            shutdown()

    @property
    def skipped(self) -> dict[str, int]:
        return {"corrupt_samples": sum(self.corrupt.values()), "shard_errors": sum(self.shard_errors.values())}
