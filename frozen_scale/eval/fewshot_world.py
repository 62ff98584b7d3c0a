"""The paper's evaluation tasks on the built-in world, as prompts to generate from.

Each builder returns `Item`s: a segment list (frozen_scale.data.prompts) ending where the model
should go on, the PIL images of its Image() slots in order, and the accepted answers. The world's
language is word-level with a fixed vocabulary (frozen_scale.synthetic.text), so the prompts are
written in it:

- captioning: [image, "caption :"] -> the canonical caption;
- VQA, zero- and n-shot: ([image, "question : q answer :", " a ."] * n) + [image, "question : q answer :"];
- open-ended n-way k-shot classification (miniImageNet style): support [image, "caption : a dax ."]
  for single objects whose shape is the class, then [query image, "caption : a"] -> " dax";
- fast concept binding: the same support, then a two-object query image and
  "question : what color is the dax ? answer :" -> the colour of the object whose shape was
  named "dax" in the episode. Support colours differ from the query's, so copying a colour from
  the support never answers it: the name must be bound to a shape and the colour read off the
  query image.

Nonsense names: "dax", "blicket", ... are not in the world's vocabulary (they would all encode to
the same <unk>). The episodes use NAME_POOL instead: vocabulary words that never name a colour,
shape or size, shuffled per episode, so a name carries no information outside the episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image as PILImage

from frozen_scale.data.prompts import Image, Text
from frozen_scale.eval import fewshot
from frozen_scale.synthetic import text, world

NAME_POOL = ("what", "how", "many", "there")
"""Stand-ins for the paper's nonsense words: in the vocabulary, never a colour, shape or size."""

SUPPORT_TEMPLATE = "caption : a {name} ."
CLASSIFICATION_QUERY = "caption : a"
_FEWSHOT_SPLIT = "eval"
_SHOT_OFFSET = 1_000_000  # scene indices of VQA shots: far from the query scenes


@dataclass
class Item:
    key: str
    segments: list
    images: list
    answers: list[str]
    """Accepted answers (captioning: the reference captions)."""
    meta: dict = field(default_factory=dict)


def black_image(image_size: int) -> PILImage.Image:
    """What a blind model sees instead of every image."""
    return PILImage.new("RGB", (image_size, image_size), (0, 0, 0))


def _allowed_colors(shape: str) -> list[str]:
    return [c for c in world.COLORS if (c, shape) not in world.HELDOUT_COMBOS]


def _scene(rng: np.random.Generator, objects: list[tuple[str, str, str]], index: int) -> world.Scene:
    positions = ["center"] if len(objects) == 1 else ["left", "right"]
    objs = tuple(world.Obj(c, s, z, p) for (c, s, z), p in zip(objects, positions))
    jitter = tuple(float(x) for x in rng.uniform(-1, 1, size=2 * len(objs) + 1))
    return world.Scene(_FEWSHOT_SPLIT, index, objs, jitter)


def caption_items(seed: int, split: str, n: int, prompt: str, image_size: int) -> list[Item]:
    items = []
    for scene in world.scenes(seed, split, n):
        segs = [Image()] + ([Text(prompt)] if prompt else [])
        items.append(Item(scene.key, segs, [world.render(scene, image_size)], [world.caption(scene)]))
    return items


def _random_question(scene: world.Scene, rng: np.random.Generator) -> tuple[str, str]:
    pairs = world.questions(scene)
    return pairs[int(rng.integers(len(pairs)))]


def vqa_items(seed: int, split: str, n: int, shots: int, image_size: int) -> list[Item]:
    """Zero-shot (shots=0) or n-shot VQA in the world's question format."""
    rng = np.random.default_rng([seed, 4242, shots])
    items = []
    for i, scene in enumerate(world.scenes(seed, split, n)):
        shot_list = []
        for j in range(shots):
            shot = world.make_scene(seed, split, _SHOT_OFFSET + i * shots + j)
            q, a = _random_question(shot, rng)
            shot_list.append((world.render(shot, image_size), q, a))
        q, a = _random_question(scene, rng)
        prompt = fewshot.nshot_vqa(shot_list, world.render(scene, image_size), q, a,
                                   format_question=text.question_prompt,
                                   format_answer=lambda ans: f" {ans} .")
        items.append(Item(f"{scene.key}-{shots}shot", list(prompt.segments), list(prompt.images), [a],
                          {"question": q}))
    return items


def _support(rng, shapes, names, shots, image_size, index, avoid_colors=()):
    pairs = []
    for _ in range(shots):
        for shape in rng.permutation(shapes):
            colors = [c for c in _allowed_colors(str(shape)) if c not in avoid_colors]
            obj = (str(rng.choice(colors)), str(shape), str(rng.choice(world.SIZES)))
            pairs.append((world.render(_scene(rng, [obj], index), image_size), names[str(shape)]))
    return pairs


def classification_items(seed: int, n: int, ways: int, shots: int, image_size: int,
                         names: tuple[str, ...] = NAME_POOL) -> list[Item]:
    """Open-ended `ways`-way `shots`-shot classification of single objects by shape."""
    if not 2 <= ways <= min(len(world.SHAPES), len(names)):
        raise ValueError(f"ways must be between 2 and {min(len(world.SHAPES), len(names))}, got {ways}")
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, 77, ways, shots, i])
        shapes = [str(s) for s in rng.choice(world.SHAPES, ways, replace=False)]
        bound = fewshot.assign_nonsense_names(shapes, rng, names)
        support = _support(rng, shapes, bound, shots, image_size, i)
        q_shape = str(rng.choice(shapes))
        q_obj = (str(rng.choice(_allowed_colors(q_shape))), q_shape, str(rng.choice(world.SIZES)))
        query = world.render(_scene(rng, [q_obj], i), image_size)
        prompt = fewshot.open_ended_classification(support, query, bound[q_shape],
                                                   caption_template=SUPPORT_TEMPLATE,
                                                   question=CLASSIFICATION_QUERY)
        items.append(Item(f"cls-{ways}way{shots}shot-{i:06d}", list(prompt.segments), list(prompt.images),
                          [prompt.answer], {"bound": bound}))
    return items


def binding_items(seed: int, n: int, shots: int, image_size: int,
                  names: tuple[str, ...] = NAME_POOL) -> list[Item]:
    """Fast concept binding: two shapes get names in context; ask the colour of one by name."""
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, 88, shots, i])
        shapes = [str(s) for s in rng.choice(world.SHAPES, 2, replace=False)]
        bound = fewshot.assign_nonsense_names(shapes, rng, names)
        q_objs = []
        used: list[str] = []
        for shape in rng.permutation(shapes):
            color = str(rng.choice([c for c in _allowed_colors(str(shape)) if c not in used]))
            used.append(color)
            q_objs.append((color, str(shape), str(rng.choice(world.SIZES))))
        support = _support(rng, shapes, bound, shots, image_size, i, avoid_colors=used)
        query = world.render(_scene(rng, q_objs, i), image_size)
        asked = q_objs[int(rng.integers(2))]
        question = text.question_prompt(f"what color is the {bound[asked[1]]} ?")
        prompt = fewshot.concept_binding(support, query, question, asked[0],
                                         caption_template=SUPPORT_TEMPLATE)
        items.append(Item(f"bind-{shots}shot-{i:06d}", list(prompt.segments), list(prompt.images),
                          [prompt.answer], {"bound": bound, "asked": bound[asked[1]]}))
    return items
