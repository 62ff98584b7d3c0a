"""The built-in world's sections of a run config: which scenes (`world`) and how its tiny LM is
pretrained (`lm_pretrain`, step 1 of the paper on the world). Each checks its own values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from frozen_scale.config.errors import ConfigError

MIN_POSITIONS = 96
"""The shortest position table the world's LM may have: its 2-shot prompts are that long."""


@dataclass
class WorldConfig:
    """The built-in synthetic shapes world (used by the demo and tests)."""

    seed: int = 0
    """Seed of every scene, corpus and episode drawn (and of the world LM's initialisation)."""
    num_train: int = 20000
    """Training scenes written as shards."""
    num_eval: int = 500
    """Held-out scenes available to evaluation."""
    samples_per_shard: int = 2000
    """Scenes per shard of the training shards."""


@dataclass
class LMPretrainConfig:
    """Step 1 of the paper on the built-in world: pretrain a tiny causal LM on its text."""

    arch: Literal["gpt2", "llama", "gpt_neox", "opt"] = "gpt2"
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-3
    seq_len: int = 48
    n_positions: int = 0
    """The LM's position table (learned positions: the longest prompt it can read); 0: max(64,
    2 * seq_len). The table's size is part of the LM's random initialisation, which decides the
    naming curriculum's phase change (docs/world.md)."""
    num_documents: int = 30000
    copy_fraction: float = 0.5
    """Fraction of documents that repeat their caption ('caption. caption.'), which teaches the
    LM to copy from context: the ability a prefix steers (docs/world.md)."""
    naming_fraction: float = 0.0
    """Fraction of documents that are naming episodes ('a red circle . this is a dax . ...'), the
    in-context naming the few-shot and binding evaluations probe; adds the paper's nonsense words
    to the vocabulary. 0 (the demo) leaves the corpus and vocabulary as they were."""
    naming_steps: int = 0
    """A curriculum: the first naming_steps steps draw naming documents only, the rest the mixed
    corpus: how a tiny LM learns in-context naming, which a mixed corpus alone does not teach it
    (docs/world.md)."""
    continue_steps: int = 0
    """After the `steps` of the one-cycle schedule, this many more steps on the mixed corpus under a
    new one-cycle schedule peaking at continue_lr: more mixed text (n-shot QA, copying) without
    changing the LR of the steps before, on which the naming curriculum's phase change depends."""
    continue_lr: float = 5e-4
    pack: Literal["none", "mixed", "all"] = "none"
    """Pack documents back to back into full seq_len rows (each after an end-of-text token, a
    document cut at a row's edge goes on in the next row), as real LMs are pretrained, so that every
    kind of text stands at every position: "all" every row, "mixed" the mixed corpus after the
    naming curriculum (its rows stay one naming document each, from position 0). "none": one
    document per row from position 0; a GPT-2 shaped LM then ties what it learned to those
    positions."""
    pack_steps: bool = False
    """Each step's rows packed into as few rows of `seq_len` as hold them, their documents kept apart
    (positions restart at 0, attention stays within each; `pretrain_lm.pack_rows`): the same loss and
    gradient as the padded batch up to float rounding, on fewer tokens (0.76x the step time on the
    world's mixed corpus, `bench/lm_packing.py`). Off by default: the demo's LM was measured unpacked;
    configs/reproduce-cpu.yaml sets it. Not to be confused with `pack`, which changes the text."""
    multi_scene_fraction: float = 0.0
    """Fraction of the captioning/QA documents that hold 2-3 scenes in a row, each its caption, a
    question and the answer: n-shot VQA written as text (none by default)."""
    multi_scene_scenes: int = 0
    """Scenes in each multi-scene document: 0 draws 2 or 3, 3 writes every one as 2-shot
    VQA in text (two solved scenes, then the third), 2 as 1-shot."""
    naming_shape_questions: float = 0.0
    """Fraction of the binding naming documents that ask only the first hop of binding, after the
    support: "... this is a dax . question : what shape is the dax ? answer : circle ." (none by
    default)."""
    naming_query_names: float = 0.0
    """In the naming curriculum (`naming_steps`), the fraction of the binding documents whose query
    writes each object's name after its shape ("a green square dax on the left and ..."): this value
    at the first step, falling linearly to 0 at the curriculum's end, the documents otherwise the
    same. 0 (the default): none. It brings the naming phase change forward (docs/world.md);
    configs/reproduce-cpu.yaml sets 1.0 with a 2000-step curriculum."""
    mixed_query_names: float = 0.0
    """In the mixed corpus (`naming_fraction`'s naming documents), the fraction of them whose binding
    query writes each object's name after its shape, for every step: the phase in which the LM learns
    to look up a scene's objects by a word of the question. 0 (the default): none."""
    lookup_steps: int = 0
    """A lookup phase before the naming curriculum: rows of `text.lookup_corpus` (the world's
    documents and name lookups, objects named by words drawn afresh and asked by them), for at most
    this many steps of the `steps`, ended at the first measurement (every 250 steps) at which
    held-out name lookups reach `lookup_level`; the naming curriculum starts there. 0 (the default):
    none. An LM that learned naming first never learns to look up by a name; one that learned the
    lookup first keeps it through naming (docs/world.md)."""
    lookup_level: float = 0.9
    """The held-out name-lookup accuracy that ends the lookup phase (chance 0.5)."""
    lookup_fraction: float = 0.0
    """After the lookup phase, the fraction of every batch's rows that are name lookups, drawn on a
    generator of their own (the other rows as without): keeps the lookup by names alive."""

    def __post_init__(self):
        if not 0.0 <= self.naming_fraction < 1.0:
            raise ConfigError(f"lm_pretrain.naming_fraction must be in [0, 1), got {self.naming_fraction}")
        if not 0 <= self.naming_steps < self.steps:
            raise ConfigError(f"lm_pretrain.naming_steps must be in [0, steps={self.steps}), got {self.naming_steps}")
        if self.n_positions and self.n_positions < max(self.seq_len, MIN_POSITIONS):
            raise ConfigError(f"lm_pretrain.n_positions must be at least seq_len ({self.seq_len}) and {MIN_POSITIONS} "
                              f"(the 2-shot prompts the LM is measured on), got {self.n_positions}")
        if self.lookup_steps < 0 or self.lookup_steps + self.naming_steps >= self.steps:
            raise ConfigError(f"lm_pretrain.lookup_steps must be >= 0 and leave naming_steps ({self.naming_steps}) and "
                              f"mixed steps within steps ({self.steps}), got {self.lookup_steps}")
        if not 0.0 <= self.lookup_fraction < 1.0 or not 0.0 < self.lookup_level <= 1.0:
            raise ConfigError(f"lm_pretrain.lookup_fraction must be in [0, 1) and lookup_level in (0, 1], got "
                              f"{self.lookup_fraction} and {self.lookup_level}")
        if self.continue_steps < 0:
            raise ConfigError(f"lm_pretrain.continue_steps must be >= 0, got {self.continue_steps}")
        if not 0.0 <= self.multi_scene_fraction <= 1.0:
            raise ConfigError(f"lm_pretrain.multi_scene_fraction must be in [0, 1], got {self.multi_scene_fraction}")
        if self.multi_scene_scenes not in (0, 2, 3):
            raise ConfigError(f"lm_pretrain.multi_scene_scenes must be 0 (2 or 3 drawn), 2 or 3, got {self.multi_scene_scenes}")
        if not 0.0 <= self.naming_shape_questions <= 1.0:
            raise ConfigError(f"lm_pretrain.naming_shape_questions must be in [0, 1], got {self.naming_shape_questions}")
        if not 0.0 <= self.naming_query_names <= 1.0:
            raise ConfigError(f"lm_pretrain.naming_query_names must be in [0, 1], got {self.naming_query_names}")
        if self.naming_query_names and (not self.naming_steps or self.pack == "all"):
            raise ConfigError("lm_pretrain.naming_query_names needs a naming curriculum (naming_steps > 0) of "
                              f"unpacked rows (pack 'none' or 'mixed'), got naming_steps={self.naming_steps}, pack={self.pack!r}")
        if not 0.0 <= self.mixed_query_names <= 1.0:
            raise ConfigError(f"lm_pretrain.mixed_query_names must be in [0, 1], got {self.mixed_query_names}")
        if self.mixed_query_names and not self.naming_fraction:
            raise ConfigError("lm_pretrain.mixed_query_names needs naming documents in the mixed corpus "
                              "(naming_fraction > 0)")
