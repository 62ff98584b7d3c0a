"""Where each generated token looks: the LM's attention on every image's prefix slots vs the text.

For the query that produced generated token t, in layer l, the attention weights are averaged
over heads and summed over each image's k slot positions and over all other (text) positions:
one row of shares (image 1, ..., image n, text) that sums to 1, since each attention row is a
softmax over the positions it may see. The weights come from one teacher-forced forward pass
over the prompt and the generated tokens (the same queries generation ran, causal masking keeps
later tokens out), with the LM's eager attention: the fused kernels return no weights.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from frozen_scale.data.prompts import image_slot_runs, position_ids


@dataclass
class AttentionShares:
    tokens: list[str]
    """The generated tokens, decoded one by one (rows)."""
    token_ids: list[int]
    columns: list[str]
    """"image 1", ..., "image n", "text"."""
    per_layer: torch.Tensor
    """[tokens, layers, images + 1]: each row sums to 1."""
    slots: list[list[int]]
    """Positions of each image's k prefix slots in the sequence."""
    queries: list[int]
    """Position of the query that produced each generated token."""

    @property
    def mean(self) -> torch.Tensor:
        """[tokens, images + 1]: the shares averaged over layers."""
        return self.per_layer.mean(1)


def shares_over_slots(attentions, queries: list[int], slots: list[list[int]]) -> torch.Tensor:
    """[len(queries), layers, len(slots) + 1] from per-layer weights [1, heads, Q, K]: the
    heads-averaged weight each query puts on each image's slots, and on every other position."""
    width = attentions[0].shape[-1]
    text = torch.ones(width, dtype=torch.bool)
    for run in slots:
        text[run] = False
    per_layer = []
    for layer in attentions:
        rows = layer[0].float().mean(0)[queries].cpu()  # [T, K]
        columns = [rows[:, run].sum(-1) for run in slots] + [rows[:, text].sum(-1)]
        per_layer.append(torch.stack(columns, -1))
    return torch.stack(per_layer, 1)


@torch.no_grad()
def lm_attentions(lm: nn.Module, inputs_embeds: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Every layer's attention weights [1, heads, Q, K] for one unpadded sequence (its blank word
    slots masked out by `attention_mask`, when given), with the eager attention for this pass
    (the LM's own implementation is put back after)."""
    before = getattr(lm.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(lm, "set_attn_implementation")
    if switch:
        lm.set_attn_implementation("eager")
    try:
        mask = attention_mask
        if mask is None:
            mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        extra = {}
        if "position_ids" in inspect.signature(lm.forward).parameters:  # blank slots take no position
            extra["position_ids"] = position_ids(mask)
        out = lm(inputs_embeds=inputs_embeds, attention_mask=mask, output_attentions=True, use_cache=False, **extra)
    finally:
        if switch:
            lm.set_attn_implementation(before)
    if not out.attentions or any(a is None for a in out.attentions):
        raise ValueError(f"{type(lm).__name__} returns no attention weights (attention '{before}')")
    return out.attentions


@torch.no_grad()
def measure(model, tokenizer, prompt_ids: list[int], new_ids: list[int], pixels) -> AttentionShares:
    """The shares of every generated token (`new_ids`, the continuation of `prompt_ids`, whose
    images are `pixels` [N, 3, S, S] in slot order) for a FrozenVLM `model`."""
    if not new_ids:
        raise ValueError("nothing was generated")
    device = next(model.prefix.parameters()).device
    ids = torch.tensor([prompt_ids + new_ids[:-1]], dtype=torch.long, device=device)
    embeds, mask, _ = model.embed_images(ids, None if pixels is None else pixels.to(device), torch.ones_like(ids))
    attentions = lm_attentions(model.lm, embeds, mask)
    slots = image_slot_runs(prompt_ids, model.k)
    queries = list(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(new_ids)))
    return AttentionShares(
        tokens=[tokenizer.decode([t]) for t in new_ids], token_ids=list(new_ids),
        columns=[f"image {i + 1}" for i in range(len(slots))] + ["text"],
        per_layer=shares_over_slots(attentions, queries, slots),
        slots=slots, queries=queries,
    )
