"""The optimizer state of the trainable parameters as whole tensors, whatever the ZeRO stage:
what a checkpoint stores (fp32 masters and Adam's moments) and what a resume on another world
size puts back into DeepSpeed's partitioned optimizer."""

from __future__ import annotations

import torch


def _inner(optimizer):
    """The torch optimizer inside DeepSpeed's ZeRO / bf16 wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of optimizer state (Adam moments etc., not the step counters) held by this rank."""
    inner = _inner(optimizer)
    total = 0
    for state in inner.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                total += value.numel() * value.element_size()
    return total


def optimizer_param_ids(optimizer) -> set[int]:
    inner = _inner(optimizer)
    return {id(p) for g in inner.param_groups for p in g["params"]}


ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def adam_step_count(optimizer) -> int:
    """Adam's step count (its bias correction depends on it); 0 before the first step."""
    for state in _inner(optimizer).state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def _partitioned(param) -> bool:
    """Whether DeepSpeed keeps this parameter's fp32 master and optimizer state in partitions
    (ZeRO 1-3, or its bf16 optimizer), which `deepspeed.utils.safe_*_full_*` gather and scatter."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def _whole_masters(optimizer) -> dict[int, torch.Tensor]:
    """id(parameter) -> its fp32 master copy, where DeepSpeed keeps whole ones (ZeRO 0 in bf16:
    the unfused mixed-precision optimizer's fp32 groups). Elsewhere unpartitioned parameters are
    stepped by the torch optimizer as they are (ZeRO 0 in fp32): their own master."""
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if low is None or high is None:
        return {}
    return {id(lp): hp for lows, highs in zip(low, high) for lp, hp in zip(lows, highs)}


def full_optimizer_state(optimizer, named_params) -> dict[str, torch.Tensor]:
    """Each parameter's fp32 master weights and Adam moments, whole (ZeRO partitions gathered),
    as contiguous fp32 CPU tensors keyed `{name}.master`, `{name}.exp_avg`, `{name}.exp_avg_sq`.
    A collective at ZeRO 1-3: every rank calls it with the same parameters in the same order.
    The moments are zeros before Adam's first step."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    started, inner, masters = adam_step_count(optimizer) > 0, _inner(optimizer), _whole_masters(optimizer)
    if started:
        _link_optimizer_state(optimizer)
    out = {}
    for name, param in named_params:
        if _partitioned(param):
            master = safe_get_full_fp32_param(param)
            moments = {key: safe_get_full_optimizer_state(param, key) if started else torch.zeros_like(master)
                       for key in ADAM_MOMENTS}
        else:
            master = masters.get(id(param), param)
            moments = {key: inner.state[master][key] if started else torch.zeros_like(master) for key in ADAM_MOMENTS}
        out[f"{name}.master"] = master
        out.update({f"{name}.{key}": value for key, value in moments.items()})
    return {key: value.detach().float().cpu().contiguous() for key, value in out.items()}


def set_full_optimizer_state(optimizer, named_params, state: dict[str, torch.Tensor], step: int) -> None:
    """Lay whole optimizer state (`full_optimizer_state`'s layout, from any number of ranks) into
    this run's partitions and set Adam's step count to `step`. Every rank calls it, after the
    engine is built and before its first step; the module's own weights are the caller's (a ZeRO
    optimizer copies its fp32 master from them when built)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    _materialise_adam_state(optimizer, step)
    inner, masters = _inner(optimizer), _whole_masters(optimizer)
    for name, param in named_params:
        if _partitioned(param):
            safe_set_full_fp32_param(param, state[f"{name}.master"].to(param.device))
            for key in ADAM_MOMENTS:
                safe_set_full_optimizer_state(param, state[f"{name}.{key}"].to(param.device), key)
            continue
        master = masters.get(id(param), param)
        with torch.no_grad():
            master.copy_(state[f"{name}.master"].view_as(master))
            for key in ADAM_MOMENTS:
                inner.state[master][key].copy_(state[f"{name}.{key}"].view_as(master))


def _materialise_adam_state(optimizer, step: int) -> None:
    """Adam's state made now, as its first step would make it (zero moments), with the given step
    count, and DeepSpeed's views of it made (which it otherwise makes after its first step)."""
    inner = _inner(optimizer)
    torch_adam = isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))
    for group, param in _stepped_tensors(optimizer):
        fused, on_device = group.get("fused"), group.get("capturable") or group.get("fused")
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 and not fused else torch.float32
        state = inner.state[param]
        for key in ADAM_MOMENTS:
            state.setdefault(key, torch.zeros_like(param, memory_format=torch.preserve_format))
        # torch's Adam keeps the count in a tensor (on the host unless fused or capturable),
        # DeepSpeed's CPU Adam (optimizer offload) in a Python int
        state["step"] = (torch.tensor(float(step), dtype=dtype, device=param.device if on_device else "cpu")
                         if torch_adam else step)
    _link_optimizer_state(optimizer)


def _stepped_tensors(optimizer) -> list[tuple[dict, torch.Tensor]]:
    """(param group, tensor) for each tensor the inner torch optimizer steps on this rank: the
    parameters (ZeRO 0 in fp32) or the fp32 master partitions. ZeRO-3 puts its partitions into
    the inner optimizer's groups only while it steps, so they come from its own list."""
    inner = _inner(optimizer)
    partitions = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if partitions is not None:
        return [(inner.param_groups[optimizer.sub_group_to_group_id[i]], p) for i, p in enumerate(partitions)]
    return [(group, p) for group in inner.param_groups for p in group["params"]]


def _link_optimizer_state(optimizer) -> None:
    """(Re)make the per-parameter views of Adam's state that DeepSpeed's ZeRO 1-2 and bf16
    optimizers read in `safe_get/set_full_optimizer_state`. DeepSpeed makes them once, after its
    first step, and by then (0.19.8) only the first param group has Adam state: the views of the
    others come out empty, and a checkpoint load drops them all. ZeRO-3 and a plain torch
    optimizer read Adam's state directly."""
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()
