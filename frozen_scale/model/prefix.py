"""The prefix mapper: one image feature -> k vectors in the LM's input-embedding space."""

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

    def forward(self, features):
        x = self.proj(features).view(features.shape[0], self.k, self.lm_dim)
        return self.norm(x) * self.scale
