"""Run under torchrun by tests/e2e/test_collectives.py: train a few steps with the real Trainer and
count the collectives frozen_scale's own code issues (through `frozen_scale.distributed.engine`,
the only module that talks to torch.distributed) between consecutive optimizer steps.
DeepSpeed's own gradient and parameter traffic goes through `deepspeed.comm` and is not counted:
what is counted is the trainer's control plane."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch.distributed  # noqa: E402

import frozen_scale.world  # noqa: E402,F401  (registers the world's config sections, which the tests' configs hold)
from frozen_scale.config import load_config  # noqa: E402
from frozen_scale.distributed import engine as dist_engine  # noqa: E402

COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list",
               "barrier", "reduce", "gather", "scatter", "all_to_all")


class CountingDist:
    """torch.distributed as engine.py sees it, counting collective calls."""

    def __init__(self):
        self.calls: list[str] = []

    def __getattr__(self, name):
        real = getattr(torch.distributed, name)
        if name not in COLLECTIVES:
            return real

        def counted(*args, **kwargs):
            self.calls.append(name)
            return real(*args, **kwargs)

        return counted


def main():
    config_path, out_path = sys.argv[1], sys.argv[2]
    counting = CountingDist()
    dist_engine.dist = counting
    from frozen_scale.train.trainer import Trainer

    trainer = Trainer(load_config(config_path, sys.argv[3:]))
    marks: list[int] = []
    step_once = trainer.train_step

    def marked_step(batches):
        marks.append(len(counting.calls))
        return step_once(batches)

    trainer.train_step = marked_step
    code = trainer.fit()
    marks.append(len(counting.calls))
    per_step = [b - a for a, b in zip(marks, marks[1:])]
    with open(f"{out_path}.rank{trainer.rank}.json", "w") as fh:
        json.dump({"code": code, "per_step": per_step, "calls": counting.calls}, fh)
    dist_engine.shutdown()


if __name__ == "__main__":
    main()
