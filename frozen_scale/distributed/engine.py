"""The only module that talks to DeepSpeed and torch.distributed set-up.

- `init_distributed()`: one process or many (torchrun / deepspeed launcher env), gloo on CPU.
- `ds_config(cfg, world_size, lm_shape)`: the DeepSpeed JSON, derived from the run config (and, at
  ZeRO-3, from the LM's shape: the gathered window, see frozen_scale.distributed.zero3).
- `lm_loading_context(ds)`: keeps transformers' HfDeepSpeedConfig alive so that under ZeRO-3
  `from_pretrained` builds the LM already partitioned (no rank ever holds it whole).
- `build_engine(...)`: DeepSpeed engine whose optimizer holds the trainable parameters only.
- gathering helpers for ZeRO-3 partitioned parameters.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import socket

import torch
import torch.distributed as dist

from frozen_scale.config import FrozenConfig
from frozen_scale.distributed.zero3 import zero3_window

os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")

import deepspeed  # noqa: E402  (the accelerator must be chosen before the import)
from deepspeed.accelerator import get_accelerator  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed (single process too); returns (rank, world_size)."""
    if not dist.is_initialized():
        backend = "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
        if "RANK" not in os.environ:  # a plain single process: a file store, no port to race for
            import tempfile

            # DeepSpeed reads LOCAL_RANK; RANK/MASTER_* stay unset so child processes do not
            # inherit a launch environment that is not theirs
            os.environ.setdefault("LOCAL_RANK", "0")
            store = tempfile.NamedTemporaryFile(prefix="frozen_scale_pg_", delete=False).name
            dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1,
                                    timeout=datetime.timedelta(minutes=30))
        deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=30),
                                   verbose=False)
    if get_accelerator().device_name() != "cpu":
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    name = get_accelerator().device_name()
    return torch.device(name if name == "cpu" else f"{name}:{get_accelerator().current_device()}")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


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


def zero3_init(ds: dict):
    """Context in which new modules are created partitioned (ZeRO-3), else a no-op."""
    if ds["zero_optimization"]["stage"] == 3:
        return deepspeed.zero.Init(config_dict_or_path=ds)
    return contextlib.nullcontext()


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


def build_engine(model, cfg: FrozenConfig, ds: dict, lr_lambda):
    """DeepSpeed engine; the optimizer covers trainable parameters only."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    t = cfg.train
    optimizer = None
    if "optimizer" not in ds:
        decay = [p for p in trainable if p.dim() >= 2]
        no_decay = [p for p in trainable if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=tuple(t.betas))
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=trainable, optimizer=optimizer, config=ds,
        lr_scheduler=(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)),
    )
    return engine, optimizer


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of optimizer state (Adam moments etc., not the step counters) held by this rank."""
    inner = getattr(optimizer, "optimizer", optimizer)
    total = 0
    for state in inner.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                total += value.numel() * value.element_size()
    return total


def optimizer_param_ids(optimizer) -> set[int]:
    inner = getattr(optimizer, "optimizer", optimizer)
    return {id(p) for g in inner.param_groups for p in g["params"]}


def all_reduce_sum(value: float) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def full_grad(param):
    """The full (all-reduced, gathered) gradient of a parameter under any ZeRO stage; call
    between backward and step."""
    from deepspeed.utils import safe_get_full_grad

    return safe_get_full_grad(param)
