"""One metrics path: rank 0 writes JSONL always, TensorBoard when asked (`train.tensorboard`),
Weights & Biases when a project is named (`train.wandb.project`; the optional `wandb` extra,
imported only then).

metrics.jsonl holds step records ({"step", "time", values...}) and, apart from them, event
records ({"event": name, "time", values...}, e.g. the `startup` breakdown); `read_metrics`
returns the step records unless asked for an event."""

from __future__ import annotations

import json
import time
from pathlib import Path

from frozen_scale.config import ConfigError, WandbConfig


class MetricsLogger:
    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool = True, wandb: WandbConfig | None = None,
                 run_config: dict | None = None):
        """`enabled`: this rank writes (rank 0); `run_config`: the resolved config, recorded in W&B."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard missing: JSONL still has everything
                self._tb = None
        if wandb is not None and wandb.project:
            self._wandb = _wandb_run(wandb, run_dir, run_config)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **values}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and self._tb is not None:
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def event(self, name: str, values: dict) -> None:
        """A record that is not a training step (JSONL only)."""
        if not self.enabled:
            return
        self._fh.write(json.dumps({"event": name, "time": time.time(), **values}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _wandb_run(cfg: WandbConfig, run_dir: str, run_config: dict | None):
    try:
        import wandb
    except ImportError:
        raise ConfigError("train.wandb.project is set but wandb is not installed: "
                          "pip install 'frozen-scale[wandb]' (or leave train.wandb.project empty)") from None
    return wandb.init(project=cfg.project, name=cfg.name or None, dir=run_dir, config=run_config)


def read_metrics(run_dir: str, event: str | None = None) -> list[dict]:
    """The step records of a run, or its `event` records when one is named."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("event") == event]
