"""Test hooks of the training loop, set by the `debug` config section (all off by default):
fault injection at a known step and a per-rank log of the sample keys trained on.

The resume tests use them: `debug.fault=hold_after@N` puts a kill at a known place,
`debug.fault=pause_after@N` a stop signal,
`debug.fault=crash_before_commit@N` dies between a checkpoint's files and its commit marker,
`debug.log_sample_keys=true` lets a test compare the samples an interrupted run saw with an
uninterrupted one's. A test may also pass its own `DebugHooks` (or a subclass) to the Trainer.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from frozen_scale.config import DebugConfig

log = logging.getLogger("frozen_scale.train")

CRASH_EXIT = 13
"""Exit code of `crash_before_commit`."""


class DebugHooks:
    """What the loop calls at its test points; each call does nothing unless configured."""

    PAUSE_S = 60.0

    def __init__(self, cfg: DebugConfig, run_dir: Path, rank: int, micro_batch_size: int):
        self.cfg, self.run_dir, self.rank, self.micro_batch_size = cfg, Path(run_dir), rank, micro_batch_size
        self._keys = None
        self.stopping = lambda: False
        """Whether this rank has received a stop signal (the trainer sets it)."""

    def start(self, batches_done: int) -> None:
        """Before the first step: open the sample-key log, cut back to the `batches_done` batches
        this rank's checkpoint had consumed (a run resumed after a kill re-trains the rest)."""
        if not self.cfg.log_sample_keys:
            return
        path = self.run_dir / f"sample_keys_rank{self.rank}.txt"
        keep = batches_done * self.micro_batch_size
        lines = path.read_text().splitlines()[:keep] if path.exists() and keep else []
        path.write_text("".join(line + "\n" for line in lines))
        self._keys = path.open("a")

    def batch(self, batch: dict) -> None:
        """A micro-batch about to be trained on."""
        if self._keys is not None:
            self._keys.write("\n".join(batch["keys"]) + "\n")
            self._keys.flush()  # on disk before the step's checkpoint: a kill loses nothing

    def _fault(self, name: str, step: int) -> bool:
        return self.cfg.fault_at(name, step) and self.cfg.fault_rank in (-1, self.rank)

    def before_step(self, step: int) -> None:
        """Before optimizer step `step + 1`."""
        if self._fault("hold_after", step):
            log.error("fault injection: holding after step %s until killed", step)
            while True:
                time.sleep(60)
        if self._fault("pause_after", step):
            marker = self.run_dir / f"paused_rank{self.rank}"
            marker.write_text(str(step))
            log.error("fault injection: pausing after step %s until a stop signal", step)
            deadline = time.monotonic() + self.PAUSE_S
            while not self.stopping() and time.monotonic() < deadline:
                time.sleep(0.05)
            marker.unlink()

    def before_commit(self, step: int) -> None:
        """After every file of step `step`'s checkpoint is written, before its commit marker."""
        if self._fault("crash_before_commit", step):
            log.error("fault injection: crashing before the commit marker of step %s", step)
            os._exit(CRASH_EXIT)

    def close(self) -> None:
        if self._keys is not None:
            self._keys.close()
            self._keys = None
