"""Checkpoints: what one holds, how it is committed, and how a run resumes from one.

Layout of one checkpoint:  {checkpoint_dir}/step_00000100/
    ds/...                    DeepSpeed engine state (trainable weights, optimizer, scheduler), per
                              rank: what a resume on the same number of ranks restores, exactly;
                              frozen LM parameters excluded: the LM is referenced, not copied
    weights.safetensors       consolidated trained weights (ZeRO-3 partitions gathered), rank 0
    optimizer.safetensors     consolidated optimizer state of the trainable parameters: for each,
                              its fp32 master weights and Adam's two moments, whole; Adam's step
                              count in the metadata. What a resume on another number of ranks
                              restores. Not written when the LM trains too (model.train_lm)
    rank_00000.json           per-rank state: data stream position, RNG states, data seed
    trainer_state.json        step, samples seen, world size, LM reference (path, identity,
                              sha256), fingerprint, config
    COMMITTED                 commit marker, written last by rank 0 after every rank is done and
                              the payload is fsynced: every file's size and sha256, the lineage,
                              the folder's commit order (frozen_scale.train.integrity, .lineage)
    DAMAGED                   set beside COMMITTED when the files no longer match: passed by

Remote URLs (s3://, ...) are staged in a local folder per node and uploaded by each node's local
rank 0, then committed; resume downloads the checkpoint first.

`CheckpointManager` owns all of it: the parts a checkpoint holds, saving with its barriers,
upload and commit, pruning, resume resolution, the compatibility check and the world-size
policy. The training loop only calls `load()` once and `save(state)` when a checkpoint is due.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from frozen_scale import storage
from frozen_scale.config import FrozenConfig, InputError, NotFoundError, redacted_dict, to_dict
from frozen_scale.data.loader import StreamState
from frozen_scale.distributed import engine as dist_engine
from frozen_scale.train import integrity, lineage
from frozen_scale.train.lease import Lease

log = logging.getLogger("frozen_scale.train")

COMMIT_MARKER = lineage.COMMIT_MARKER
PREFIX = lineage.PREFIX
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_FORMAT = "frozen_scale.optimizer/1"
TRAINER_STATE = "trainer_state.json"
ENGINE_DIR, ENGINE_TAG = "ds", "state"
MARKER_FORMAT = "frozen_scale.checkpoint/2"
step_name = lineage.step_name


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.json"


def committed_steps(checkpoint_dir: str) -> list[int]:
    """Steps of the committed (and not damaged) checkpoints, in ascending order."""
    return sorted(c.step for c in lineage.list_committed(checkpoint_dir))


def resolve_resume(resume: str, checkpoint_dir: str) -> str | None:
    """The checkpoint a reader of `resume` ('' / 'auto' / a path) uses, verified; damaged newest
    ones are set aside and the previous verified one is used (frozen_scale.train.lineage)."""
    if not resume:
        return None
    if resume == "auto":
        return lineage.newest(checkpoint_dir)
    return lineage.require_verified(resume)


def require_committed(url: str) -> str:
    """`url` itself when it is a committed checkpoint whose files verify; a UserError otherwise."""
    return lineage.require_verified(url)


def commit(url: str, payload: dict | None = None) -> None:
    """Write the commit marker: the checkpoint becomes visible."""
    storage.atomic_write_bytes(storage.join(url, COMMIT_MARKER), json.dumps(payload or {}).encode())


def prune(checkpoint_dir: str, keep_last: int, protect: tuple[str, ...] = ()) -> list[int]:
    """frozen_scale.train.lineage.prune: the newest `keep_last` by commit order are kept."""
    return lineage.prune(checkpoint_dir, keep_last, protect)


def local_stage(run_dir: str, url: str, node: str = "node") -> Path:
    """Where a checkpoint lives locally while written or read (the URL itself when local). One
    folder per node: the run folder is often on a filesystem every node shares, and each node's
    local rank 0 uploads what its own ranks wrote and downloads for its own ranks."""
    if not storage.is_remote(url):
        return Path(storage.local_path(url))
    return Path(run_dir) / ".ckpt_stage" / node / storage.base_name(url)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


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


@dataclass
class TrainState:
    """What the loop carries from step to step; the CheckpointManager saves and restores it."""

    step: int = 0
    """Optimizer steps taken (skipped non-finite steps excluded)."""
    samples: int = 0
    """Samples trained on, over all ranks."""
    data_seed: int = 0
    """The seed this rank's data stream was started with."""
    stream: StreamState = field(default_factory=StreamState)
    """This rank's data stream position (the loader updates it in place)."""


class CheckpointManager:
    """Owns every stateful part of a run and the commit protocol.

    The parts: the DeepSpeed engine (trainable weights, optimizer, lr scheduler), the
    consolidated weights and optimizer state, each rank's data position and RNG states, the
    `TrainState` and the run's fingerprint. Order of use:

        manager = CheckpointManager(cfg, run_dir, rank, world_size, lm_info, before_commit)
        manager.fetch_resume(lm_sha256)   # every rank: download and check the checkpoint, if any
        manager.restore_weights(model)    # before the engine is built (world-size change only)
        manager.attach(engine, optimizer)
        state = manager.load()            # the TrainState to start from
        manager.save(state)               # every rank, at a step where a checkpoint is due
        manager.close()                   # the folder's lease given back

    World-size policy: on the number of ranks it was saved with, a checkpoint restores DeepSpeed's
    own state, the data positions and the RNG states: exact. On another number of ranks it
    restores the weights, the optimizer state (fp32 master weights, Adam's moments and step count,
    from optimizer.safetensors), the step and the lr schedule; the data stream restarts in a fresh
    order seeded by (seed, step).
    """

    def __init__(self, cfg: FrozenConfig, run_dir: Path, rank: int, world_size: int, lm_info: dict | None,
                 before_commit: Callable[[int], None] | None = None):
        """Takes the checkpoint folder's lease and decides where the run starts (its lineage).
        `lm_info` is the LM record written into every checkpoint (set before `fetch_resume`, once
        the LM is identified; the trainer adds the full sha256 once hashed); `before_commit(step)` runs on every rank after a checkpoint's
        files are written, before its commit marker (a test hook)."""
        self.cfg, self.run_dir, self.rank, self.world_size = cfg, Path(run_dir), rank, world_size
        self.is_main = rank == 0
        self.lm_info = lm_info
        self.before_commit = before_commit or (lambda step: None)
        self.lease = Lease(cfg.checkpoint_dir, cfg.checkpoint.lease_seconds) if self.is_main else None
        dist_engine.on_rank_zero(self.lease.acquire if self.lease else (lambda: None))
        self.start = dist_engine.on_rank_zero(lambda: lineage.resolve_start(
            cfg.train.resume, cfg.checkpoint_dir, cfg.checkpoint.allow_fresh_start))
        self.resume_url = self.start.url
        self.resume_state: dict | None = None
        self.engine = self.optimizer = None
        self.saved_step: int | None = None

    # -- resume ------------------------------------------------------------------------------
    def fetch_resume(self, lm_sha256: Callable[[], str | None]) -> dict | None:
        """Download the checkpoint to resume from (each node's local rank 0), read its trainer
        state and refuse it if it was made under an incompatible config. `lm_sha256()` gives this
        run's full LM hash on every rank; only checkpoints from before the cheap identity need it."""
        if not self.resume_url:
            return None
        local = self._stage(self.resume_url)
        if storage.is_remote(self.resume_url):
            if dist_engine.local_rank() == 0:
                storage.download_folder(self.resume_url, local)
            dist_engine.barrier()
        state = storage.read_json(str(local / TRAINER_STATE))
        saved, current = state["fingerprint"], fingerprint(self.cfg, self.lm_info)
        if "lm_sha256" in saved:  # a checkpoint from before the cheap identity: the full hash decides
            current.pop("lm_identity")
            current["lm_sha256"] = lm_sha256()
        diffs = describe_mismatch(saved, current)
        if diffs:
            raise InputError(f"checkpoint {self.resume_url} was made under an incompatible config: "
                             + "; ".join(diffs))
        self.resume_state = state
        return state

    @property
    def world_size_changed(self) -> bool:
        return self.resume_state is not None and self.resume_state["world_size"] != self.world_size

    def restore_weights(self, model: torch.nn.Module) -> None:
        """On a world-size change, the trained weights from the consolidated safetensors, loaded
        before the engine exists so that DeepSpeed's fp32 master copies start from them."""
        if not self.world_size_changed:
            return
        from safetensors.torch import load_file

        state = load_file(str(self._stage(self.resume_url) / WEIGHTS))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.startswith("lm.")]
        if missing or unexpected:
            raise InputError(f"checkpoint weights do not fit: missing {missing}, unexpected {unexpected}")

    def attach(self, engine, optimizer) -> None:
        """The DeepSpeed engine and its optimizer, once built."""
        self.engine, self.optimizer = engine, optimizer

    def load(self) -> TrainState:
        """The state to start from: a fresh one, or the resumed checkpoint's (the engine and
        this rank's RNG and data position restored as the world-size policy says)."""
        seed = self.cfg.train.seed
        if not self.resume_url:
            return TrainState(data_seed=seed)
        saved, local = self.resume_state, self._stage(self.resume_url)
        state = TrainState(step=int(saved["step"]), samples=int(saved["samples"]))
        state.data_seed = seed * 1_000_003 + state.step  # a fresh order, unless restored below
        if self.world_size_changed:
            self._load_on_new_world_size(local, state.step)
            return state
        self.engine.load_checkpoint(str(local / ENGINE_DIR), tag=ENGINE_TAG, load_module_strict=False,
                                    load_optimizer_states=True, load_lr_scheduler_states=True)
        mine = storage.read_json(str(local / rank_file(self.rank)))
        set_rng_state(mine["rng"])
        stream = StreamState.from_dict(mine["stream"])
        if stream.num_workers == max(1, self.cfg.data.num_workers):
            state.stream, state.data_seed = stream, int(mine.get("data_seed", seed))
        else:
            log.warning("data.num_workers changed (%s -> %s): the data stream restarts in a fresh order",
                        stream.num_workers, self.cfg.data.num_workers)
        log.info("resumed from %s at step %s", self.resume_url, state.step)
        self.saved_step = state.step  # already committed: a run resumed at its last step saves nothing
        self._drop_stage(self.resume_url)
        return state

    def _load_on_new_world_size(self, local: Path, step: int) -> None:
        path = local / OPTIMIZER
        if path.exists():
            tensors, adam_step = read_optimizer_state(path)
            dist_engine.set_full_optimizer_state(self.optimizer, self._trainable(), tensors, adam_step)
            restored = ("weights, step, lr schedule and optimizer state (fp32 master weights, Adam moments and "
                        "step count) are restored")
        else:
            restored = ("weights, step and lr schedule are restored; optimizer moments restart from zero (the "
                        "checkpoint holds no consolidated optimizer state)")
        self.saved_step = step
        for _ in range(step):
            self.engine.lr_scheduler.step()
        log.warning("resuming a %s-rank checkpoint on %s ranks: %s; the data stream restarts in a fresh order",
                    self.resume_state["world_size"], self.world_size, restored)
        log.info("resumed (elastic) from %s at step %s", self.resume_url, step)
        self._drop_stage(self.resume_url)

    # -- save --------------------------------------------------------------------------------
    def save(self, state: TrainState) -> str:
        """Write every part of the checkpoint of `state.step`, then commit it; every rank calls
        this. Returns the checkpoint's URL."""
        url = dist_engine.on_rank_zero(lambda: self._fresh_folder(state.step))
        local = self._stage(url)
        self.engine.save_checkpoint(str(local / ENGINE_DIR), tag=ENGINE_TAG, client_state={"step": state.step},
                                    save_latest=False, exclude_frozen_parameters=not self.cfg.model.train_lm)
        self._save_consolidated(local)
        storage.write_json(str(local / rank_file(self.rank)),
                           {"rank": self.rank, "stream": state.stream.to_dict(), "rng": rng_state(),
                            "data_seed": state.data_seed})
        if self.is_main:
            storage.write_json(str(local / TRAINER_STATE), {
                "step": state.step, "samples": state.samples, "world_size": self.world_size,
                "lm": self.lm_info, "fingerprint": fingerprint(self.cfg, self.lm_info),
                "config": redacted_dict(self.cfg),
            })
        self._commit(url, local, state.step)
        self.saved_step = state.step
        return url

    def _save_consolidated(self, local: Path) -> None:
        """weights.safetensors and optimizer.safetensors, gathered over the ranks, written by rank 0."""
        from safetensors.torch import save_file

        module, train_lm = self.engine.module, self.cfg.model.train_lm
        with dist_engine.gathered([p for n, p in module.named_parameters() if train_lm or not n.startswith("lm.")]):
            weights = module.trainable_state_dict(include_lm=train_lm) if self.is_main else None
        optimizer = None if train_lm else dist_engine.full_optimizer_state(self.optimizer, self._trainable())
        if not self.is_main:
            return
        local.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(local / WEIGHTS))
        if optimizer is not None:
            save_file(optimizer, str(local / OPTIMIZER), metadata={
                "format": OPTIMIZER_FORMAT, "adam_step": str(dist_engine.adam_step_count(self.optimizer))})

    def _fresh_folder(self, step: int) -> str:
        """Rank 0: the folder this lineage saves `step` in, emptied of an uncommitted leftover."""
        url = lineage.folder_for(self.cfg.checkpoint_dir, step, self.start.lineage)
        if storage.exists(url):  # files of a save that crashed before its commit marker
            fs, path = storage.filesystem(url)
            fs.rm(path, recursive=True)
        return url

    def _commit(self, url: str, local: Path, step: int) -> None:
        dist_engine.barrier()  # every rank's files are written
        files = {}
        for part in dist_engine.all_gather_object(integrity.hash_owned(local, self.rank)):
            files.update(part)
        if not storage.is_remote(url) and self.is_main:
            integrity.fsync_dirs(local)
        if storage.is_remote(url) and dist_engine.local_rank() == 0:
            storage.upload_folder(local, url)
        dist_engine.barrier()  # every node's files are uploaded
        self.before_commit(step)
        if self.is_main:
            commit(url, {"format": MARKER_FORMAT, "step": step, "lineage": self.start.lineage,
                         "seq": lineage.next_seq(self.cfg.checkpoint_dir), "committed_at": time.time(),
                         "hash": integrity.HASH, "files": files})
            prune(self.cfg.checkpoint_dir, self.cfg.checkpoint.keep_last, protect=(url, self.resume_url or ""))
            log.info("checkpoint committed: %s", url)
        dist_engine.barrier()
        self._drop_stage(url)

    def _drop_stage(self, url: str | None) -> None:
        """A remote checkpoint's staged copy on this node, once uploaded or loaded (every rank
        calls this; the node's local rank 0 removes it once all have read it)."""
        if not url or not storage.is_remote(url):
            return
        dist_engine.barrier()
        if dist_engine.local_rank() == 0:
            import shutil

            shutil.rmtree(self._stage(url), ignore_errors=True)

    def close(self) -> None:
        """Give the checkpoint folder's lease back (rank 0)."""
        if self.lease:
            self.lease.release()

    # -- helpers -----------------------------------------------------------------------------
    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]

    def _stage(self, url: str) -> Path:
        return local_stage(str(self.run_dir), url, dist_engine.node_name())


def read_optimizer_state(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """optimizer.safetensors: ({name}.master / .exp_avg / .exp_avg_sq tensors, Adam's step count)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("format") != OPTIMIZER_FORMAT:
            raise ValueError(f"{path}: not a consolidated optimizer state ({OPTIMIZER_FORMAT})")
        return {key: handle.get_tensor(key) for key in handle.keys()}, int(meta["adam_step"])
