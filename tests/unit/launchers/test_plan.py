"""`frozen-scale plan`: parameter counts from a bare HF config, model-state memory against
DeepSpeed's own estimators, activation bytes against what autograd really saves, recommendations."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from frozen_scale.config import load_config
from launchers import cli, plan

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)
LLAMA_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                 num_key_value_heads=40, vocab_size=32000)
LLAMA_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=32000)


def llama_params(d: dict) -> int:
    """Closed form for an untied Llama: embeddings + lm_head + blocks + final norm."""
    h, inter, layers, vocab = d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"], d["vocab_size"]
    kv = h // d["num_attention_heads"] * d["num_key_value_heads"]
    block = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    return 2 * vocab * h + layers * block + h


def write_run(tmp_path, dims: dict, **sections) -> str:
    from transformers import LlamaConfig

    tmp_path.mkdir(parents=True, exist_ok=True)
    lm_dir = tmp_path / "lm"
    LlamaConfig(**dims).save_pretrained(lm_dir)  # config.json only: no weights anywhere
    data = {"model": {"lm_path": str(lm_dir)}, "train": {"precision": "bf16", "micro_batch_size": 8},
            "deepspeed": {"stage": 3}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("dims,billions", [(LLAMA_7B, 6.74), (LLAMA_13B, 13.0), (LLAMA_70B, 69.0)])
def test_param_count_from_config_alone(tmp_path, dims, billions):
    path = write_run(tmp_path, dims)
    shape = plan.lm_shape(load_config(path).model.lm_path)
    assert shape.total_params == llama_params(dims)
    assert shape.total_params / 1e9 == pytest.approx(billions, rel=0.01)
    assert shape.largest_layer_params == dims["vocab_size"] * dims["hidden_size"]
    assert shape.gated_mlp and shape.rms_norm
    assert shape.kv_dim == dims["hidden_size"] // dims["num_attention_heads"] * dims["num_key_value_heads"]


def test_7b_zero3_on_16_gpus_agrees_with_deepspeed_estimator(tmp_path):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cfg = load_config(write_run(tmp_path, LLAMA_7B))
    inputs = plan.plan_inputs(cfg, gpus=16)
    lm_params = llama_params(LLAMA_7B)  # DeepSpeed is fed our closed form, not the plan's own count
    largest = LLAMA_7B["vocab_size"] * LLAMA_7B["hidden_size"]

    # Like with like 1: every parameter trains (DeepSpeed's model). Same total, 2 nodes x 8 GPUs.
    _, ds_all, _ = estimate_zero3_model_states_mem_needs(
        lm_params + inputs.trainable_params, largest, num_gpus_per_node=8, num_nodes=2,
        cpu_offload=False, cpu_offload_params=False)
    ours_all = plan.estimate(dataclasses.replace(inputs, lm_trainable=True), 3, 8, False).model_states
    assert ours_all == pytest.approx(ds_all, rel=0.10)

    # Like with like 2: the frozen LM. With the optimizer offloaded DeepSpeed leaves on the GPU the
    # sharded 16-bit params plus the gathered largest layer (4 bytes/param: params + grads);
    # a frozen layer has no gradient, so the plan gathers 2 bytes/param.
    _, ds_frozen, ds_gathered = estimate_zero3_model_states_mem_needs(
        lm_params, largest, num_gpus_per_node=8, num_nodes=2, cpu_offload=True, cpu_offload_params=False)
    frozen = plan.estimate(inputs, 3, 8, False)
    assert frozen.lm_params - 2 * largest == pytest.approx(ds_frozen - ds_gathered, rel=0.10)
    assert frozen.lm_params == pytest.approx(ds_frozen - ds_gathered / 2, rel=0.01)
    # The point of Frozen: the LM's state is a small fraction of what training it would cost.
    assert frozen.model_states < 0.2 * ours_all
    # Only the prefix carries optimizer state: 18 bytes per trainable parameter over 16 GPUs.
    assert frozen.trainable_states == pytest.approx(
        18 * inputs.trainable_params / 16 + 4 * inputs.largest_prefix_layer, rel=1e-6)


def _saved_bytes(model, embeds, labels) -> int:
    """Bytes autograd keeps for backward (parameters excluded), each storage counted once."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(inputs_embeds=embeds, labels=labels, use_cache=False)
    return sum(seen.values())


@pytest.fixture(autouse=True)
def plain_linear(monkeypatch):
    """torch's own F.linear: a ZeRO-3 engine built earlier in this process (an in-process test)
    leaves DeepSpeed's memory-efficient linear installed (its documented behaviour, on by
    default), which saves the weight reference for backward and would change what is counted."""
    monkeypatch.setattr(torch.nn.functional, "linear", torch._C._nn.linear)


@pytest.mark.parametrize("frozen,attn,kv_heads", [(True, "sdpa", 2), (True, "eager", 4), (False, "sdpa", 4)])
def test_activation_bytes_match_autograd(tmp_path, frozen, attn, kv_heads):
    from transformers import AutoModelForCausalLM, LlamaConfig

    dims = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=kv_heads, vocab_size=300, max_position_embeddings=128)
    LlamaConfig(**dims).save_pretrained(tmp_path)
    shape = plan.lm_shape(str(tmp_path))
    batch, seq = 3, 40
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**dims, attn_implementation=attn)).to(torch.bfloat16)
    model.eval()
    model.requires_grad_(not frozen)
    embeds = torch.randn(batch, seq, 64, dtype=torch.bfloat16, requires_grad=True)
    measured = _saved_bytes(model, embeds, torch.randint(0, 300, (batch, seq)))

    inputs = plan.PlanInputs(lm=shape, trainable_params=0, frozen_vision_params=0, gpus=1, seq_len=seq,
                             attn=attn, param_bytes=2, lm_trainable=not frozen)
    predicted = plan.estimate(inputs, 0, batch, False).activations
    assert predicted == pytest.approx(measured, rel=0.10), (predicted, measured)


def test_checkpointing_keeps_block_inputs_only(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    dims = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                vocab_size=300, max_position_embeddings=128)
    LlamaConfig(**dims).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**dims)).to(torch.bfloat16)
    model.requires_grad_(False)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    embeds = torch.randn(2, 32, 64, dtype=torch.bfloat16, requires_grad=True)
    stored = _saved_bytes(model, embeds, torch.randint(0, 300, (2, 32)))
    shape = plan.lm_shape(str(tmp_path))
    inputs = plan.PlanInputs(lm=shape, trainable_params=0, frozen_vision_params=0, gpus=1, seq_len=32,
                             attn="sdpa", param_bytes=2)
    with_ckpt = plan.estimate(inputs, 0, 2, True).activations
    one_block = 2 * 32 * plan.block_activation_bytes_per_token(shape, "sdpa", 32, True)
    # the plan = what stays stored during forward + one block recomputed during backward
    assert with_ckpt - one_block == pytest.approx(stored, rel=0.10)
    assert with_ckpt < plan.estimate(inputs, 0, 2, False).activations


def test_recommendations(tmp_path):
    cfg = load_config(write_run(tmp_path, LLAMA_70B))
    on_8 = plan.recommend(plan.plan_inputs(cfg, gpus=8), 8)
    assert on_8["fits"] and on_8["stage"] == 3  # 138 GB of bf16 weights: only sharded
    on_1 = plan.recommend(plan.plan_inputs(cfg, gpus=1), 8)
    assert not on_1["fits"] and "offload" in on_1["note"]
    # 24 GB cards: 64 x 34 tokens of 80-layer activations (~45 GB) need checkpointing
    small = plan.recommend(plan.plan_inputs(cfg, gpus=64, gpu_mem_gib=24), 64)
    assert small["fits"] and small["stage"] == 3 and small["activation_checkpointing"] is True
    assert plan.estimate(plan.plan_inputs(cfg, gpus=64, gpu_mem_gib=24), 3, 64, False).fits is False
    # a frozen 7B (13.5 GB of bf16 weights) fits replicated on 80 GB: no sharding traffic needed
    cfg7 = load_config(write_run(tmp_path / "7b", LLAMA_7B))
    rec7 = plan.recommend(plan.plan_inputs(cfg7, gpus=16), 8)
    assert rec7["fits"] and rec7["stage"] == 0 and rec7["activation_checkpointing"] is False


def test_plan_cli_text_and_json(tmp_path, capsys):
    path = write_run(tmp_path, LLAMA_7B)
    assert cli.plan_main([path, "--nodes", "2", "--gpus-per-node", "8"]) == 0
    text = capsys.readouterr().out
    assert "6.74B params" in text and "recommendation: deepspeed.stage=" in text
    assert "DeepSpeed's estimators" in text
    assert cli.plan_main([path, "--nodes", "1", "--gpus-per-node", "1", "--gpu-mem-gib", "8", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["recommendation"]["fits"] is False
    assert len(out["estimates"]) == 8


LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=16,
                num_key_value_heads=16, vocab_size=39)


@pytest.mark.parametrize("extra", [{}, {"stage3_max_live_parameters": 10**7, "stage3_max_reuse_distance": 10**6}],
                         ids=["derived", "user-extra"])
def test_plan_reads_the_trainers_zero3_window(tmp_path, extra):
    from frozen_scale.distributed.engine import ds_config
    from frozen_scale.distributed.zero3 import ZERO3_KEYS
    from frozen_scale.model.shape import lm_shape

    path = write_run(tmp_path, LLAMA_1B, train={"precision": "bf16", "micro_batch_size": 2},
                     deepspeed={"stage": 3, "extra": {"zero_optimization": extra}})
    cfg = load_config(path)
    inputs = plan.plan_inputs(cfg, gpus=2)
    ds = ds_config(cfg, 2, lm_shape(cfg.model.lm_path))["zero_optimization"]
    assert {k: inputs.zero[k] for k in ZERO3_KEYS} == {k: ds[k] for k in ZERO3_KEYS}  # one source of truth
    lm = inputs.lm
    live, reuse = ds["stage3_max_live_parameters"], ds["stage3_max_reuse_distance"]
    window = plan.gathered_window_params(lm, inputs.zero)
    assert window == max(live, reuse) + lm.largest_layer_params
    est = plan.estimate(inputs, 3, 2, False)
    # the gathered window beyond the largest layer (already in the LM's model states), 2 bytes a param
    grad_bucket = 2 * min(inputs.zero["reduce_bucket_size"], inputs.trainable_params)
    assert est.buffers == pytest.approx(2 * (window - lm.largest_layer_params) + grad_bucket)
    assert est.lm_params == pytest.approx(2 * lm.total_params / 2 + 2 * lm.largest_layer_params)


def test_plan_window_with_deepspeed_defaults_is_the_whole_1b_lm(tmp_path):
    from frozen_scale.distributed.zero3 import DEEPSPEED_DEFAULTS

    cfg = load_config(write_run(tmp_path, LLAMA_1B, deepspeed={
        "stage": 3, "extra": {"zero_optimization": dict(DEEPSPEED_DEFAULTS)}}))
    inputs = plan.plan_inputs(cfg, gpus=2)
    # 1e9 parameters ahead plus the module running: all but 1.6% of a 1.03B LM
    assert plan.gathered_window_params(inputs.lm, inputs.zero) >= 0.98 * inputs.lm.total_params
    derived = plan.plan_inputs(load_config(write_run(tmp_path / "d", LLAMA_1B)), gpus=2)
    # derived: a block plus the largest layer, 6% of the LM
    assert plan.gathered_window_params(derived.lm, derived.zero) == pytest.approx(
        derived.lm.block_params + derived.lm.largest_layer_params)
    assert plan.gathered_window_params(derived.lm, derived.zero) < 0.1 * derived.lm.total_params


def test_loading_peak_counts_one_checkpoint_shard_beyond_the_partition(tmp_path):
    cfg = load_config(write_run(tmp_path, LLAMA_1B))
    lm_dir = tmp_path / "lm"
    config_only = plan.plan_inputs(cfg, gpus=4)
    whole = 2 * config_only.lm.total_params
    largest = 2 * config_only.lm.largest_layer_params
    # no weights beside the config: the whole LM is assumed to be one shard
    assert config_only.lm.largest_shard_bytes == 0
    assert plan.loading_peak(config_only, 3, on_cpu=True) == pytest.approx(whole / 4 + largest + whole)
    for name, size in (("model-00001-of-00002.safetensors", 3000), ("model-00002-of-00002.safetensors", 1000)):
        (lm_dir / name).write_bytes(b"\0" * size)
    inputs = plan.plan_inputs(cfg, gpus=4)
    assert inputs.lm.largest_shard_bytes == 3000 and inputs.lm.shard_count == 2
    assert plan.loading_peak(inputs, 3, on_cpu=True) == pytest.approx(whole / 4 + largest + 3000)
    assert plan.loading_peak(inputs, 3) == pytest.approx(whole / 4 + largest)  # the shard is host memory
    assert plan.loading_peak(inputs, 2) == whole
    est = plan.estimate(inputs, 3, 8, False)
    assert est.on_cpu == pytest.approx(est.total - plan.CUDA_CONTEXT_BYTES + plan.HOST_RUNTIME_BYTES)
