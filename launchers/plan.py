"""Per-GPU memory plan for a Frozen run: will this LM fit on these GPUs, and with which settings?

`frozen-scale plan CONFIG --nodes N --gpus-per-node G` reads the LM's HF config only (no
weights), counts parameters on the meta device, and estimates per-GPU bytes for

- model states: the frozen LM's 16-bit parameters (sharded only at ZeRO-3; never gradients or
  optimizer state), and the trainable prefix's parameters + gradients + Adam state in DeepSpeed's
  own accounting (2 bytes 16-bit params, then 18 bytes per parameter that ZeRO shards: 16-bit
  grads 2, fp32 grads 4, fp32 master 4, Adam moments 8), plus under ZeRO-3 the gathered largest
  layer;
- activations: what autograd saves for the backward pass through the frozen LM (with frozen
  weights a Linear saves nothing for its input, so only norms, attention and the MLP's
  nonlinearity count), itemised for a Llama-style block and checked against the bytes
  `torch.autograd.graph.saved_tensors_hooks` sees on a tiny model (tests/unit/launchers/test_plan.py);
  with activation checkpointing, one block input per layer plus one block recomputed; other
  families (GPT-2, OPT, NeoX: LayerNorm, plain MLP) get the same itemisation, approximately;
- communication buffers: gradient reduce buckets and, at ZeRO-3, the window of gathered LM
  parameters, from the same live-parameter / reuse-distance settings the trainer derives from the
  LM (frozen_scale.distributed.zero3; a user's deepspeed.extra wins in both);
- the loading peak (`loading_peak`): at ZeRO-3 rank 0 holds its partition, the module being
  written and, in host memory, one mapped checkpoint shard.

It then recommends the lowest ZeRO stage and the largest micro-batch that fit. `on_cpu` gives what
a CPU rank's process holds (no CUDA context, the process's own runtime instead): bench/big_lm.py
checks it against measured process memory with a 1B LM.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from frozen_scale.distributed.zero3 import DEEPSPEED_DEFAULTS, effective_zero3, zero3_window
from frozen_scale.model.shape import LMShape, lm_shape

GIB = 2**30
# DeepSpeed's defaults for the buffers we count (zero_optimization.*), overridable by deepspeed.extra;
# a run's ZeRO-3 window settings come from zero3_settings (derived from the LM, as the trainer does).
ZERO_DEFAULTS = {
    "reduce_bucket_size": 5e8,
    "allgather_bucket_size": 5e8,
    **DEEPSPEED_DEFAULTS,
}
CUDA_CONTEXT_BYTES = 1 * GIB
"""CUDA context, cuBLAS/NCCL workspaces and allocator slack we hold back on every GPU."""
HOST_RUNTIME_BYTES = 80 * 2**20
"""What a CPU rank's process holds beyond its imports and the counted tensors once the engine is
built (process group, DeepSpeed's engine and hooks, allocator slack): measured between steps by
bench/big_lm.py on a 2-core CPU, 0.06 GiB with a 4-layer LM and 0.08-0.09 GiB with a 1B LM. On a
GPU this is host memory: it is in `on_cpu`, not in `total`."""


def prefix_param_counts(cfg, lm_hidden: int, lm_vocab: int = 1) -> tuple[int, int, int]:
    """(trainable, frozen, largest trainable layer) parameters of the vision side, on meta."""
    import torch

    from frozen_scale.model.prefix import LexicalPrefixMapper, PrefixMapper
    from frozen_scale.model.vision import build_vision_encoder

    with torch.device("meta"):
        vision = build_vision_encoder(cfg.model.vision)
        if cfg.model.prefix_kind != "continuous":  # lexical, lexical_hard, words: the same parameters
            prefix = LexicalPrefixMapper(vision.out_dim, cfg.model.prefix_length, lm_hidden, lm_vocab)
        else:
            prefix = PrefixMapper(vision.out_dim, cfg.model.prefix_length, lm_hidden, 1.0)
    params = list(vision.parameters()) + list(prefix.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad)
                  for m in [*vision.modules(), *prefix.modules()])
    return trainable, sum(p.numel() for p in params) - trainable, largest


# ---------------------------------------------------------------------------------------------
# the byte model


def block_activation_bytes_per_token(lm: LMShape, attn: str, seq_len: int, lm_frozen: bool) -> float:
    """Bytes autograd saves per token per decoder block (16-bit compute, fp32 norm statistics).

    Frozen weights: each norm saves its fp32 input (4h) and rsqrt; attention (flash/SDPA) saves
    q, k, v, output and the log-sum-exp; the MLP saves its nonlinearity's input and both product
    operands (gated: gate, silu(gate), up = 6I bytes; plain: 2 x 2I). A trainable LM additionally
    saves every Linear's 16-bit input (for the weight gradient).
    """
    h, kv, inter = lm.hidden, lm.kv_dim, lm.intermediate
    norms = 2 * (4 * h + 4)
    attention = 2 * h + 2 * kv + 2 * kv + 2 * h + 4 * lm.heads
    if attn == "eager":  # fp32 softmax output and its 16-bit copy, per head per key
        attention += 6 * lm.heads * seq_len
    mlp = 6 * inter if lm.gated_mlp else 4 * inter
    total = norms + attention + mlp
    if not lm_frozen:  # inputs of q/k/v (shared), o, gate/up (shared), down
        total += 2 * h + 2 * h + 2 * h + 2 * inter
    return float(total)


def head_activation_bytes_per_token(lm: LMShape) -> float:
    """Final norm, fp32 logits for the loss and the target index."""
    return 4 * lm.hidden + 4 + 4 * lm.vocab + 8


@dataclass
class MemoryEstimate:
    """Per-GPU bytes of one configuration."""

    stage: int
    micro_batch: int
    checkpointing: bool
    lm_params: float
    trainable_states: float
    activations: float
    buffers: float
    capacity: float

    @property
    def model_states(self) -> float:
        return self.lm_params + self.trainable_states

    @property
    def total(self) -> float:
        return self.model_states + self.activations + self.buffers + CUDA_CONTEXT_BYTES

    @property
    def on_cpu(self) -> float:
        """What a rank holds when it runs on the CPU: the same tensors, no CUDA context, plus the
        process's own runtime (the figure bench/big_lm.py measures)."""
        return self.total - CUDA_CONTEXT_BYTES + HOST_RUNTIME_BYTES

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    def row(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "capacity"}
        out.update(model_states=self.model_states, total=self.total, fits=self.fits)
        return out


@dataclass
class PlanInputs:
    """Everything the byte model reads, resolved from the run config and the CLI."""

    lm: LMShape
    trainable_params: int
    frozen_vision_params: int
    gpus: int
    seq_len: int
    attn: str
    param_bytes: int
    """2 for bf16 runs, 4 for fp32."""
    lm_trainable: bool = False
    largest_prefix_layer: int = 0
    zero: dict = field(default_factory=lambda: dict(ZERO_DEFAULTS))
    gpu_bytes: float = 80 * GIB


def model_state_bytes(trainable: int, frozen: int, stage: int, gpus: int, largest_trainable_layer: int,
                      largest_frozen_layer: int, param_bytes: int = 2) -> tuple[float, float]:
    """(frozen, trainable) model-state bytes per GPU, in DeepSpeed's estimator accounting.

    Trainable, mixed precision with Adam: 16-bit params 2 (replicated below ZeRO-3), then 18 bytes
    ZeRO shards (16-bit grads 2, fp32 grads 4, fp32 master 4, Adam moments 8); ZeRO-1 shards all
    but the 16-bit grads. At ZeRO-3 DeepSpeed counts 18/N in all plus 4 bytes x the largest layer,
    gathered (16-bit params and grads). fp32 runs: params 4, grads 4, Adam 8, no master copy.
    Frozen: the params only (sharded at ZeRO-3, plus the gathered largest layer's params).
    """
    n = gpus
    if param_bytes == 4:
        p16, g16, sharded = 4, 4, 8
    else:
        p16, g16, sharded = 2, 2, 16
    if stage == 0:
        train = trainable * (p16 + g16 + sharded)
    elif stage == 1:
        train = trainable * (p16 + g16) + trainable * sharded / n
    elif stage == 2:
        train = trainable * p16 + trainable * (g16 + sharded) / n
    else:
        per_param = 18 if param_bytes == 2 else p16 + g16 + sharded
        train = trainable * per_param / n + (p16 + g16) * largest_trainable_layer * bool(trainable)
    frozen_bytes = frozen * param_bytes / (n if stage == 3 else 1)
    if stage == 3 and frozen:
        frozen_bytes += param_bytes * largest_frozen_layer
    return float(frozen_bytes), float(train)


def estimate(inputs: PlanInputs, stage: int, micro_batch: int, checkpointing: bool) -> MemoryEstimate:
    lm = inputs.lm
    frozen = inputs.frozen_vision_params + (0 if inputs.lm_trainable else lm.total_params)
    trainable = inputs.trainable_params + (lm.total_params if inputs.lm_trainable else 0)
    largest_trainable = lm.largest_layer_params if inputs.lm_trainable else inputs.largest_prefix_layer
    frozen_bytes, train_bytes = model_state_bytes(trainable, frozen, stage, inputs.gpus, largest_trainable,
                                                  lm.largest_layer_params, inputs.param_bytes)
    tokens = micro_batch * inputs.seq_len
    per_block = block_activation_bytes_per_token(lm, inputs.attn, inputs.seq_len, not inputs.lm_trainable)
    if inputs.param_bytes == 4:  # fp32 compute: the 16-bit tensors double (norm stats already fp32)
        per_block *= 2
    if checkpointing:  # block inputs kept, one block recomputed at a time
        acts = tokens * (lm.layers * inputs.param_bytes * lm.hidden + per_block)
    else:
        acts = tokens * lm.layers * per_block
    acts += tokens * head_activation_bytes_per_token(lm)
    buffers = _buffer_bytes(inputs, stage, trainable)
    return MemoryEstimate(stage, micro_batch, checkpointing, frozen_bytes, train_bytes, float(acts),
                          buffers, inputs.gpu_bytes)


def _buffer_bytes(inputs: PlanInputs, stage: int, trainable: int) -> float:
    """Collective buffers: gradient reduce bucket (16-bit) and, at ZeRO-3, the prefetched params."""
    zero = inputs.zero
    grad_bucket = 2 * min(zero["reduce_bucket_size"], trainable) if stage >= 1 else 2 * trainable
    if stage in (1, 2):
        grad_bucket += 2 * min(zero["allgather_bucket_size"], trainable)
    if stage != 3:
        return float(grad_bucket)
    # the largest layer's gathered params are already in the LM's model states (DeepSpeed's accounting)
    window = gathered_window_params(inputs.lm, zero) - inputs.lm.largest_layer_params
    return float(grad_bucket + inputs.param_bytes * max(window, 0))


def gathered_window_params(lm: LMShape, zero: dict) -> int:
    """LM parameters a ZeRO-3 rank holds gathered at once during a step.

    A gathered parameter stays until released; DeepSpeed keeps one whose next use lies within
    `stage3_max_reuse_distance` parameters of the trace ahead, and prefetches ahead while fewer than
    `stage3_max_live_parameters` are gathered. So what is gathered beyond the module running now
    lies within the next max(reuse distance, live parameters) of the trace: at most that many, and
    at most the whole LM (with DeepSpeed's 1e9 defaults, the whole of a 1B LM)."""
    ahead = max(zero["stage3_max_reuse_distance"], zero["stage3_max_live_parameters"])
    return int(min(lm.total_params, ahead + lm.largest_layer_params))


def zero3_settings(lm: LMShape, zero_extra: dict | None = None) -> dict:
    """The ZeRO-3 window a run of this LM gets: derived as the trainer derives it, the user's
    deepspeed.extra.zero_optimization winning (frozen_scale.distributed.zero3)."""
    return effective_zero3(zero3_window(lm.block_params, lm.largest_layer_params, lm.hidden), zero_extra)


def checkpoint_shard_bytes(inputs: PlanInputs) -> float:
    """The largest weight file of the LM's checkpoint; the whole LM in the run's precision when
    the folder holds only a config."""
    return float(inputs.lm.largest_shard_bytes or inputs.param_bytes * inputs.lm.total_params)


def loading_peak(inputs: PlanInputs, stage: int, on_cpu: bool = False) -> float:
    """Bytes the busiest rank (rank 0, which reads the checkpoint) holds while the LM loads.

    ZeRO-3: its partition plus the module being written, gathered (frozen_scale.model.lm loads a
    sharded checkpoint one shard at a time); the shard being read is memory-mapped in host memory,
    so it counts on the CPU (and on a GPU machine's host), not on the GPU. Below ZeRO-3: the whole
    LM (on the CPU its pages are mapped from the checkpoint and read at first use). The engine is
    not built yet: no CUDA context or runtime is added."""
    lm = inputs.lm
    whole = inputs.param_bytes * lm.total_params
    if stage != 3:
        return float(whole)
    device = whole / inputs.gpus + inputs.param_bytes * lm.largest_layer_params
    return float(device + (checkpoint_shard_bytes(inputs) if on_cpu else 0.0))


# ---------------------------------------------------------------------------------------------
# recommendation


def micro_batch_candidates(configured: int) -> list[int]:
    sizes = {1, configured}
    b = 1
    while b < max(configured * 4, 64):
        b *= 2
        sizes.add(b)
    return sorted(sizes)


def recommend(inputs: PlanInputs, configured_micro_batch: int) -> dict:
    """Lowest ZeRO stage that fits at the configured micro-batch (checkpointing only if needed);
    otherwise the largest micro-batch that fits at ZeRO-3 with checkpointing."""
    for checkpointing in (False, True):
        for stage in (0, 1, 2, 3):
            est = estimate(inputs, stage, configured_micro_batch, checkpointing)
            if est.fits:
                best_mb = max(
                    (mb for mb in micro_batch_candidates(configured_micro_batch)
                     if estimate(inputs, stage, mb, checkpointing).fits),
                    default=configured_micro_batch,
                )
                return {"fits": True, "stage": stage, "activation_checkpointing": checkpointing,
                        "micro_batch": configured_micro_batch, "max_micro_batch": best_mb,
                        "estimate": est.row()}
    fitting = [mb for mb in micro_batch_candidates(configured_micro_batch)
               if mb < configured_micro_batch and estimate(inputs, 3, mb, True).fits]
    if fitting:
        est = estimate(inputs, 3, fitting[-1], True)
        return {"fits": True, "stage": 3, "activation_checkpointing": True, "micro_batch": fitting[-1],
                "max_micro_batch": fitting[-1], "estimate": est.row(),
                "note": f"micro-batch {configured_micro_batch} does not fit; use {fitting[-1]} "
                        f"with grad_accum x{math.ceil(configured_micro_batch / fitting[-1])}"}
    est = estimate(inputs, 3, 1, True)
    need = est.model_states + est.buffers + est.activations + CUDA_CONTEXT_BYTES
    return {"fits": False, "stage": 3, "activation_checkpointing": True, "micro_batch": 1,
            "max_micro_batch": 0, "estimate": est.row(),
            "note": f"does not fit even at ZeRO-3, micro-batch 1, checkpointing ({need / GIB:.1f} GiB "
                    f"> {inputs.gpu_bytes / GIB:.0f} GiB): add GPUs or offload (deepspeed.offload_params)"}


def deepspeed_reference(inputs: PlanInputs) -> dict:
    """DeepSpeed's own estimators, fed the same parameter counts (GPU bytes, no offload).

    `all_trainable_*`: the whole model (LM + prefix) as if every parameter trained: the case the
    estimators model. `frozen_lm_sharded`: ZeRO-3 with the optimizer offloaded, which leaves on
    the GPU only the sharded 16-bit params + gathered largest layer: a frozen LM's footprint
    (DeepSpeed counts 4 bytes for the gathered layer, we count 2: a frozen layer has no grad).
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    lm = inputs.lm
    total = lm.total_params + inputs.trainable_params + inputs.frozen_vision_params
    nodes, per_node = 1, inputs.gpus
    _, z3, _ = estimate_zero3_model_states_mem_needs(total, lm.largest_layer_params, per_node, nodes,
                                                     cpu_offload=False, cpu_offload_params=False)
    _, z2 = estimate_zero2_model_states_mem_needs(total, per_node, nodes, cpu_offload=False)
    _, frozen, largest = estimate_zero3_model_states_mem_needs(
        lm.total_params, lm.largest_layer_params, per_node, nodes, cpu_offload=True,
        cpu_offload_params=False)
    return {"all_trainable_zero3": z3, "all_trainable_zero2": z2, "frozen_lm_zero3": frozen,
            "frozen_lm_zero3_sharded": frozen - largest}


# ---------------------------------------------------------------------------------------------
# from a run config


def plan_inputs(cfg, gpus: int, seq_len: int = 0, gpu_mem_gib: float = 80.0, lm_path: str = "") -> PlanInputs:
    lm = lm_shape(lm_path or cfg.model.lm_path)
    trainable, frozen_vision, largest_prefix = prefix_param_counts(cfg, lm.hidden, lm.vocab)
    prompt_tokens = len(cfg.data.prompt.split()) + 1 if cfg.data.prompt else 0
    zero_extra = cfg.deepspeed.extra.get("zero_optimization", {})
    zero = dict(ZERO_DEFAULTS)
    zero.update(zero3_settings(lm, zero_extra))
    zero.update({k: v for k, v in zero_extra.items() if k in zero})
    return PlanInputs(
        lm=lm,
        trainable_params=trainable,
        frozen_vision_params=frozen_vision,
        gpus=gpus,
        seq_len=seq_len or cfg.model.prefix_length + prompt_tokens + cfg.data.max_text_len,
        attn=cfg.model.attn_implementation,
        param_bytes=2 if cfg.train.precision == "bf16" else 4,
        lm_trainable=cfg.model.train_lm,
        largest_prefix_layer=largest_prefix,
        zero=zero,
        gpu_bytes=gpu_mem_gib * GIB,
    )
