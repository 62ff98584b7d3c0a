"""Naming episodes of the built-in world: the scenes behind few-shot classification and binding.

An episode binds names to shapes: support scenes of one object each, every one captioned with
the name of its shape, then a query scene. Two kinds (Tsimpoukelli et al. 2021, section 4):

- classification (open-ended n-way k-shot): the query is one object of one of the episode's
  shapes; the answer is that shape's name;
- binding: the query holds two objects of the episode's two shapes; the question asks the colour
  of the object a name was bound to. Support colours differ from the query's, so copying a colour
  from the support never answers it: the name must be bound to a shape and the colour read off
  the query.

Names are shuffled per episode, so a name carries no information outside its episode. The same
episodes are written as text for LM pretraining (`world.text`, scenes as their captions) and
rendered as images for evaluation (`world.items`), which is what lets the evaluation ask
whether an in-context ability learned from text transfers to images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frozen_scale.world import scenes
from frozen_scale.eval.names import assign_nonsense_names


@dataclass(frozen=True)
class Episode:
    support: tuple[tuple[scenes.Scene, str], ...]
    """(single-object scene, the name of its shape) in presentation order."""
    query: scenes.Scene
    bound: dict
    """shape -> name for this episode."""
    answer: str
    asked: str | None = None
    """binding: the name the question asks about (None for classification)."""

    def question(self) -> str:
        """The binding question about the query ('what color is the dax ?')."""
        if self.asked is None:
            raise ValueError("a classification episode has no question")
        return f"what color is the {self.asked} ?"


def _allowed_colors(shape: str) -> list[str]:
    return [c for c in scenes.COLORS if (c, shape) not in scenes.HELDOUT_COMBOS]


def _scene(rng: np.random.Generator, split: str, index: int,
           objects: list[tuple[str, str, str]]) -> scenes.Scene:
    positions = ["center"] if len(objects) == 1 else ["left", "right"]
    objs = tuple(scenes.Obj(c, s, z, p) for (c, s, z), p in zip(objects, positions))
    jitter = tuple(float(x) for x in rng.uniform(-1, 1, size=2 * len(objs) + 1))
    return scenes.Scene(split, index, objs, jitter)


def _support(rng, split, index, shapes, bound, shots, avoid_colors=()):
    pairs = []
    for _ in range(shots):
        for shape in rng.permutation(shapes):
            shape = str(shape)
            colors = [c for c in _allowed_colors(shape) if c not in avoid_colors]
            obj = (str(rng.choice(colors)), shape, str(rng.choice(scenes.SIZES)))
            pairs.append((_scene(rng, split, index, [obj]), bound[shape]))
    return tuple(pairs)


def classification(rng: np.random.Generator, ways: int, shots: int, names, split: str = "eval",
                   index: int = 0) -> Episode:
    """Open-ended `ways`-way `shots`-shot classification of one object by its shape."""
    if not 2 <= ways <= min(len(scenes.SHAPES), len(names)):
        raise ValueError(f"ways must be between 2 and {min(len(scenes.SHAPES), len(names))}, got {ways}")
    shapes = [str(s) for s in rng.choice(scenes.SHAPES, ways, replace=False)]
    bound = assign_nonsense_names(shapes, rng, names)
    support = _support(rng, split, index, shapes, bound, shots)
    q_shape = str(rng.choice(shapes))
    q_obj = (str(rng.choice(_allowed_colors(q_shape))), q_shape, str(rng.choice(scenes.SIZES)))
    return Episode(support, _scene(rng, split, index, [q_obj]), bound, bound[q_shape])


def binding(rng: np.random.Generator, shots: int, names, split: str = "eval", index: int = 0) -> Episode:
    """Two shapes get names in context; the query shows both; ask the colour of one by name."""
    shapes = [str(s) for s in rng.choice(scenes.SHAPES, 2, replace=False)]
    bound = assign_nonsense_names(shapes, rng, names)
    q_objs, used = [], []
    for shape in rng.permutation(shapes):
        color = str(rng.choice([c for c in _allowed_colors(str(shape)) if c not in used]))
        used.append(color)
        q_objs.append((color, str(shape), str(rng.choice(scenes.SIZES))))
    support = _support(rng, split, index, shapes, bound, shots, avoid_colors=used)
    query = _scene(rng, split, index, q_objs)
    color, shape, _ = q_objs[int(rng.integers(2))]
    return Episode(support, query, bound, color, asked=bound[shape])
