"""ZeRO-3's gathered window, sized from the LM: one function for the DeepSpeed JSON and the plan.

Under ZeRO-3 a rank holds its partition of the LM plus the parameters it has gathered for the
modules running now or soon. DeepSpeed bounds that window with four settings whose defaults are
absolute numbers of parameters, blind to the model:

- `stage3_max_live_parameters` (default 1e9): gathered parameters above which no more are
  prefetched;
- `stage3_max_reuse_distance` (default 1e9): a module's gathered parameters are kept rather than
  released when they will be used again within this many parameters of the trace. With a frozen
  LM every block is used again in the backward pass, at most two LMs' worth of parameters later,
  so with 1e9 a rank of a billion-parameter LM keeps the whole LM gathered through each step;
- `stage3_prefetch_bucket_size` (default 5e7): parameters gathered ahead of use;
- `stage3_param_persistence_threshold` (default 1e5): parameters this small or smaller are never
  partitioned (every rank holds them whole).

`zero3_window(...)` derives them from the LM's shape: a unit of the larger of one decoder block
and the largest single layer (the token embedding, often); live parameters, reuse distance and
prefetch all one unit. What a rank holds gathered beyond the module running now lies within the
next max(live, reuse distance) parameters of the step, so it holds its partition plus about one
unit and the running module: a window that scales with the LM's widest part, not its depth, and
still lets the next block's gathers overlap this one's compute. (Under activation checkpointing a
block's first modules are gathered again between their recomputation and their backward; a
run that would rather trade memory for that traffic raises the reuse distance in
deepspeed.extra.) Vectors (norm weights, biases up to the hidden size) persist whole; every
matrix is partitioned, however small the LM.

No DeepSpeed import here: `frozen-scale plan` reads the same numbers on machines without it.
"""

from __future__ import annotations

ZERO3_KEYS = ("stage3_max_live_parameters", "stage3_max_reuse_distance", "stage3_prefetch_bucket_size",
              "stage3_param_persistence_threshold")
DEEPSPEED_DEFAULTS = {
    "stage3_max_live_parameters": 10**9,
    "stage3_max_reuse_distance": 10**9,
    "stage3_prefetch_bucket_size": 5 * 10**7,
    "stage3_param_persistence_threshold": 10**5,
}
LIVE_UNITS = 1
"""Most gathered parameters prefetching may bring the window to, in units."""


def window_unit(block_params: int, largest_layer_params: int) -> int:
    """Parameters of the widest thing gathered at once: a decoder block or the largest layer."""
    return max(int(block_params), int(largest_layer_params), 1)


def zero3_window(block_params: int, largest_layer_params: int, hidden: int) -> dict:
    """ZeRO-3 window settings (DeepSpeed `zero_optimization` keys) for an LM of this shape."""
    unit = window_unit(block_params, largest_layer_params)
    return {
        "stage3_max_live_parameters": LIVE_UNITS * unit,
        "stage3_max_reuse_distance": unit,
        "stage3_prefetch_bucket_size": unit,
        "stage3_param_persistence_threshold": min(DEEPSPEED_DEFAULTS["stage3_param_persistence_threshold"],
                                                  int(hidden)),
    }


def effective_zero3(window: dict | None, zero_extra: dict | None) -> dict:
    """The four settings a run ends up with: DeepSpeed's defaults, under the derived window (when
    the LM's shape is known), under the user's `deepspeed.extra.zero_optimization` (which wins)."""
    out = dict(DEEPSPEED_DEFAULTS)
    out.update(window or {})
    out.update({k: v for k, v in (zero_extra or {}).items() if k in ZERO3_KEYS})
    return out
