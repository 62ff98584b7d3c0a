"""The prefix-training loop: a frozen LM, a trainable vision prefix, a DeepSpeed engine.

`Trainer(cfg).fit()` runs on every rank (torchrun / deepspeed launcher / SLURM / Ray). What a
checkpoint holds and how a run resumes is the CheckpointManager's (train.checkpoint); the test
hooks (fault injection, sample-key logs) come from the `debug` config section (train.debug).
Exit codes of `frozen-scale train`: 0 finished; EXIT_REQUEUE (75) preempted after a committed
checkpoint (SIGTERM or SIGUSR1): launchers requeue and resume with train.resume=auto;
EXIT_NONFINITE (3) too many non-finite losses in a row.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from frozen_scale import storage
from frozen_scale.config import ConfigError, FrozenConfig, redacted_dict, save_config
from frozen_scale.constants import EXIT_NONFINITE, EXIT_OK, EXIT_REQUEUE
from frozen_scale.data.loader import CaptionStream, ResumableBatches, StreamState
from frozen_scale.data.shards import list_shards, total_samples
from frozen_scale.distributed import engine as dist_engine
from frozen_scale.distributed import safe_load
from frozen_scale.model import lm as lm_lib
from frozen_scale.model.frozen_vlm import FrozenVLM, embedding_norm
from frozen_scale.model.shape import lm_shape
from frozen_scale.train import checkpoint as ckpt
from frozen_scale.train import lm_setup
from frozen_scale.train.debug import DebugHooks
from frozen_scale.train.flops import FlopsCounter
from frozen_scale.train.metrics import MetricsLogger
from frozen_scale.train.schedule import warmup_cosine


log = logging.getLogger("frozen_scale.train")


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class MetricWindow:
    """What the steps since the last metrics line add up to on this rank. The loss sum stays a
    device tensor: reading it per step would wait for the device every step."""

    loss_sum: torch.Tensor
    n: int = 0
    tokens: int = 0
    samples: int = 0
    wait: float = 0.0
    t0: float = 0.0

    @classmethod
    def start(cls, device) -> "MetricWindow":
        return cls(torch.zeros((), dtype=torch.float64, device=device), t0=time.perf_counter())

    def add(self, loss_sum: torch.Tensor, n: int, tokens: int, samples: int) -> None:
        self.loss_sum += loss_sum.double()
        self.n += n
        self.tokens += tokens
        self.samples += samples


class Trainer:
    def __init__(self, cfg: FrozenConfig, hooks: DebugHooks | None = None):
        """Set up a run on this rank: process group, LM, model, engine, checkpoints. `hooks`:
        the test hooks (default: those the `debug` config section turns on)."""
        self.startup = lm_setup.StartupClock()
        self.cfg = cfg
        self._stop_signal = None
        self._install_signals()  # first: a stop during set-up is kept, and loader workers fork after it
        self.rank, self.world_size = dist_engine.init_distributed(cfg.train.collective_timeout_s)
        self.is_main = self.rank == 0
        self.shards = list_shards(cfg.data.train_shards, cfg.data.allow_absolute_shards)  # every rank; missing shards stop it before the LM loads
        logging.basicConfig(level=logging.INFO if self.is_main else logging.WARNING,
                            format="%(asctime)s %(name)s: %(message)s")
        self.run_dir = Path(cfg.train.run_dir)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.hooks = hooks or DebugHooks(cfg.debug, self.run_dir, self.rank, cfg.train.micro_batch_size)
        self.hooks.stopping = lambda: self._stop_signal is not None
        # the folder's lease and where this run starts, before anything is written into the run folder
        self.checkpoints = ckpt.CheckpointManager(cfg, self.run_dir, self.rank, self.world_size, lm_info=None,
                                                  before_commit=self.hooks.before_commit)
        if self.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        self.metrics = MetricsLogger(str(self.run_dir), self.is_main, cfg.train.tensorboard, cfg.train.wandb,
                                     run_config=redacted_dict(cfg))
        with self.startup.phase("download"):  # local rank 0 of each node; the others wait
            self.model_dirs = lm_setup.fetch_models(cfg)
        local_lm = self.model_dirs[cfg.model.lm_path]
        shape = lm_shape(local_lm) if cfg.deepspeed.stage == 3 else None  # sizes ZeRO-3's window
        self.ds = dist_engine.ds_config(cfg, self.world_size, shape)
        if self.is_main:
            storage.write_json(str(self.run_dir / "deepspeed_config.json"), self.ds)
        with self.startup.phase("identity"):  # rank 0, from its local copy
            self.lm_info = lm_setup.identify_lm(cfg, self.model_dirs)
        self.lm_hash = lm_setup.BackgroundHash(local_lm) if self.is_main else None
        self.checkpoints.lm_info = self.lm_info
        self.checkpoints.fetch_resume(self._lm_sha256)
        self._build_model()
        if self.lm_hash:
            with self.startup.phase("sha256 wait"):
                self.lm_info["sha256"] = self.lm_hash.result()  # recorded in every checkpoint
        self.window = MetricWindow.start(self.device)
        self.nonfinite_in_row = self.nonfinite_total = 0
        self.startup.setup_finished()

    # -- set-up ------------------------------------------------------------------------------
    def _lm_sha256(self) -> str | None:
        """The LM's full sha256 on every rank (rank 0 hashes it)."""
        return dist_engine.broadcast_object(self.lm_hash.result() if self.lm_hash else None)

    def _check_positions(self, lm):
        """data.position_shift must leave the longest training sequence inside the LM's positions
        (past them an absolute-position LM indexes out of its table: a device assert on a GPU)."""
        data, limit = self.cfg.data, getattr(lm.config, "max_position_embeddings", None)
        if not data.position_shift or not limit:
            return
        # bos, then per pair: k slots + the prompt and separators (8 at most) + the caption
        longest = 1 + data.images_per_sequence * (self.cfg.model.prefix_length + 8 + data.max_text_len) \
            + data.text_before_image * data.max_text_len
        if data.position_shift + longest > limit:
            raise ConfigError(f"data.position_shift={data.position_shift} with sequences up to ~{longest} tokens "
                              f"passes the LM's {limit} positions; use at most {max(0, limit - longest)}")

    def _build_model(self):
        cfg = self.cfg
        self.tokenizer = lm_lib.load_tokenizer(self.model_dirs[cfg.model.tokenizer_path or cfg.model.lm_path])
        dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        with self.startup.phase("partitioned load"), dist_engine.lm_loading_context(self.ds):
            lm = lm_lib.load_lm(self.model_dirs[cfg.model.lm_path], dtype=dtype,
                                attn_implementation=cfg.model.attn_implementation)
        emb = lm.get_input_embeddings().weight
        with dist_engine.gathered([emb]):
            norm = embedding_norm(lm)
        self._check_positions(lm)
        torch.manual_seed(cfg.train.seed)  # LM loading may draw random numbers; the prefix must not depend on it
        self.model = FrozenVLM(lm_setup.with_local_paths(cfg.model, self.model_dirs), lm, lm_embedding_norm=norm)
        if dtype != torch.float32:
            self.model.vision.to(dtype)
            self.model.prefix.to(dtype)
        self.checkpoints.restore_weights(self.model)  # a world-size change only: before the engine
        counts = self.model.parameter_counts()
        self.lm_local_numel = sum(dist_engine.local_numel(p) for p in lm.parameters())
        schedule = warmup_cosine(cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio)
        with self.startup.phase("engine build"):
            self.engine, self.optimizer = dist_engine.build_engine(self.model, cfg, self.ds, schedule)
        safe_load.install(self.engine)
        self.checkpoints.attach(self.engine, self.optimizer)
        self.device = self.engine.device
        self.flops = FlopsCounter(self.model, counts, cfg)
        log.info(
            "parameters: trainable %s, frozen %s (LM %s, LM trainable %s); LM elements on this rank %s",
            f"{counts['trainable']:,}", f"{counts['frozen']:,}", f"{counts['lm']:,}",
            f"{counts['lm_trainable']:,}", f"{self.lm_local_numel:,}",
        )
        self.param_counts = counts

    def _data(self, state: StreamState | None, seed: int) -> ResumableBatches:
        dataset = CaptionStream.from_config(self.cfg, self.shards, self.tokenizer, seed=seed, rank=self.rank,
                                            world_size=self.world_size, state=state)
        self.epoch_samples = total_samples(self.shards)
        return ResumableBatches(dataset, self.cfg.data.num_workers)

    # -- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        if self._stop_signal is None:
            self._stop_signal, self._stop_time = signum, time.monotonic()
            log.warning("received signal %s: finishing this step, then saving", signum)

    def _install_signals(self):
        """TERM and USR1 mean the same: commit a checkpoint at the end of this step, exit 75.
        Slurm sends TERM (scancel, preemption, a time limit without --signal) or USR1 (--signal)
        to every process of the step; torchrun, the node supervisor and the loader workers leave
        the decision to the trainers (launchers.node, data.loader.ignore_stop_signals)."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _stop_requested(self) -> bool:
        """The hot loop's one control-plane collective per optimizer step: did any rank get a
        stop signal? (Non-finite steps need none: DeepSpeed's overflow check agrees over ranks.)"""
        return dist_engine.all_reduce_sum(1.0 if self._stop_signal is not None else 0.0) > 0

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> int:
        """Train from the resumed (or a fresh) state to `train.steps`: 0 finished, 75 preempted
        (a checkpoint committed first)."""
        cfg, state = self.cfg, self.checkpoints.load()
        batches = self._data(state.stream, state.data_seed)
        state.stream = batches.state
        self.engine.train()
        bar = tqdm(total=cfg.train.steps, initial=state.step, disable=not (self.is_main and cfg.train.progress),
                   desc="train", dynamic_ncols=True)
        self.window = MetricWindow.start(self.device)
        self.hooks.start(state.stream.batches)
        try:
            while state.step < cfg.train.steps:
                self.hooks.before_step(state.step)
                if not self.train_step(batches):
                    continue
                self._advance(state, bar)
                if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
                    self._log(state, batches, bar)
                if cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0 and state.step < cfg.train.steps:
                    self.checkpoints.save(state)
                if state.step < cfg.train.steps and self._stop_requested():
                    return self._preempted(state)
            if self.checkpoints.saved_step != state.step:  # a finished run resumed saves nothing
                self.checkpoints.save(state)
            return EXIT_OK
        finally:
            self.checkpoints.close()
            bar.close()
            self.hooks.close()
            self.metrics.close()

    def _advance(self, state: ckpt.TrainState, bar) -> None:
        """Count an applied optimizer step."""
        state.step += 1
        state.samples += self.cfg.train.micro_batch_size * self.cfg.train.grad_accum * self.world_size
        bar.update(1)
        self.note_first_step()

    def _preempted(self, state: ckpt.TrainState) -> int:
        """A stop signal reached some rank: commit a checkpoint of this step (unless one was just
        committed), then exit with the requeue code."""
        t0 = time.monotonic()
        if self.checkpoints.saved_step != state.step:
            self.checkpoints.save(state)
        save_s = time.monotonic() - t0
        # committed: from here the rank only leaves. A launcher that sees another rank exit first
        # sends TERM to the rest (torchrun does); ignored, it cannot turn this exit 75 into a kill
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        since_signal = time.monotonic() - getattr(self, "_stop_time", t0)
        grace = self.cfg.launcher.signal_seconds
        log.warning("preempted: checkpoint committed at step %s (save %.1f s, %.1f s after the signal); exit %s "
                    "(requeue)", state.step, save_s, since_signal, EXIT_REQUEUE)
        if grace and since_signal > 0.8 * grace:
            log.warning("the stop took %.1f s of the %s s grace (launcher.signal_seconds): raise it, or the "
                        "scheduler may kill the job before its checkpoint commits", since_signal, grace)
        return EXIT_REQUEUE

    def train_step(self, batches) -> bool:
        """One optimizer step over `train.grad_accum` micro-batches; False when it was skipped.

        A non-finite loss anywhere in the window makes the rest of the window's losses NaN, so
        the accumulated gradients are non-finite on every rank (they are reduced over the
        ranks); DeepSpeed's overflow check then discards the whole window: no weight or Adam
        update, no lr-scheduler step, gradients cleared, its micro-step count still in line with
        the window (see `dist_engine.SkipNonFiniteAdamW` for ZeRO stage 0). Nothing here waits
        for the device: the loss stays on it, and whether the step was applied is DeepSpeed's
        own answer after its step.
        """
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        losses = torch.zeros((), dtype=torch.float32, device=self.device)
        tokens = n_samples = 0
        for _ in range(self.cfg.train.grad_accum):
            t = time.perf_counter()
            batch = next(batches)
            self.window.wait += time.perf_counter() - t
            self.hooks.batch(batch)
            loss = self.engine(**self._to_device(batch))
            bad = bad | ~torch.isfinite(loss.detach())
            self.engine.backward(loss * torch.where(bad, math.nan, 1.0).to(loss.dtype))
            self.engine.step()
            losses = losses + loss.detach().float()
            tokens += int(batch["attention_mask"].sum())
            n_samples += len(batch["keys"])
        if not self.engine.was_step_applied():
            self._count_nonfinite()
            return False
        self.nonfinite_in_row = 0
        self.window.add(losses, self.cfg.train.grad_accum, tokens, n_samples)
        return True

    def _count_nonfinite(self) -> None:
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        log.warning("non-finite loss or gradients: step skipped, accumulation window discarded (%s in a row)",
                    self.nonfinite_in_row)
        if self.nonfinite_in_row >= self.cfg.train.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_row} non-finite steps in a row: stopping. "
                "Lower train.lr, use fp32, or check the data."
            )

    def note_first_step(self, seconds: float | None = None) -> None:
        """After the first optimizer step (default duration: since set-up finished): rank 0 logs the
        start-up breakdown once and writes it as the `startup` record of metrics.jsonl."""
        if self.startup.done:
            return
        self.startup.first_step(seconds)
        if self.is_main:
            log.info("%s", self.startup.line())
            self.metrics.event("startup", self.startup.record())

    def _to_device(self, batch):
        out = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
        if self.cfg.train.precision == "bf16":
            out["pixel_values"] = out["pixel_values"].to(torch.bfloat16)
        return out

    def _log(self, state: ckpt.TrainState, batches, bar):
        """One metrics line: every summed quantity reduced over the ranks in one collective."""
        w, step = self.window, state.step
        elapsed = time.perf_counter() - w.t0
        with_opt_bytes = step == self.cfg.train.log_every or step == self.cfg.train.steps
        skipped = dict(batches.skipped)
        local = [float(w.loss_sum), w.n, w.tokens, w.samples, w.wait, *skipped.values()]
        if with_opt_bytes:
            local.append(dist_engine.optimizer_state_bytes(self.optimizer))
        summed = dist_engine.all_reduce_sum(local)
        loss_sum, n, tokens, n_samples, wait = summed[:5]
        grad_norm = self.engine.get_global_grad_norm()
        loss = loss_sum / max(1.0, n)
        values = {
            "loss": loss,
            "lr": self.engine.get_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "samples_per_s": n_samples / elapsed,
            "tokens_per_s": tokens / elapsed,
            "data_wait_fraction": wait / self.world_size / elapsed,
            "mfu": self.flops.mfu(tokens, n_samples, elapsed, self.world_size),
            "samples": state.samples,
            "epoch": state.samples / self.epoch_samples if self.epoch_samples else None,
            "nonfinite_skipped": self.nonfinite_total,
            **dict(zip(skipped, summed[5:5 + len(skipped)])),
        }
        if with_opt_bytes:
            values["optimizer_state_bytes"] = summed[-1]
        self.metrics.log(step, values)
        bar.set_postfix(loss=f"{loss:.4f}", sps=f"{values['samples_per_s']:.0f}")
        self.window = MetricWindow.start(self.device)


def train(cfg: FrozenConfig) -> int:
    """`frozen-scale train` on one rank: 0 finished, 75 preempted, 3 non-finite; the process
    group is destroyed on every way out."""
    try:
        return Trainer(cfg).fit()
    except NonFiniteLossError as err:
        log.error("%s", err)
        return EXIT_NONFINITE
    finally:
        dist_engine.shutdown()

