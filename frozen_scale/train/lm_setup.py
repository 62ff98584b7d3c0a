"""A training job's frozen LM at start-up: fetched once per node, identified once per job, timed.

- `fetch_models(cfg)`: local rank 0 of each node makes every model the run names (LM, tokenizer,
  a pretrained vision backbone) local: node cache for URLs, Hub cache for Hub ids. The node's
  other ranks wait, then use its folders.
- `identify_lm(cfg, folders)`: rank 0 reads the LM's cheap identity from its local copy and
  hands it to every rank.
- `BackgroundHash`: rank 0's full sha256 of the local copy (cached), computed on a thread while
  the partitioned load runs; recorded for provenance.
- `StartupClock`: seconds per start-up phase, for the one-line breakdown and the `startup` record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time

from frozen_scale.config import FrozenConfig, ModelConfig
from frozen_scale.distributed import engine as dist_engine
from frozen_scale.model import lm as lm_lib

log = logging.getLogger("frozen_scale.train")

PHASES = ("download", "identity", "partitioned load", "engine build", "first step")


def model_paths(cfg: FrozenConfig) -> list[str]:
    """Every model folder/URL/Hub id the run loads, each once."""
    paths = [cfg.model.lm_path, cfg.model.tokenizer_path or cfg.model.lm_path]
    if cfg.model.vision.kind == "hf_frozen":
        paths.append(cfg.model.vision.pretrained_path)
    return list(dict.fromkeys(paths))


def fetch_models(cfg: FrozenConfig) -> dict[str, str]:
    """{path as configured: local folder} on every rank; one fetch per node."""
    paths = model_paths(cfg)
    return dist_engine.node_leader_first(lambda: {p: lm_lib.local_copy(p) for p in paths})


def identify_lm(cfg: FrozenConfig, folders: dict[str, str]) -> dict:
    """The LM summary (path, cheap identity, shape), read by rank 0 from its local copy."""
    path = cfg.model.lm_path
    return dist_engine.on_rank_zero(lambda: lm_lib.lm_summary(path, folders[path]))


def with_local_paths(model: ModelConfig, folders: dict[str, str]) -> ModelConfig:
    """A copy of the model config whose vision backbone path is the fetched local folder (so
    building the model touches neither the store nor the Hub); the run's config is unchanged."""
    if model.vision.kind != "hf_frozen":
        return model
    vision = dataclasses.replace(model.vision, pretrained_path=folders[model.vision.pretrained_path])
    return dataclasses.replace(model, vision=vision)


class BackgroundHash:
    """The full sha256 of a local model folder, computed on a daemon thread (an error start-up
    hits later does not wait for it)."""

    def __init__(self, folder: str):
        self._folder = folder
        self._value: str | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="lm-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = lm_lib.content_hash(self._folder)
        except OSError as err:
            self._error = err

    def result(self) -> str | None:
        self._thread.join()
        if self._error is not None:
            log.warning("could not hash the LM at %s: %s (sha256 not recorded)", self._folder, self._error)
        return self._value


class StartupClock:
    """Seconds spent in each start-up phase, from the trainer's construction to its first step."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.setup_end: float | None = None
        self.done = False

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def setup_finished(self) -> None:
        self.setup_end = time.perf_counter()

    def first_step(self, seconds: float | None = None) -> None:
        """The first optimizer step took `seconds` (default: since set-up finished)."""
        end = time.perf_counter()
        self.seconds["first step"] = seconds if seconds is not None else end - (self.setup_end or self.t0)
        self.seconds["total"] = end - self.t0
        self.done = True

    def line(self) -> str:
        named = [*PHASES, *sorted(k for k in self.seconds if k not in PHASES and k != "total"), "total"]
        return "start-up (s): " + ", ".join(f"{k} {self.seconds[k]:.2f}" for k in named if k in self.seconds)

    def record(self) -> dict:
        return {k.replace(" ", "_") + "_s": round(v, 4) for k, v in self.seconds.items()}
