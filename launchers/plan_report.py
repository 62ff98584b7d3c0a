"""`frozen-scale plan`'s report: the plan's inputs, a table of per-GPU memory per ZeRO stage and
activation checkpointing, the ZeRO-3 window, the recommendation, and DeepSpeed's own estimators
beside the plan's figures."""

from __future__ import annotations

import dataclasses

from launchers.plan import (CUDA_CONTEXT_BYTES, GIB, PlanInputs, checkpoint_shard_bytes, estimate,
                            gathered_window_params, loading_peak, micro_batch_candidates)


def _gib(b: float) -> str:
    return f"{b / GIB:8.2f}"


def format_plan(inputs: PlanInputs, cfg_stage: int, cfg_micro_batch: int, cfg_ckpt: bool,
                rec: dict, reference: dict | None) -> str:
    lines = _inputs_lines(inputs) + _table_lines(inputs, cfg_stage, cfg_micro_batch, cfg_ckpt)
    if cfg_stage == 3:
        lines += _zero3_lines(inputs)
    lines += [""] + _recommendation_lines(rec, cfg_micro_batch)
    if reference:
        lines += _reference_lines(inputs, reference, cfg_micro_batch)
    return "\n".join(lines)


def _inputs_lines(inputs: PlanInputs) -> list[str]:
    lm = inputs.lm
    return [
        f"LM: {lm.model_type}, {lm.total_params / 1e9:.2f}B params ({lm.layers} layers, hidden "
        f"{lm.hidden}, largest layer {lm.largest_layer_params / 1e6:.0f}M), "
        f"{'TRAINED' if inputs.lm_trainable else 'frozen'}",
        f"trainable (prefix): {inputs.trainable_params / 1e6:.2f}M params; frozen vision: "
        f"{inputs.frozen_vision_params / 1e6:.2f}M",
        f"GPUs: {inputs.gpus} x {inputs.gpu_bytes / GIB:.0f} GiB; sequence {inputs.seq_len} tokens; "
        f"{'bf16' if inputs.param_bytes == 2 else 'fp32'}; attention {inputs.attn}",
        *([] if lm.gated_mlp and lm.rms_norm else
          ["(activations itemised for Llama-style blocks; approximate for this architecture)"]),
        "",
    ]


def _table_lines(inputs: PlanInputs, cfg_stage: int, cfg_micro_batch: int, cfg_ckpt: bool) -> list[str]:
    g = _gib
    lines = ["per-GPU GiB   stage  mb  ckpt   LM params  trainable  activations  buffers     total  fits"]
    for stage in (0, 1, 2, 3):
        for ckpt in (False, True):
            e = estimate(inputs, stage, cfg_micro_batch, ckpt)
            mark = " <- config" if (stage, ckpt) == (cfg_stage, cfg_ckpt) else ""
            lines.append(
                f"{'':13} {stage:>5} {cfg_micro_batch:>3}  {'yes' if ckpt else 'no':>4}  {g(e.lm_params)}   "
                f"{g(e.trainable_states)}     {g(e.activations)} {g(e.buffers)}  {g(e.total)}  "
                f"{'yes' if e.fits else 'NO'}{mark}")
    lines.append(f"(totals include {CUDA_CONTEXT_BYTES / GIB:.0f} GiB for the CUDA context and workspaces)")
    return lines


def _zero3_lines(inputs: PlanInputs) -> list[str]:
    lm, z = inputs.lm, inputs.zero
    window = gathered_window_params(lm, z)
    return [
        f"ZeRO-3 window: up to {window / 1e6:.0f}M LM params gathered at once "
        f"({inputs.param_bytes * window / GIB:.2f} GiB): live {z['stage3_max_live_parameters']:.3g}, "
        f"reuse distance {z['stage3_max_reuse_distance']:.3g},",
        f"  prefetch {z['stage3_prefetch_bucket_size']:.3g}, persistence threshold "
        f"{z['stage3_param_persistence_threshold']:.3g} (sized from the LM unless deepspeed.extra sets them)",
        f"loading, rank 0: {loading_peak(inputs, 3) / GIB:.2f} GiB on the GPU, plus one checkpoint "
        f"shard mapped in host memory ({checkpoint_shard_bytes(inputs) / GIB:.2f} GiB"
        f"{'' if lm.largest_shard_bytes else ': no weights here, so the whole LM'})",
    ]


def _recommendation_lines(rec: dict, cfg_micro_batch: int) -> list[str]:
    if rec["fits"]:
        more = " or more" if rec["max_micro_batch"] == micro_batch_candidates(cfg_micro_batch)[-1] else ""
        lines = [f"recommendation: deepspeed.stage={rec['stage']} train.micro_batch_size={rec['micro_batch']} "
                 f"model.activation_checkpointing={str(rec['activation_checkpointing']).lower()} "
                 f"(largest micro-batch that fits: {rec['max_micro_batch']}{more})"]
    else:
        lines = ["recommendation: DOES NOT FIT"]
    return lines + (["  " + rec["note"]] if rec.get("note") else [])


def _reference_lines(inputs: PlanInputs, reference: dict, cfg_micro_batch: int) -> list[str]:
    g, lm = _gib, inputs.lm
    all_trainable = estimate(dataclasses.replace(inputs, lm_trainable=True), 3, cfg_micro_batch, False)
    frozen = estimate(dataclasses.replace(inputs, lm_trainable=False), 3, cfg_micro_batch, False)
    return [
        "",
        "DeepSpeed's estimators, same parameter counts (model states, GiB per GPU):",
        f"  all params trainable, ZeRO-3: deepspeed {g(reference['all_trainable_zero3'])}   "
        f"plan {g(all_trainable.model_states)}",
        f"  frozen LM, ZeRO-3 (sharded 16-bit params): deepspeed "
        f"{g(reference['frozen_lm_zero3_sharded'])}   plan "
        f"{g(frozen.lm_params - inputs.param_bytes * lm.largest_layer_params)}",
        "  (DeepSpeed's ZeRO-3 estimator assumes every parameter trains; with the optimizer offloaded",
        "  it leaves just the sharded 16-bit params: a frozen LM's state. It adds 4 bytes x the",
        "  largest layer gathered; the plan counts 2: a frozen layer has no gradient.)",
    ]
