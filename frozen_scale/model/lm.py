"""Loading the language model (any transformers causal LM) and freezing it.

The LM and tokenizer come from a local folder, any fsspec URL (s3://, gs://, ...; copied once
into the node cache) or a Hugging Face Hub id (org/name[@revision]); see lm_source. What a
checkpoint records about the LM is `lm_summary`: its path and cheap identity (see lm_identity).
Under ZeRO-3 the caller keeps a `HfDeepSpeedConfig` alive while calling `load_lm`, so
transformers builds the model already partitioned (see frozen_scale.distributed).
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
    from transformers import AutoModelForCausalLM

    local = local_copy(path)
    try:
        return AutoModelForCausalLM.from_pretrained(local, dtype=dtype, attn_implementation=attn_implementation)
    except (ValueError, ImportError):
        # Architectures without SDPA support fall back to the eager attention.
        return AutoModelForCausalLM.from_pretrained(local, dtype=dtype, attn_implementation="eager")


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
