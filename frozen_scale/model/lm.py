"""Loading the language model (any transformers causal LM) and freezing it.

The LM and tokenizer come from a local folder, any fsspec URL (s3://, gs://, ...; copied once
into the node cache) or a Hugging Face Hub id (org/name[@revision]); see lm_source. What a
checkpoint records about the LM is `lm_summary`: its path and cheap identity (see lm_identity).
Under ZeRO-3 the caller keeps a `HfDeepSpeedConfig` alive while calling `load_lm`, so
transformers builds the model already partitioned (see frozen_scale.distributed), and a sharded
checkpoint is read one shard at a time (`_load_zero3_by_shard`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from frozen_scale.model.lm_identity import content_hash, lm_identity  # noqa: F401  (re-exported)
from frozen_scale.model.lm_source import ModelNotFoundError, local_copy  # noqa: F401  (re-exported)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_copy(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_lm(path: str, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> nn.Module:
    """Load a causal LM (partitioned on load when a ZeRO-3 HfDeepSpeedConfig is alive)."""
    local = local_copy(path)
    try:
        return _load(local, dtype, attn_implementation)
    except (ValueError, ImportError):
        # Architectures without SDPA support fall back to the eager attention.
        return _load(local, dtype, "eager")


def _load(local: str, dtype: torch.dtype, attn_implementation: str) -> nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled() and _safetensors_shards(local):
        model = _load_zero3_by_shard(local, dtype, attn_implementation)
        if model is not None:
            return model
    return AutoModelForCausalLM.from_pretrained(local, dtype=dtype, attn_implementation=attn_implementation)


def _safetensors_shards(local: str) -> list[str]:
    """The files of a sharded safetensors checkpoint, in order ([] when it is not sharded)."""
    index = Path(local, "model.safetensors.index.json")
    if not index.exists():
        return []
    weight_map = json.loads(index.read_text()).get("weight_map", {})
    return [str(Path(local, name)) for name in sorted(set(weight_map.values()))]


def _load_zero3_by_shard(local: str, dtype: torch.dtype, attn_implementation: str) -> nn.Module | None:
    """A sharded checkpoint into a ZeRO-3 partitioned model, one shard at a time.

    transformers 5's `from_pretrained` under ZeRO-3 maps every shard on rank 0 before copying any
    of it into the partitioned model, so rank 0 ends up holding the whole checkpoint beside its
    partition. Here the model is built the way `from_pretrained` builds it (partitioned at
    construction, no random init), then each shard is mapped, copied in module by module (each
    module's parameters gathered, written on rank 0, re-partitioned: transformers' own ZeRO-3
    copy) and unmapped before the next: rank 0 holds at most one shard beyond its partition, the
    other ranks only the module being written. Returns None (the caller falls back to
    `from_pretrained`) where this transformers version or the checkpoint's key names differ from
    what this path expects.
    """
    import inspect

    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.deepspeed import _load_state_dict_into_zero3_model
    from transformers.modeling_utils import load_state_dict
    from transformers.models.auto.auto_factory import _get_model_class
    from transformers.utils import ContextManagers

    config = AutoConfig.from_pretrained(local)
    cls = _get_model_class(config, AutoModelForCausalLM._model_mapping)
    params = inspect.signature(cls.get_init_context).parameters
    if list(params)[:3] != ["dtype", "is_quantized", "_is_ds_init_called"]:
        return None
    config.dtype = dtype
    config._attn_implementation = attn_implementation
    with ContextManagers(cls.get_init_context(dtype, False, False, None)):
        model = cls(config)
    files = _safetensors_shards(local)
    if _checkpoint_keys_missing(model, files):
        return None
    on_rank0 = dist.get_rank() == 0
    for file in files:
        state = load_state_dict(file, map_location="cpu" if on_rank0 else "meta")  # mapped, not read
        errors, _ = _load_state_dict_into_zero3_model(model, state)
        del state  # unmaps the shard
        if errors:  # not a ValueError: load_lm retries those with eager attention
            raise RuntimeError(f"loading {file} into the partitioned LM: {'; '.join(errors)}")
    model.tie_weights()
    try:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(local)
    except OSError:  # no generation_config.json: keep the one derived from the model config
        pass
    return model.eval()


def _checkpoint_keys_missing(model: nn.Module, files: list[str]) -> set[str]:
    """Model weights that no shard holds (tied copies excepted), by the names
    `_load_state_dict_into_zero3_model` matches (with or without the base-model prefix)."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in files:
        with safe_open(file, framework="pt") as handle:
            names.update(handle.keys())
    prefix = getattr(model, "base_model_prefix", "")
    names |= {f"{prefix}.{k}" for k in names}
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    return set(model.state_dict()) - names - tied


def freeze(lm: nn.Module) -> nn.Module:
    """requires_grad=False on every parameter and eval mode (no dropout)."""
    lm.requires_grad_(False)
    lm.eval()
    return lm


def lm_summary(path: str, local_dir: str | None = None) -> dict:
    """What a checkpoint or export records about the LM it was trained against: the path as
    given, the cheap identity (read from `local_dir`, the local copy, when given) and its shape."""
    local = local_dir or local_copy(path)
    cfg = json.loads(Path(local, "config.json").read_text())
    return {
        "path": path,
        "identity": lm_identity(local),
        "model_type": cfg.get("model_type"),
        "hidden_size": cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model"),
        "vocab_size": cfg.get("vocab_size"),
    }


def enable_activation_checkpointing(lm: nn.Module) -> int:
    """Non-reentrant activation checkpointing through the LM's decoder layers while it stays in
    eval mode: transformers checkpoints a layer only when that layer's `training` flag is set,
    so the flag is set on the decoder-layer modules alone; their dropout-bearing submodules stay
    in eval mode. Returns the number of layers checkpointed."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.training = True
    return len(layers)
