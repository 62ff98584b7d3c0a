"""The prefix-training loop: a frozen LM, a trainable vision prefix, a DeepSpeed engine.

`Trainer(cfg).fit()` runs on every rank (torchrun / deepspeed launcher / SLURM / Ray).
Exit codes of `frozen-scale train`: 0 finished; EXIT_REQUEUE (75) preempted after a committed
checkpoint (SIGTERM or SIGUSR1): launchers requeue and resume with train.resume=auto;
EXIT_NONFINITE (3) too many non-finite losses in a row.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from frozen_scale.config import FrozenConfig, save_config, to_dict
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


def fingerprint(cfg: FrozenConfig, lm_info: dict) -> dict:
    """What must match for a checkpoint to be resumable into this run (the LM by its cheap
    identity, see frozen_scale.model.lm_identity)."""
    return {
        "lm_identity": lm_info["identity"],
        "lm_hidden_size": lm_info["hidden_size"],
        "prefix_length": cfg.model.prefix_length,
        "vision": to_dict(cfg.model.vision),
        "train_lm": cfg.model.train_lm,
    }


def describe_mismatch(saved: dict, current: dict) -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{d}" for d in describe_mismatch(a, b)]
        elif a != b:
            diffs.append(f"{key}: checkpoint has {a!r}, this run has {b!r}")
    return diffs


class Trainer:
    def __init__(self, cfg: FrozenConfig):
        self.startup = lm_setup.StartupClock()
        self.cfg = cfg
        self.rank, self.world_size = dist_engine.init_distributed()
        self.is_main = self.rank == 0
        logging.basicConfig(level=logging.INFO if self.is_main else logging.WARNING,
                            format="%(asctime)s %(name)s: %(message)s")
        self.run_dir = Path(cfg.train.run_dir)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        with self.startup.phase("download"):  # local rank 0 of each node; the others wait
            self.model_dirs = lm_setup.fetch_models(cfg)
        local_lm = self.model_dirs[cfg.model.lm_path]
        shape = lm_shape(local_lm) if cfg.deepspeed.stage == 3 else None  # sizes ZeRO-3's window
        self.ds = dist_engine.ds_config(cfg, self.world_size, shape)
        if self.is_main:
            ckpt.write_json(str(self.run_dir / "deepspeed_config.json"), self.ds)
        with self.startup.phase("identity"):  # rank 0, from its local copy
            self.lm_info = lm_setup.identify_lm(cfg, self.model_dirs)
        self.lm_hash = lm_setup.BackgroundHash(local_lm) if self.is_main else None
        self.resume_url = ckpt.resolve_resume(cfg.train.resume, cfg.checkpoint_dir)
        self.resume_state = self._fetch_resume_state() if self.resume_url else None
        self._build_model()
        if self.lm_hash:
            with self.startup.phase("sha256 wait"):
                self.lm_info["sha256"] = self.lm_hash.result()
        self._stop_signal = None
        self.metrics = MetricsLogger(str(self.run_dir), self.is_main, cfg.train.tensorboard)
        self.window = MetricWindow.start(self.device)
        self.nonfinite_in_row = self.nonfinite_total = 0
        self.key_log = None
        self.startup.setup_finished()

    # -- set-up ------------------------------------------------------------------------------
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
        torch.manual_seed(cfg.train.seed)  # LM loading may draw random numbers; the prefix must not depend on it
        self.model = FrozenVLM(lm_setup.with_local_paths(cfg.model, self.model_dirs), lm, lm_embedding_norm=norm)
        if dtype != torch.float32:
            self.model.vision.to(dtype)
            self.model.prefix.to(dtype)
        if self.resume_state and self.resume_state["world_size"] != self.world_size:
            self._load_consolidated_weights()
        counts = self.model.parameter_counts()
        self.lm_local_numel = sum(dist_engine.local_numel(p) for p in lm.parameters())
        schedule = warmup_cosine(cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio)
        with self.startup.phase("engine build"):
            self.engine, self.optimizer = dist_engine.build_engine(self.model, cfg, self.ds, schedule)
        safe_load.install(self.engine)
        self.device = self.engine.device
        self.flops = FlopsCounter(self.model, counts, cfg)
        log.info(
            "parameters: trainable %s, frozen %s (LM %s, LM trainable %s); LM elements on this rank %s",
            f"{counts['trainable']:,}", f"{counts['frozen']:,}", f"{counts['lm']:,}",
            f"{counts['lm_trainable']:,}", f"{self.lm_local_numel:,}",
        )
        self.param_counts = counts

    def _data(self, state: StreamState | None, seed: int) -> ResumableBatches:
        cfg = self.cfg
        shards = list_shards(cfg.data.train_shards)
        dataset = CaptionStream(
            shards, self.tokenizer, k=cfg.model.prefix_length, image_size=cfg.model.vision.image_size,
            batch_size=cfg.train.micro_batch_size, seed=seed, rank=self.rank,
            world_size=self.world_size, shuffle_buffer=cfg.data.shuffle_buffer, resample=cfg.data.resample,
            prompt=cfg.data.prompt, max_text_len=cfg.data.max_text_len, mean=cfg.model.vision.mean,
            std=cfg.model.vision.std, image_keys=cfg.data.image_key.split(";"), caption_key=cfg.data.caption_key,
            state=state,
        )
        self.epoch_samples = total_samples(shards)
        return ResumableBatches(dataset, cfg.data.num_workers)

    # -- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        self._stop_signal = signum
        log.warning("received signal %s: finishing this step, then saving", signum)

    def _install_signals(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _stop_requested(self) -> bool:
        """The hot loop's one control-plane collective per optimizer step: did any rank get a
        stop signal? (Non-finite steps need none: DeepSpeed's overflow check agrees over ranks.)"""
        return dist_engine.all_reduce_sum(1.0 if self._stop_signal is not None else 0.0) > 0

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, step: int, samples: int, stream: StreamState) -> str:
        url = f"{self.cfg.checkpoint_dir.rstrip('/')}/{ckpt.step_name(step)}"
        local = self._stage(url)
        self.engine.save_checkpoint(str(local / "ds"), tag="state", client_state={"step": step},
                                    save_latest=False, exclude_frozen_parameters=not self.cfg.model.train_lm)
        self._save_weights(local)
        ckpt.write_json(str(local / f"rank_{self.rank:05d}.json"),
                        {"rank": self.rank, "stream": stream.to_dict(), "rng": ckpt.rng_state(),
                         "data_seed": self.data_seed})
        if self.is_main:
            ckpt.write_json(str(local / "trainer_state.json"), {
                "step": step, "samples": samples, "world_size": self.world_size,
                "lm": self.lm_info, "fingerprint": fingerprint(self.cfg, self.lm_info),
                "config": to_dict(self.cfg),
            })
        dist_engine.barrier()
        if ckpt.is_remote(url) and int(os.environ.get("LOCAL_RANK", "0")) == 0:
            ckpt.upload(local, url)
        dist_engine.barrier()
        if _fault("crash_before_commit", step):
            log.error("fault injection: crashing before the commit marker of step %s", step)
            os._exit(13)
        if self.is_main:
            ckpt.commit(url, {"step": step})
            ckpt.prune(self.cfg.checkpoint_dir, self.cfg.checkpoint.keep_last)
            log.info("checkpoint committed: %s", url)
        dist_engine.barrier()
        return url

    def _save_weights(self, local: Path) -> None:
        """Consolidated trained weights (ZeRO-3 partitions gathered) as safetensors, rank 0."""
        from safetensors.torch import save_file

        module = self.engine.module
        params = [p for n, p in module.named_parameters() if self.cfg.model.train_lm or not n.startswith("lm.")]
        with dist_engine.gathered(params):
            if self.is_main:
                state = module.trainable_state_dict(include_lm=self.cfg.model.train_lm)
                local.mkdir(parents=True, exist_ok=True)
                save_file(state, str(local / "weights.safetensors"))

    def _stage(self, url: str) -> Path:
        return ckpt.local_stage(str(self.run_dir), url, dist_engine.node_name())

    def _fetch_resume_state(self) -> dict:
        """Download a remote checkpoint (node-local rank 0), read and check its trainer state."""
        url = self.resume_url
        local = self._stage(url)
        if ckpt.is_remote(url):
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                ckpt.download(url, local)
            dist_engine.barrier()
        state = ckpt.read_json(str(local / "trainer_state.json"))
        saved, current = state["fingerprint"], fingerprint(self.cfg, self.lm_info)
        if "lm_sha256" in saved:  # a checkpoint from before the cheap identity: the full hash decides
            current.pop("lm_identity")
            current["lm_sha256"] = dist_engine.broadcast_object(self.lm_hash.result() if self.lm_hash else None)
        diffs = describe_mismatch(saved, current)
        if diffs:
            raise ValueError(f"checkpoint {url} was made under an incompatible config: " + "; ".join(diffs))
        return state

    def _load_consolidated_weights(self) -> None:
        """World-size change: trained weights from the consolidated safetensors (before the
        engine exists, so DeepSpeed's master copies start from them)."""
        from safetensors.torch import load_file

        state = load_file(str(self._stage(self.resume_url) / "weights.safetensors"))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.startswith("lm.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint weights do not fit: missing {missing}, unexpected {unexpected}")
        log.warning(
            "resuming a %s-rank checkpoint on %s ranks: weights, step and lr schedule are restored; "
            "optimizer moments restart from zero and the data stream restarts in a fresh order",
            self.resume_state["world_size"], self.world_size,
        )

    def load(self) -> tuple[int, int, StreamState | None, int]:
        """Restore the engine and this rank's state from self.resume_url.
        Returns (step, samples, stream state, data seed)."""
        url, state = self.resume_url, self.resume_state
        local = self._stage(url)
        step, samples = int(state["step"]), int(state["samples"])
        if state["world_size"] != self.world_size:  # documented elastic policy, see README
            for _ in range(step):
                self.engine.lr_scheduler.step()
            log.info("resumed (elastic) from %s at step %s", url, step)
            return step, samples, None, self.cfg.train.seed * 1_000_003 + step
        self.engine.load_checkpoint(str(local / "ds"), tag="state", load_module_strict=False,
                                    load_optimizer_states=True, load_lr_scheduler_states=True)
        mine = ckpt.read_json(str(local / f"rank_{self.rank:05d}.json"))
        ckpt.set_rng_state(mine["rng"])
        stream = StreamState.from_dict(mine["stream"])
        seed = int(mine.get("data_seed", self.cfg.train.seed))
        if stream.num_workers != max(1, self.cfg.data.num_workers):
            log.warning("data.num_workers changed (%s -> %s): the data stream restarts in a fresh order",
                        stream.num_workers, self.cfg.data.num_workers)
            stream, seed = None, self.cfg.train.seed * 1_000_003 + step
        log.info("resumed from %s at step %s", url, step)
        return step, samples, stream, seed

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> int:
        cfg = self.cfg
        step, samples, stream_state, self.data_seed = 0, 0, None, cfg.train.seed
        if self.resume_url:
            step, samples, stream_state, self.data_seed = self.load()
        batches = self._data(stream_state, self.data_seed)
        self._install_signals()
        self.engine.train()
        bar = tqdm(total=cfg.train.steps, initial=step, disable=not (self.is_main and cfg.train.progress),
                   desc="train", dynamic_ncols=True)
        self.window = MetricWindow.start(self.device)
        self.key_log = self._open_key_log(batches.state.batches) if self._log_keys() else None
        code = EXIT_OK
        try:
            while step < cfg.train.steps:
                if _fault("hold_after", step):
                    log.error("fault injection: holding after step %s until killed", step)
                    while True:
                        time.sleep(60)
                if not self.train_step(batches):
                    continue
                step += 1
                self.note_first_step()
                samples += cfg.train.micro_batch_size * cfg.train.grad_accum * self.world_size
                bar.update(1)
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    self._log(step, samples, batches, bar)
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.train.steps:
                    self.save(step, samples, batches.state)
                if self._stop_requested():
                    self.save(step, samples, batches.state)
                    log.warning("preempted: checkpoint committed at step %s; exit %s (requeue)", step, EXIT_REQUEUE)
                    code = EXIT_REQUEUE
                    break
            else:
                self.save(step, samples, batches.state)
        finally:
            bar.close()
            if self.key_log:
                self.key_log.close()
            self.metrics.close()
        return code

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
            if self.key_log:
                self.key_log.write("\n".join(batch["keys"]) + "\n")
                self.key_log.flush()  # on disk before the step's checkpoint: a kill loses nothing
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

    def _log_keys(self) -> bool:
        return bool(os.environ.get("FROZEN_SCALE_LOG_KEYS"))

    def _open_key_log(self, batches_done: int):
        """Per-rank log of sample keys in training order (FROZEN_SCALE_LOG_KEYS=1); on resume,
        cut back to what the checkpoint had consumed."""
        path = self.run_dir / f"sample_keys_rank{self.rank}.txt"
        keep = batches_done * self.cfg.train.micro_batch_size
        lines = path.read_text().splitlines()[:keep] if path.exists() and keep else []
        path.write_text("".join(line + "\n" for line in lines))
        return path.open("a")

    def _to_device(self, batch):
        out = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
        if self.cfg.train.precision == "bf16":
            out["pixel_values"] = out["pixel_values"].to(torch.bfloat16)
        return out

    def _log(self, step, samples, batches, bar):
        """One metrics line: every summed quantity reduced over the ranks in one collective."""
        w = self.window
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
            "samples": samples,
            "epoch": samples / self.epoch_samples if self.epoch_samples else None,
            "nonfinite_skipped": self.nonfinite_total,
            **dict(zip(skipped, summed[5:5 + len(skipped)])),
        }
        if with_opt_bytes:
            values["optimizer_state_bytes"] = summed[-1]
        self.metrics.log(step, values)
        bar.set_postfix(loss=f"{loss:.4f}", sps=f"{values['samples_per_s']:.0f}")
        self.window = MetricWindow.start(self.device)


def _fault(name: str, step: int) -> bool:
    """Test-only fault injection: FROZEN_SCALE_FAULT=<name>@<step>."""
    return os.environ.get("FROZEN_SCALE_FAULT") == f"{name}@{step}"


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


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
