"""The paper's evaluation tasks on the built-in world, as prompts to generate from: the world's
item source (`WORLD_ITEMS`, registered with the task runner, `eval.items`).

Each builder returns `Item`s (`eval.items`): a segment list (frozen_scale.data.prompts) ending
where the model should go on, the PIL images of its Image() slots in order, and the accepted
answers. The world's
language is word-level with a fixed vocabulary (frozen_scale.world.text), so the prompts are
written in it:

- captioning: [image, "caption :"] -> the canonical caption;
- VQA, zero- and n-shot: ([image, "question : q answer :", " a ."] * n) + [image, "question : q answer :"];
- open-ended n-way k-shot classification (miniImageNet style): support [image, "this is a dax ."]
  for single objects whose shape is the class, then [query image, "this is a"] -> " dax";
- fast concept binding: the same support, then a two-object query image and
  "question : what color is the dax ? answer :" -> the colour of the object whose shape was
  named "dax" in the episode (episodes: `frozen_scale.world.episodes`).

Names: an LM pretrained with naming documents (`lm_pretrain.naming_steps` or `naming_fraction`) has the paper's
nonsense words ("dax", "blicket", ...) and the "this is a" statement in its vocabulary, and the
episodes use them. The demo's LM has neither (they would encode to <unk>), so its episodes fall
back to STANDIN_NAMES — vocabulary words that never name a colour, shape or size — in the
caption format ("caption : a what ."). Either way names are shuffled per episode, so a name
carries no information outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frozen_scale.data.prompts import Image, Text
from frozen_scale.eval import fewshot
from frozen_scale.eval.items import Item
from frozen_scale.eval.names import NONSENSE_NAMES, NOVEL_NAMES
from frozen_scale.world import episodes, scenes, text

STANDIN_NAMES = ("what", "how", "many", "there")
"""Stand-ins for the nonsense words when the LM's vocabulary lacks them."""
DEV_SPLIT, TEST_SPLIT = "eval", "test"
"""Settings are chosen on the dev split's items; results are reported on the test split's, drawn
from streams of their own (`scenes.SPLITS`)."""
_SHOT_OFFSET = 1_000_000  # scene indices of VQA shots: far from the query scenes


@dataclass(frozen=True)
class NamingLanguage:
    """How an episode writes names: the names, a support caption and the classification query."""

    names: tuple[str, ...]
    template: str
    query: str


PAPER_NAMING = NamingLanguage(NONSENSE_NAMES, text.NAMING_TEMPLATE, text.NAMING_QUERY)
STANDIN_NAMING = NamingLanguage(STANDIN_NAMES, "caption : a {name} .", "caption : a")
NOVEL_NAMING = NamingLanguage(NOVEL_NAMES, text.NAMING_TEMPLATE, text.NAMING_QUERY)


def naming_language(tokenizer, names: str = "paper") -> NamingLanguage:
    """The paper's nonsense words if the LM's vocabulary has them, else the stand-ins; names="novel":
    the second pool (`eval.names.NOVEL_NAMES`), which no text of the LM holds."""
    if names == "novel":
        if not all(w in tokenizer.get_vocab() for w in NOVEL_NAMES):
            raise ValueError("the LM's vocabulary lacks the second name pool: pretrain it with naming documents")
        return NOVEL_NAMING
    return PAPER_NAMING if text.knows_naming(tokenizer) else STANDIN_NAMING


def caption_items(seed: int, split: str, n: int, prompt: str, image_size: int) -> list[Item]:
    items = []
    for scene in scenes.scenes(seed, split, n):
        segs = [Image()] + ([Text(prompt)] if prompt else [])
        items.append(Item(scene.key, segs, [scenes.render(scene, image_size)], [scenes.caption(scene)]))
    return items


def _random_question(scene: scenes.Scene, rng: np.random.Generator) -> tuple[str, str]:
    pairs = scenes.questions(scene)
    return pairs[int(rng.integers(len(pairs)))]


def vqa_items(seed: int, split: str, n: int, shots: int, image_size: int) -> list[Item]:
    """Zero-shot (shots=0) or n-shot VQA in the world's question format. Paired across shot
    counts: item i asks the same question of the same scene whatever `shots` is, so 2-shot vs
    0-shot differs only by the solved examples before it."""
    rng = np.random.default_rng([seed, 4242, shots])
    query_rng = np.random.default_rng([seed, 4243])
    items = []
    for i, scene in enumerate(scenes.scenes(seed, split, n)):
        shot_list = []
        for j in range(shots):
            shot = scenes.make_scene(seed, split, _SHOT_OFFSET + i * shots + j)
            q, a = _random_question(shot, rng)
            shot_list.append((scenes.render(shot, image_size), q, a))
        q, a = _random_question(scene, query_rng)
        prompt = fewshot.nshot_vqa(shot_list, scenes.render(scene, image_size), q, a,
                                   format_question=text.question_prompt,
                                   format_answer=lambda ans: f" {ans} .")
        items.append(Item(f"{scene.key}-{shots}shot", list(prompt.segments), list(prompt.images), [a],
                          {"question": q}))
    return items


def _render_support(ep: episodes.Episode, image_size: int) -> list:
    return [(scenes.render(scene, image_size), name) for scene, name in ep.support]


def _stream(split: str, words: list[int]) -> list[int]:
    """An episode's generator seed: the dev split's words as they are, any other split's followed
    by its id, so each split's episodes come from a stream of their own."""
    return words if split == DEV_SPLIT else [*words, 1000 + scenes.SPLITS.index(split)]


def _key(split: str, key: str) -> str:
    return key if split == DEV_SPLIT else f"{split}-{key}"


def classification_items(seed: int, n: int, ways: int, shots: int, image_size: int,
                         language: NamingLanguage = STANDIN_NAMING, split: str = DEV_SPLIT) -> list[Item]:
    """Open-ended `ways`-way `shots`-shot classification of single objects by shape."""
    items = []
    for i in range(n):
        rng = np.random.default_rng(_stream(split, [seed, 77, ways, shots, i]))
        ep = episodes.classification(rng, ways, shots, language.names, split, i)
        prompt = fewshot.open_ended_classification(_render_support(ep, image_size),
                                                   scenes.render(ep.query, image_size), ep.answer,
                                                   caption_template=language.template,
                                                   question=language.query)
        items.append(Item(_key(split, f"cls-{ways}way{shots}shot-{i:06d}"), list(prompt.segments),
                          list(prompt.images), [prompt.answer], {"bound": ep.bound}))
    return items


def binding_items(seed: int, n: int, shots: int, image_size: int,
                  language: NamingLanguage = STANDIN_NAMING, split: str = DEV_SPLIT) -> list[Item]:
    """Fast concept binding: two shapes get names in context; ask the colour of one by name."""
    items = []
    for i in range(n):
        rng = np.random.default_rng(_stream(split, [seed, 88, shots, i]))
        ep = episodes.binding(rng, shots, language.names, split, i)
        prompt = fewshot.concept_binding(_render_support(ep, image_size), scenes.render(ep.query, image_size),
                                         text.question_prompt(ep.question()), ep.answer,
                                         caption_template=language.template)
        items.append(Item(_key(split, f"bind-{shots}shot-{i:06d}"), list(prompt.segments), list(prompt.images),
                          [prompt.answer], {"bound": ep.bound, "asked": ep.asked}))
    return items


class WorldItems:
    """The built-in world's item source: held-out scenes rendered on the fly, in the prompts of
    the LM's language (`naming_language`)."""

    name = "world"
    splits = scenes.SPLITS
    default_split = "eval"
    max_ways = len(scenes.SHAPES)  # one class per shape

    def items(self, task: str, meta: dict, tokenizer, *, seed: int, split: str, n: int, shots: int, ways: int,
              image_size: int, names: str = "paper") -> list[Item]:
        """names: "paper" (or the stand-ins), or "novel": the second pool (`naming_language`)."""
        language = naming_language(tokenizer, names)
        if task == "caption":
            items = caption_items(seed, split, n, meta.get("data", {}).get("prompt", ""), image_size)
            for it in items:
                it.meta["canonical"] = True
            return items
        if task == "vqa":
            return vqa_items(seed, split, n, shots, image_size)
        if task == "fewshot-cls":
            return classification_items(seed, n, ways, max(1, shots), image_size, language, split)
        return binding_items(seed, n, max(1, shots), image_size, language, split)


WORLD_ITEMS = WorldItems()
