"""Prefix mappers: one image feature -> k vectors in the LM's input-embedding space.

- PrefixMapper (`model.prefix_kind=continuous`, the paper's): free vectors, LayerNorm'd and scaled
  to the LM's token-embedding norm.
- LexicalPrefixMapper (`model.prefix_kind=lexical`): each slot is a softmax mixture of the LM's own
  (frozen) token embeddings, so a prefix vector can only be a point of the convex hull of the
  vocabulary: what the image "writes" is readable as words (SPAE / LQAE put images in a frozen
  LM's token space the same way). The mixture is taken through the LM's embedding module (one
  pass over the vocabulary per forward), so it works with a partitioned (ZeRO-3) embedding.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PrefixMapper(nn.Module):
    """Linear -> k x d, LayerNorm, then a learned scale started at the LM's embedding norm,
    so the prefix enters the LM at the size its own token embeddings have."""

    def __init__(self, in_dim: int, k: int, lm_dim: int, embedding_norm: float):
        super().__init__()
        self.k, self.lm_dim = k, lm_dim
        self.proj = nn.Sequential(nn.Linear(in_dim, in_dim), nn.SiLU(), nn.Linear(in_dim, k * lm_dim))
        self.norm = nn.LayerNorm(lm_dim)
        # LayerNorm output has norm ~sqrt(d); scale it to the mean token-embedding norm.
        self.scale = nn.Parameter(torch.full((1,), float(embedding_norm) / math.sqrt(lm_dim)))

    def forward(self, features, embeddings: nn.Module | None = None):
        x = self.proj(features).view(features.shape[0], self.k, self.lm_dim)
        return self.norm(x) * self.scale


class LexicalPrefixMapper(nn.Module):
    """Linear -> k x vocabulary logits -> softmax -> mixture of the LM's token embeddings.
    Token ids in `blocked_ids` (the LM's special tokens) get no weight: an image cannot write an
    end of text."""

    def __init__(self, in_dim: int, k: int, vocab_size: int, blocked_ids=()):
        super().__init__()
        self.k, self.vocab_size = k, vocab_size
        self.proj = nn.Sequential(nn.Linear(in_dim, in_dim), nn.SiLU(), nn.Linear(in_dim, k * vocab_size))
        blocked = torch.zeros(vocab_size, dtype=torch.bool)
        blocked[[i for i in blocked_ids if i is not None and 0 <= i < vocab_size]] = True
        self.register_buffer("blocked", blocked, persistent=False)

    def token_weights(self, features) -> torch.Tensor:
        """[N, D] -> [N, k, V]: each slot's weights over the vocabulary (rows sum to 1)."""
        logits = self.proj(features).view(features.shape[0], self.k, self.vocab_size)
        return logits.masked_fill(self.blocked, float("-inf")).softmax(-1)

    def forward(self, features, embeddings: nn.Module | None = None):
        if embeddings is None:
            raise ValueError("a lexical prefix needs the LM's input-embedding module")
        weights = self.token_weights(features)
        ids = torch.arange(self.vocab_size, device=features.device)
        table = embeddings(ids)  # through the module: gathered under ZeRO-3
        return weights.to(table.dtype) @ table
