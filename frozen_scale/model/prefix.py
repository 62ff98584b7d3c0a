"""Prefix mappers: one image feature -> k vectors in the LM's input-embedding space.

- PrefixMapper (`model.prefix_kind=continuous`, the paper's): free vectors, LayerNorm'd and scaled
  to the LM's token-embedding norm.
- LexicalPrefixMapper (`model.prefix_kind=lexical` / `lexical_hard`): each slot is a softmax
  mixture of the LM's own (frozen) token embeddings, so a prefix vector can only be a point of the
  convex hull of the vocabulary, or (hard) exactly one token's embedding: what the image "writes"
  is readable as words (SPAE / LQAE put images in a frozen LM's token space the same way). The
  vocabulary is read through the LM's embedding module (one pass over it per forward), so it works
  with a partitioned (ZeRO-3) embedding. What it measured on the built-in world: docs/world.md.
- WordPrefixMapper (`model.prefix_kind=words`): exactly the LM's tokens, any of whose slots may
  write the LM's pad token, which the model masks out of attention and positions: the image is a
  sentence of variable length, read by the LM exactly as the same words written. Trained with a
  slot loss against the caption's own words as well (`model.prefix_target_weight`).
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
    """Free vectors as PrefixMapper makes them, snapped to the LM's vocabulary: each slot's weights
    over the tokens are a softmax of its cosine similarity to every token embedding, times a learned
    sharpness (started at `sharpness`). Soft (the default): the slot is that mixture of token
    embeddings. hard: the slot is its most similar token's embedding, exactly, and the gradient
    passes straight through to the free vector (VQ-VAE's straight-through estimator), so the LM
    only ever reads its own tokens. Token ids in `blocked_ids` (the LM's special tokens) are never
    chosen: an image cannot write an end of text."""

    def __init__(self, in_dim: int, k: int, lm_dim: int, vocab_size: int, embedding_norm: float = 1.0,
                 blocked_ids=(), hard: bool = False, sharpness: float = 10.0):
        super().__init__()
        self.k, self.vocab_size, self.hard = k, vocab_size, hard
        self.free = PrefixMapper(in_dim, k, lm_dim, embedding_norm)
        self.log_sharpness = nn.Parameter(torch.full((1,), math.log(sharpness)))
        blocked = torch.zeros(vocab_size, dtype=torch.bool)
        blocked[[i for i in blocked_ids if i is not None and 0 <= i < vocab_size]] = True
        self.register_buffer("blocked", blocked, persistent=False)

    @staticmethod
    def vocabulary(embeddings: nn.Module, device) -> torch.Tensor:
        """[V, d]: every token's embedding, through the module (gathered under ZeRO-3)."""
        return embeddings(torch.arange(embeddings.num_embeddings, device=device))

    def _logits(self, free: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.functional.normalize(free, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
        return (cos * self.log_sharpness.exp()).masked_fill(self.blocked, float("-inf"))

    def _snap(self, features, embeddings: nn.Module):
        """(free vectors [N, k, d], the vocabulary [V, d], logits [N, k, V])."""
        table = self.vocabulary(embeddings, features.device)
        free = self.free(features).to(table.dtype)
        return free, table, self._logits(free, table)

    def token_weights(self, features, embeddings: nn.Module) -> torch.Tensor:
        """[N, D] -> [N, k, V]: each slot's weights over the vocabulary (rows sum to 1; hard: the
        weights a soft prefix would use, whose argmax is the token written)."""
        return self._snap(features, embeddings)[2].softmax(-1)

    def forward(self, features, embeddings: nn.Module | None = None):
        if embeddings is None:
            raise ValueError("a lexical prefix needs the LM's input-embedding module")
        free, table, logits = self._snap(features, embeddings)
        weights = logits.softmax(-1)
        if not self.hard:
            return weights @ table
        tokens = table[weights.argmax(-1)]
        return tokens + (free - free.detach())  # exactly the tokens; the gradient goes to free


class WordPrefixMapper(LexicalPrefixMapper):
    """A hard lexical prefix that may write fewer than k words: a slot writing `blank_id` (the LM's
    pad token) is dropped by the model (`FrozenVLM.embed_images` masks it out of attention and
    position ids), so an image writes a sentence of 1..k words. `write` returns the slots' logits
    over the vocabulary too (cosine x sharpness), which a slot loss trains against the caption's
    words padded with `blank_id`."""

    def __init__(self, in_dim: int, k: int, lm_dim: int, vocab_size: int, blank_id: int,
                 embedding_norm: float = 1.0, blocked_ids=(), sharpness: float = 10.0):
        blocked = [i for i in blocked_ids if i is not None and i != blank_id]
        super().__init__(in_dim, k, lm_dim, vocab_size, embedding_norm, blocked, hard=True, sharpness=sharpness)
        self.blank_id = int(blank_id)

    def write(self, features, embeddings: nn.Module):
        """(vectors [N, k, d]: exactly the written tokens' embeddings, with the gradient of the
        softmax mixture (straight-through: the LM's loss reaches the writer through its weights over
        the vocabulary, not as a free vector); token ids [N, k], blank_id where a slot writes
        nothing; logits [N, k, V])."""
        _, table, logits = self._snap(features, embeddings)
        ids = logits.argmax(-1)
        soft = logits.softmax(-1) @ table
        return table[ids] + (soft - soft.detach()), ids, logits

    def forward(self, features, embeddings: nn.Module | None = None):
        if embeddings is None:
            raise ValueError("a word prefix needs the LM's input-embedding module")
        return self.write(features, embeddings)[0]
