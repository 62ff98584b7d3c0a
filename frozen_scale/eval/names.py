"""The paper's nonsense words, and binding an episode's categories to them.

Few-shot classification and fast concept binding (Tsimpoukelli et al. 2021, section 4) name the
categories of an episode with words that mean nothing outside it ("dax", "blicket", ...). The
world's language uses them in its naming documents (`world.text`), its episodes bind shapes
to them (`world.episodes`), and the few-shot prompts on any data (`eval.fewshot`) name
classes with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NONSENSE_NAMES = ("dax", "blicket", "slation", "perpo", "shously")
"""The nonsense words of the paper's fast-binding tasks, in the order it introduces them."""

NOVEL_NAMES = ("wug", "zorp", "fepo", "kiki", "tufa")
"""A second pool of nonsense words for transfer the LM never saw: an LM whose text uses
NONSENSE_NAMES is evaluated with these too, which occur in none of its text."""


def assign_nonsense_names(categories: Sequence[str], rng: np.random.Generator | None = None,
                          names: Sequence[str] = NONSENSE_NAMES) -> dict[str, str]:
    """Bind each distinct category of an episode to a nonsense name (shuffled when rng is given)."""
    distinct = list(dict.fromkeys(categories))
    if len(distinct) > len(names):
        raise ValueError(f"{len(distinct)} categories but only {len(names)} names: {list(names)}")
    pool = list(names)
    if rng is not None:
        pool = [pool[i] for i in rng.permutation(len(pool))]
    return dict(zip(distinct, pool))
