"""The only module that talks to DeepSpeed and torch.distributed set-up.

- `init_distributed()`: one process or many (torchrun / deepspeed launcher env), gloo on CPU.
- `ds_config(cfg, world_size, lm_shape)`: the DeepSpeed JSON, derived from the run config (and, at
  ZeRO-3, from the LM's shape: the gathered window, see frozen_scale.distributed.zero3).
- `lm_loading_context(ds)`: keeps transformers' HfDeepSpeedConfig alive so that under ZeRO-3
  `from_pretrained` builds the LM already partitioned (no rank ever holds it whole).
- `build_engine(...)`: DeepSpeed engine whose optimizer holds the trainable parameters only.
- gathering helpers for ZeRO-3 partitioned parameters; `full_optimizer_state` and
  `set_full_optimizer_state`: the trainable parameters' fp32 master weights and Adam moments,
  whole, whatever the ZeRO stage and the number of ranks (a checkpoint's world-size-free copy).
- start-up coordination: `node_leader_first(fn)` (once per node, result shared with the node's
  other ranks), `on_rank_zero(fn)` (once per job, result shared with all) and
  `broadcast_object(obj)`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket

import torch
import torch.distributed as dist

from frozen_scale.config import FrozenConfig, deep_merge
from frozen_scale.distributed.zero3 import zero3_window

os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")

import deepspeed  # noqa: E402  (the accelerator must be chosen before the import)
from deepspeed.accelerator import get_accelerator  # noqa: E402


def init_distributed(timeout_s: float = 600) -> tuple[int, int]:
    """Initialise torch.distributed (single process too); returns (rank, world_size). A collective
    that waits `timeout_s` for another rank fails on every rank that waits."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        backend = "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
        if "RANK" not in os.environ:  # a plain single process: a file store, no port to race for
            import tempfile

            # DeepSpeed reads LOCAL_RANK; RANK/MASTER_* stay unset so child processes do not
            # inherit a launch environment that is not theirs
            os.environ.setdefault("LOCAL_RANK", "0")
            store = tempfile.NamedTemporaryFile(prefix="frozen_scale_pg_", delete=False).name
            dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1,
                                    timeout=timeout)
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout,
                                   verbose=False)
    if get_accelerator().device_name() != "cpu":
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def node_name() -> str:
    """This node's name within the job: torchrun's node rank (GROUP_RANK), else SLURM's node id,
    else the host name. Two nodes that share a filesystem (a run folder on NFS, or two torchrun
    "nodes" on one machine) keep their node-local files apart by it."""
    for var in ("GROUP_RANK", "SLURM_NODEID"):
        if os.environ.get(var):
            return f"node{os.environ[var]}"
    return socket.gethostname()


def device() -> torch.device:
    name = get_accelerator().device_name()
    return torch.device(name if name == "cpu" else f"{name}:{get_accelerator().current_device()}")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def local_rank() -> int:
    """This process's rank on its node (LOCAL_RANK, set by torchrun, deepspeed and our launchers)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def broadcast_object(obj, src: int = 0):
    """A small picklable object from rank `src` to every rank (the value passed elsewhere is ignored)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def node_leader_first(fn):
    """Run `fn()` on local rank 0 of each node only and return its result on every rank of that
    node (e.g. a local path it fetched). One collective. A failure on any node raises on every
    rank (the same exception where it pickles), so no rank is left waiting on one that failed."""
    leader = local_rank() == 0
    outcome = _attempt(fn) if leader else None
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return _result(outcome) if leader else fn()
    entries = [None] * dist.get_world_size()
    dist.all_gather_object(entries, (socket.gethostname(), local_rank(), outcome))
    if leader and outcome[0] == "error":
        raise outcome[1]
    for _, _, other in entries:
        if other is not None and other[0] == "error":
            raise other[1]
    if leader:
        return outcome[1]
    host, rank = socket.gethostname(), dist.get_rank()
    leaders = {r: e for r, e in enumerate(entries) if e[0] == host and e[1] == 0}
    mine = leaders.get(rank - local_rank()) or next(iter(leaders.values()), None)
    if mine is None:  # no leader on this host (LOCAL_RANK not set by the launcher): do it here
        return fn()
    return mine[2][1]


def on_rank_zero(fn):
    """`fn()` on rank 0 only, its result (a small picklable object) on every rank; a failure on
    rank 0 raises on every rank."""
    outcome = _attempt(fn) if not dist.is_initialized() or dist.get_rank() == 0 else None
    return _result(broadcast_object(outcome))


def _attempt(fn) -> tuple:
    try:
        return ("ok", fn())
    except Exception as err:  # noqa: BLE001  (handed to every rank, re-raised there)
        return ("error", _portable(err))


def _portable(err: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001  (an exception that does not survive pickling)
        return RuntimeError(f"{type(err).__name__}: {err}")


def _result(outcome: tuple):
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


def ds_config(cfg: FrozenConfig, world_size: int, lm_shape=None) -> dict:
    """The DeepSpeed JSON for this run: one source of truth, the run config.

    `lm_shape` (anything with `block_params`, `largest_layer_params` and `hidden`, such as
    frozen_scale.model.shape.LMShape) sizes ZeRO-3's gathered window to the LM; without it
    DeepSpeed's defaults apply. `deepspeed.extra` still wins over both."""
    t, z = cfg.train, cfg.deepspeed
    zero: dict = {"stage": z.stage}
    if z.stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
        if lm_shape is not None:
            zero.update(zero3_window(lm_shape.block_params, lm_shape.largest_layer_params, lm_shape.hidden))
        if z.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if z.offload_optimizer and z.stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    conf = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if z.offload_optimizer:
        conf["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": t.lr, "betas": list(t.betas), "weight_decay": t.weight_decay},
        }
    return deep_merge(conf, z.extra)


@contextlib.contextmanager
def lm_loading_context(ds: dict):
    """Keep transformers' DeepSpeed config alive while the LM loads (ZeRO-3: partitioned load)."""
    if ds["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841 - must stay referenced during from_pretrained
    try:
        yield
    finally:
        del hf_ds


def gathered(params, modifier_rank=None):
    """Full values of (possibly ZeRO-3 partitioned) parameters inside the context."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def local_numel(param) -> int:
    """Elements of this parameter held by this rank (its partition under ZeRO-3)."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor.numel()
    return param.numel()


class SkipNonFiniteAdamW(torch.optim.AdamW):
    """AdamW that skips a step whose gradients are not all finite and says so in `overflow`,
    the attribute DeepSpeed's engine reads to skip the lr-scheduler step and count the skip.
    DeepSpeed's ZeRO and bf16 optimizers do the same on a non-finite global gradient norm before
    they call this one; at ZeRO stage 0 in fp32 DeepSpeed steps this optimizer directly. The
    gradients were reduced over the ranks first, so every rank decides alike."""

    overflow = False

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.overflow = bool(grads) and not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if self.overflow:
            return None
        return super().step(closure)


def param_groups(model, trainable: list, t) -> list[dict]:
    """Weight decay for matrices only; with train.lm_lr, the LM's parameters in groups of that lr
    (the prefix's at train.lr)."""
    lm_ids = {id(p) for p in model.lm.parameters()} if t.lm_lr else set()
    groups = []
    for lr in dict.fromkeys(t.lm_lr if id(p) in lm_ids else t.lr for p in trainable):
        mine = [p for p in trainable if (t.lm_lr if id(p) in lm_ids else t.lr) == lr]
        groups += [{"params": [p for p in mine if p.dim() >= 2], "weight_decay": t.weight_decay, "lr": lr},
                   {"params": [p for p in mine if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]
    return [g for g in groups if g["params"]]


def build_engine(model, cfg: FrozenConfig, ds: dict, lr_lambda):
    """DeepSpeed engine; the optimizer covers trainable parameters only."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    t = cfg.train
    optimizer = None
    if "optimizer" not in ds:
        optimizer = SkipNonFiniteAdamW(param_groups(model, trainable, t), lr=t.lr, betas=tuple(t.betas))
    elif t.lm_lr and cfg.model.train_lm:
        raise ValueError("train.lm_lr needs the optimizer in this process: not with deepspeed.offload_optimizer")
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=trainable, optimizer=optimizer, config=ds,
        lr_scheduler=(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)),
    )
    return engine, optimizer


# the optimizer state of the trainable parameters, whole (checkpoints, resume across world sizes)
from frozen_scale.distributed.optimizer_state import (ADAM_MOMENTS, adam_step_count,  # noqa: E402,F401
                                                      full_optimizer_state, optimizer_param_ids,
                                                      optimizer_state_bytes, set_full_optimizer_state)


def all_reduce_sum(values):
    """Sum a float, or a list of floats, over all ranks in ONE collective.

    The control plane (stop requests, logged metrics) rides on a tensor of this rank's device,
    not a CPU tensor: on GPUs the process group is NCCL, which only reduces CUDA tensors. A
    second, CPU-capable group (`cpu:gloo,cuda:nccl`) would work too, but would add a gloo
    rendezvous per rank at start (every rank of every node) for a handful of numbers a step; a
    device tensor costs one tiny NCCL reduction and the one host sync the caller needs anyway.
    """
    scalar = not isinstance(values, (list, tuple))
    items = [values] if scalar else list(values)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return items[0] if scalar else items
    t = torch.tensor(items, dtype=torch.float64, device=device())
    dist.all_reduce(t)
    out = t.tolist()  # the one host sync
    return out[0] if scalar else out


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order (one rank: [obj]). Under NCCL the objects travel as
    tensors of the current device, which `init_distributed` has set."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def shutdown() -> None:
    """Destroy the process group (every distributed entry point calls this on its way out, on
    success, error and preemption alike). Without it, gloo's worker threads are still joinable
    when the interpreter tears down its C++ statics, and a rank can abort at exit ("terminate
    called without an active exception", SIGABRT) after its work is done: 3 of 20 two-rank
    runs of a bare all_gather_object script on a 2-core CPU; 0 of 20 with the group destroyed."""
    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's cached groups, so a later
        # init in the same process (tests, `reproduce`) starts from scratch
    elif dist.is_initialized():
        dist.destroy_process_group()


def full_grad(param):
    """The full (all-reduced, gathered) gradient of a parameter under any ZeRO stage; call
    between backward and step."""
    from deepspeed.utils import safe_get_full_grad

    return safe_get_full_grad(param)
