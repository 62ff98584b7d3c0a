"""Run under torchrun by tests/e2e/test_resume.py: train with the real Trainer from a checkpoint and
record, right after the checkpoint is loaded, the optimizer state as this run holds it, whole
(fp32 master weights and Adam moments of every trainable parameter, gathered over the ranks),
with Adam's step count, into OUT.safetensors (rank 0). Then train on as `frozen-scale train`
would.

    torchrun ... tests/support/resume_worker.py CONFIG OUT [section.key=value ...]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import frozen_scale.world  # noqa: E402,F401  (registers the world's config sections, which the tests' configs hold)
from frozen_scale.config import load_config  # noqa: E402
from frozen_scale.distributed import engine as dist_engine  # noqa: E402


def main():
    config_path, out_path = sys.argv[1], sys.argv[2]
    from safetensors.torch import save_file

    from frozen_scale.train.trainer import Trainer

    trainer = Trainer(load_config(config_path, sys.argv[3:]))
    load = trainer.checkpoints.load

    def load_and_record():
        state = load()
        trainable = [(n, p) for n, p in trainer.engine.module.named_parameters() if p.requires_grad]
        full = dist_engine.full_optimizer_state(trainer.optimizer, trainable)
        if trainer.rank == 0:
            save_file(full, f"{out_path}.safetensors",
                      metadata={"adam_step": str(dist_engine.adam_step_count(trainer.optimizer)),
                                "world_size": str(trainer.world_size)})
        return state

    trainer.checkpoints.load = load_and_record
    try:
        code = trainer.fit()
    finally:
        dist_engine.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
