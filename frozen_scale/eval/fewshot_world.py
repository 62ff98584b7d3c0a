"""The paper's evaluation tasks on the built-in world, as prompts to generate from.

Each builder returns `Item`s: a segment list (frozen_scale.data.prompts) ending where the model
should go on, the PIL images of its Image() slots in order, and the accepted answers. The world's
language is word-level with a fixed vocabulary (frozen_scale.synthetic.text), so the prompts are
written in it:

- captioning: [image, "caption :"] -> the canonical caption;
- VQA, zero- and n-shot: ([image, "question : q answer :", " a ."] * n) + [image, "question : q answer :"];
- open-ended n-way k-shot classification (miniImageNet style): support [image, "this is a dax ."]
  for single objects whose shape is the class, then [query image, "this is a"] -> " dax";
- fast concept binding: the same support, then a two-object query image and
  "question : what color is the dax ? answer :" -> the colour of the object whose shape was
  named "dax" in the episode (episodes: `frozen_scale.synthetic.episodes`).

Names: an LM pretrained with naming documents (`lm_pretrain.naming_steps` or `naming_fraction`) has the paper's
nonsense words ("dax", "blicket", ...) and the "this is a" statement in its vocabulary, and the
episodes use them. The demo's LM has neither (they would encode to <unk>), so its episodes fall
back to STANDIN_NAMES — vocabulary words that never name a colour, shape or size — in the
caption format ("caption : a what ."). Either way names are shuffled per episode, so a name
carries no information outside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from frozen_scale.data.prompts import Image, Text
from frozen_scale.eval import fewshot
from frozen_scale.synthetic import episodes, text, world
from frozen_scale.synthetic.names import NONSENSE_NAMES

STANDIN_NAMES = ("what", "how", "many", "there")
"""Stand-ins for the nonsense words when the LM's vocabulary lacks them."""
_FEWSHOT_SPLIT = "eval"
_SHOT_OFFSET = 1_000_000  # scene indices of VQA shots: far from the query scenes


@dataclass(frozen=True)
class NamingLanguage:
    """How an episode writes names: the names, a support caption and the classification query."""

    names: tuple[str, ...]
    template: str
    query: str


PAPER_NAMING = NamingLanguage(NONSENSE_NAMES, text.NAMING_TEMPLATE, text.NAMING_QUERY)
STANDIN_NAMING = NamingLanguage(STANDIN_NAMES, "caption : a {name} .", "caption : a")


def naming_language(tokenizer) -> NamingLanguage:
    """The paper's nonsense words if the LM's vocabulary has them, else the stand-ins."""
    return PAPER_NAMING if text.knows_naming(tokenizer) else STANDIN_NAMING


@dataclass
class Item:
    key: str
    segments: list
    images: list
    answers: list[str]
    """Accepted answers (captioning: the reference captions)."""
    meta: dict = field(default_factory=dict)


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
    """Zero-shot (shots=0) or n-shot VQA in the world's question format. Paired across shot
    counts: item i asks the same question of the same scene whatever `shots` is, so 2-shot vs
    0-shot differs only by the solved examples before it."""
    rng = np.random.default_rng([seed, 4242, shots])
    query_rng = np.random.default_rng([seed, 4243])
    items = []
    for i, scene in enumerate(world.scenes(seed, split, n)):
        shot_list = []
        for j in range(shots):
            shot = world.make_scene(seed, split, _SHOT_OFFSET + i * shots + j)
            q, a = _random_question(shot, rng)
            shot_list.append((world.render(shot, image_size), q, a))
        q, a = _random_question(scene, query_rng)
        prompt = fewshot.nshot_vqa(shot_list, world.render(scene, image_size), q, a,
                                   format_question=text.question_prompt,
                                   format_answer=lambda ans: f" {ans} .")
        items.append(Item(f"{scene.key}-{shots}shot", list(prompt.segments), list(prompt.images), [a],
                          {"question": q}))
    return items


def _render_support(ep: episodes.Episode, image_size: int) -> list:
    return [(world.render(scene, image_size), name) for scene, name in ep.support]


def classification_items(seed: int, n: int, ways: int, shots: int, image_size: int,
                         language: NamingLanguage = STANDIN_NAMING) -> list[Item]:
    """Open-ended `ways`-way `shots`-shot classification of single objects by shape."""
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, 77, ways, shots, i])
        ep = episodes.classification(rng, ways, shots, language.names, _FEWSHOT_SPLIT, i)
        prompt = fewshot.open_ended_classification(_render_support(ep, image_size),
                                                   world.render(ep.query, image_size), ep.answer,
                                                   caption_template=language.template,
                                                   question=language.query)
        items.append(Item(f"cls-{ways}way{shots}shot-{i:06d}", list(prompt.segments), list(prompt.images),
                          [prompt.answer], {"bound": ep.bound}))
    return items


def binding_items(seed: int, n: int, shots: int, image_size: int,
                  language: NamingLanguage = STANDIN_NAMING) -> list[Item]:
    """Fast concept binding: two shapes get names in context; ask the colour of one by name."""
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, 88, shots, i])
        ep = episodes.binding(rng, shots, language.names, _FEWSHOT_SPLIT, i)
        prompt = fewshot.concept_binding(_render_support(ep, image_size), world.render(ep.query, image_size),
                                         text.question_prompt(ep.question()), ep.answer,
                                         caption_template=language.template)
        items.append(Item(f"bind-{shots}shot-{i:06d}", list(prompt.segments), list(prompt.images),
                          [prompt.answer], {"bound": ep.bound, "asked": ep.asked}))
    return items
