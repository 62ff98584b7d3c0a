"""ZeRO-3's gathered window is sized from the LM (a user's deepspeed.extra still wins), the plan
reads the same numbers, and a sharded checkpoint loads under ZeRO-3 one shard at a time into
exactly the weights a plain load gives."""

from __future__ import annotations

import json

import pytest

from frozen_scale.config import load_config
from frozen_scale.distributed.engine import ds_config
from frozen_scale.distributed.zero3 import DEEPSPEED_DEFAULTS, ZERO3_KEYS, effective_zero3, zero3_window
from frozen_scale.model.shape import lm_shape
from tests.support.dist_util import REPO, check, torchrun

LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=16,
                num_key_value_heads=16, vocab_size=32000)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)


def config_only(tmp_path, name: str, dims: dict) -> str:
    from transformers import LlamaConfig

    folder = tmp_path / name
    LlamaConfig(**dims, tie_word_embeddings=False).save_pretrained(folder)  # config.json only
    return str(folder)


def block_params(d: dict) -> int:
    h, inter = d["hidden_size"], d["intermediate_size"]
    kv = h // d["num_attention_heads"] * d["num_key_value_heads"]
    return 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h


def test_window_scales_with_the_lm(tmp_path):
    small, big = (lm_shape(config_only(tmp_path, n, d)) for n, d in (("1b", LLAMA_1B), ("7b", LLAMA_7B)))
    assert small.block_params == block_params(LLAMA_1B) and big.block_params == block_params(LLAMA_7B)
    for shape, dims in ((small, LLAMA_1B), (big, LLAMA_7B)):
        w = zero3_window(shape.block_params, shape.largest_layer_params, shape.hidden)
        unit = max(block_params(dims), dims["vocab_size"] * dims["hidden_size"])  # a block or the embedding
        assert w["stage3_prefetch_bucket_size"] == w["stage3_max_reuse_distance"] == unit
        assert w["stage3_max_live_parameters"] == unit
        # vectors (norm weights) persist whole, every matrix is partitioned
        assert shape.hidden <= w["stage3_param_persistence_threshold"] < shape.hidden * shape.head_dim
        # a bounded window: a few percent of the LM, not DeepSpeed's 1e9 (the whole of a 1B LM)
        assert w["stage3_max_live_parameters"] < 0.2 * shape.total_params
    w_small = zero3_window(small.block_params, small.largest_layer_params, small.hidden)
    w_big = zero3_window(big.block_params, big.largest_layer_params, big.hidden)
    # 1B: the 65.5M-parameter embedding is wider than a 51.4M block; 7B: the 202M block is
    assert w_big["stage3_max_live_parameters"] / w_small["stage3_max_live_parameters"] == pytest.approx(
        block_params(LLAMA_7B) / (LLAMA_1B["vocab_size"] * LLAMA_1B["hidden_size"]))
    # a tiny LM's matrices fall under DeepSpeed's 1e5 default; derived, they are partitioned too
    tiny = zero3_window(block_params=50_000, largest_layer_params=2_000, hidden=64)
    assert tiny["stage3_param_persistence_threshold"] == 64


def test_ds_config_takes_the_window_and_user_extra_wins(tmp_path):
    shape = lm_shape(config_only(tmp_path, "1b", LLAMA_1B))
    derived = zero3_window(shape.block_params, shape.largest_layer_params, shape.hidden)
    cfg = load_config(None, ["deepspeed.stage=3"])
    zero = ds_config(cfg, 2, shape)["zero_optimization"]
    assert {k: zero[k] for k in ZERO3_KEYS} == derived
    without_shape = ds_config(cfg, 2)["zero_optimization"]
    assert not any(k in without_shape for k in ZERO3_KEYS)  # DeepSpeed's defaults apply
    user = load_config(None, ["deepspeed.stage=3", "deepspeed.extra={zero_optimization: "
                              "{stage3_max_live_parameters: 123, stage3_param_persistence_threshold: 0}}"])
    zero = ds_config(user, 2, shape)["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == 123 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["stage3_max_reuse_distance"] == derived["stage3_max_reuse_distance"]
    assert effective_zero3(derived, user.deepspeed.extra["zero_optimization"]) == {k: zero[k] for k in ZERO3_KEYS}
    # below ZeRO-3 there is no window to size
    assert not any(k in ds_config(load_config(None, ["deepspeed.stage=2"]), 2, shape)["zero_optimization"]
                   for k in ZERO3_KEYS)
    assert effective_zero3(None, None) == DEEPSPEED_DEFAULTS


def save_sharded_lm(out, tie: bool):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from frozen_scale.world import text

    tok = text.build_tokenizer()
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=64,
                      tie_word_embeddings=tie, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(out), max_shard_size="60KB")
    tok.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_sharded_checkpoint_loads_partitioned_to_the_same_weights(tmp_path, tie):
    lm_dir = save_sharded_lm(tmp_path / "lm", tie)
    shards = json.loads((lm_dir / "model.safetensors.index.json").read_text())["weight_map"].values()
    assert len(set(shards)) >= 3
    out = tmp_path / "result"
    check(torchrun(2, [str(REPO / "tests" / "support" / "zero3_load_worker.py"), str(lm_dir), str(out)]))
    for rank in (0, 1):
        r = json.loads((tmp_path / f"result.rank{rank}.json").read_text())
        assert r["diffs"] and max(r["diffs"].values()) == 0.0, r["diffs"]
        assert r["partitioned"], "the LM was not partitioned"
        assert r["tied"] == r["plain_tied"] == tie
        assert r["training"] is False and r["plain_logits_finite"]
