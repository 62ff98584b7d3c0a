"""The world's language: a word-level tokenizer, the LM pretraining corpus and the prompt formats.

Documents have a context sentence (a scene's caption) followed by one or two tasks that refer to
it: a caption task ("caption : <the caption> .") or a question ("question : <q> answer : <a> .").
Prefix training replaces the written context with an image prefix, so the same tasks asked after
an image test whether what the LM learned from text transfers to images.

Naming documents (optional, `lm_pretrain.naming_fraction`): the few-shot episodes of
`world.episodes` written as text — "a red circle . this is a dax . a blue square . this is a
blicket . a green circle . this is a dax ." or a binding question after a two-object scene — with
the paper's nonsense words, which then join the vocabulary. They give the LM the in-context
naming ability the paper's few-shot and binding evaluations probe (a large LM has it from web
text; the world's LM has to see it somewhere).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from frozen_scale.world import episodes, scenes
from frozen_scale.eval.names import NONSENSE_NAMES, NOVEL_NAMES

TEXT_SPLITS = ("train", "eval", "heldout_combos")
"""The scene splits the LM's text is drawn from (on seeds of its own, not the evaluation's); the
test split never occurs in it."""
EOS = "<|endoftext|>"
PAD = "<pad>"
UNK = "<unk>"

CAPTION_PROMPT = "caption :"
NAMING_TEMPLATE = "this is a {name} ."
NAMING_QUERY = "this is a"
NAMING_WORDS = (*NONSENSE_NAMES, "this")
"""Words only the naming documents use: in the vocabulary only when the LM is pretrained on them."""
UNSEEN_WORDS = NOVEL_NAMES
"""Words in a naming LM's vocabulary that none of its text holds (the second name pool): their
embeddings stay as initialised, so an episode naming with them asks for transfer to new words."""


def question_prompt(question: str) -> str:
    return f"question : {question} answer :"


def context(scene: scenes.Scene) -> str:
    return f"{scenes.caption(scene)} ."


def _all_words(naming: bool = False) -> list[str]:
    words = set(NAMING_WORDS + UNSEEN_WORDS) if naming else set()
    words |= {"a", "on", "the", "and", "left", "right", ".", ":", "?", "caption", "question", "answer"}
    words.update(scenes.COLORS, scenes.SHAPES, scenes.SIZES, scenes.NUMBER_WORDS.values())
    for scene_split in TEXT_SPLITS:
        for scene in scenes.scenes(0, scene_split, 200):
            for q, a in scenes.questions(scene):
                words.update(q.split())
                words.update(a.split())
    return sorted(words)


def build_tokenizer(out_dir: str | Path | None = None, naming: bool = False) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on the world's vocabulary (with NAMING_WORDS when `naming`);
    save it if out_dir is given."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=[EOS, PAD, UNK], min_frequency=1)
    tok.train_from_iterator([" ".join(_all_words(naming))], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    fast.clean_up_tokenization_spaces = False
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def document(scene: scenes.Scene, rng: np.random.Generator, copy_fraction: float) -> str:
    """One pretraining document: the scene's caption as context, then one or two tasks."""
    parts = [context(scene)]
    qa = scenes.questions(scene)
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < copy_fraction:
            parts.append(f"{CAPTION_PROMPT} {scenes.caption(scene)} .")
        else:
            q, a = qa[int(rng.integers(len(qa)))]
            parts.append(f"{question_prompt(q)} {a} .")
    return " ".join(parts)


def multi_scene_document(drawn: list[scenes.Scene], rng: np.random.Generator) -> str:
    """Several drawn in a row, each its caption, a question and the answer: n-shot VQA as text."""
    parts = []
    for scene in drawn:
        qa = scenes.questions(scene)
        q, a = qa[int(rng.integers(len(qa)))]
        parts.append(f"{context(scene)} {question_prompt(q)} {a} .")
    return " ".join(parts)


def knows_naming(tokenizer) -> bool:
    """Whether a tokenizer has the naming documents' words (the LM was pretrained on them)."""
    vocab = tokenizer.get_vocab()
    return all(w in vocab for w in NAMING_WORDS)


def episode_text(ep: episodes.Episode, named_query: bool = False) -> str:
    """A naming episode written as text: every scene as its caption, the names as statements.
    named_query: a binding query's caption writes each object's name after its shape ("a yellow
    square dax on the left and a green circle blicket on the right ."), the two names the question's
    lookup needs as words of the query (`lm_pretrain.naming_query_names`)."""
    parts = [f"{context(scene)} {NAMING_TEMPLATE.format(name=name)}" for scene, name in ep.support]
    if ep.asked is None:
        parts.append(f"{context(ep.query)} {NAMING_TEMPLATE.format(name=ep.answer)}")
    else:
        query = context(ep.query)
        if named_query:
            for obj in ep.query.objects:
                query = query.replace(scenes.describe(obj), f"{scenes.describe(obj)} {ep.bound[obj.shape]}", 1)
        parts.append(f"{query} {question_prompt(ep.question())} {ep.answer} .")
    return " ".join(parts)


# (ways, shots) of the classification documents and shots of the binding ones, longest first; a
# document takes one that fits the pretraining sequence length (a scene and its name: 9 tokens).
_CLASSIFICATION_SHAPES = ((3, 2), (2, 3), (2, 2), (3, 1), (2, 1))
_BINDING_SHOTS = (2, 1)


def _fits(scenes: int, tail: int, seq_len: int) -> bool:
    return 2 + 9 * scenes + tail <= seq_len


def shape_question_text(ep: episodes.Episode) -> str:
    """A binding episode's support, then the first hop of its question alone: which shape the asked
    name was given to ("... question : what shape is the dax ? answer : circle .")."""
    shape = next(s for s, name in ep.bound.items() if name == ep.asked)
    parts = [f"{context(scene)} {NAMING_TEMPLATE.format(name=name)}" for scene, name in ep.support]
    parts.append(f"{question_prompt(f'what shape is the {ep.asked} ?')} {shape} .")
    return " ".join(parts)


def name_lookup_query(ep: episodes.Episode) -> str:
    """A binding episode's query caption with each object's name instead of its shape ("a orange
    slation on the left and a yellow shously on the right .")."""
    query = context(ep.query)
    for obj in ep.query.objects:
        query = query.replace(scenes.describe(obj), scenes.describe(obj).replace(obj.shape, ep.bound[obj.shape]), 1)
    return query


def name_lookup_text(ep: episodes.Episode, rng: np.random.Generator, query: str | None = None) -> str:
    """A lookup by words drawn afresh in each document: a binding episode's query with its objects'
    names instead of their shapes, no support, both objects asked by name in a drawn order ("a orange
    slation on the left and a yellow shously on the right . question : what color is the shously ?
    answer : yellow . question : what color is the slation ? answer : orange .") — the match on an
    arbitrary word that binding's second hop needs (`lm_pretrain.lookup_steps`). query: another
    writing of the query (default `name_lookup_query`)."""
    parts = [query or name_lookup_query(ep)]
    for k in rng.permutation(len(ep.query.objects)):
        obj = ep.query.objects[int(k)]
        parts.append(f"{question_prompt(f'what color is the {ep.bound[obj.shape]} ?')} {obj.color} .")
    return " ".join(parts)


def name_lookup_corpus(seed: int, num_documents: int) -> list[str]:
    """Name lookups only (`name_lookup_text`), on training episodes."""
    rng = np.random.default_rng([seed, 12])
    return [name_lookup_text(episodes.binding(rng, int(rng.integers(1, 3)), NONSENSE_NAMES, split="train", index=i),
                             rng) for i in range(num_documents)]


def lookup_corpus(seed: int, num_documents: int, copy_fraction: float = 0.5) -> list[str]:
    """The lookup phase's text (`lm_pretrain.lookup_steps`): half the world's captioning / QA
    documents, half name lookups, in a drawn order. A rotary LM of the default's shape learns the
    world's lookups from it, then (a phase change) the lookups by names (docs/world.md)."""
    rng = np.random.default_rng([seed, 13])
    is_lookup = rng.random(num_documents) < 0.5
    lookups = iter(name_lookup_corpus(seed, int(is_lookup.sum())))
    return [next(lookups) if is_lookup[i] else document(scenes.make_scene(seed + 1000, "train", i), rng, copy_fraction)
            for i in range(num_documents)]


def _naming_draw(rng: np.random.Generator, index: int, seq_len: int, shape_questions: float) -> episodes.Episode | str:
    """The draws of one naming document: its episode, or the finished text of a shape question
    (written the same with or without named queries)."""
    if rng.random() < 0.5:
        shapes = [ws for ws in _CLASSIFICATION_SHAPES if _fits(ws[0] * ws[1] + 1, 0, seq_len)]
        if not shapes:
            raise ValueError(f"seq_len {seq_len} is too short for naming documents")
        ways, shots = shapes[int(rng.integers(len(shapes)))]
        return episodes.classification(rng, ways, shots, NONSENSE_NAMES, split="train", index=index)
    shots = [k for k in _BINDING_SHOTS if _fits(2 * k, 24, seq_len)] or [1]
    ep = episodes.binding(rng, shots[int(rng.integers(len(shots)))], NONSENSE_NAMES, split="train", index=index)
    if shape_questions > 0 and rng.random() < shape_questions:
        return shape_question_text(ep)
    return ep


def _naming_text(drawn: episodes.Episode | str, named_query: bool) -> str:
    return drawn if isinstance(drawn, str) else episode_text(drawn, named_query)


def naming_document(rng: np.random.Generator, index: int, seq_len: int = 48, shape_questions: float = 0.0,
                    named_query: bool = False) -> str:
    """A naming episode as text: classification (several shots, so that every repeated shape's name
    is predictable) or binding, as long as fits in `seq_len` tokens. `shape_questions`: that fraction
    of the binding documents ask only the question's first hop (`shape_question_text`). named_query:
    binding queries name their objects (`episode_text`); the same draws, so the same episodes."""
    return _naming_text(_naming_draw(rng, index, seq_len, shape_questions), named_query)


def naming_corpora(seed: int, num_documents: int, seq_len: int = 48,
                   shape_questions: float = 0.0) -> tuple[list[str], list[str]]:
    """Naming documents only (the start of the naming curriculum, `lm_pretrain.naming_steps`), in
    both writings from one pass over the draws: (plain, with binding queries' objects named), row
    for row."""
    rng = np.random.default_rng([seed, 9])
    drawn = [_naming_draw(rng, i, seq_len, shape_questions) for i in range(num_documents)]
    return [_naming_text(d, False) for d in drawn], [_naming_text(d, True) for d in drawn]


def naming_corpus(seed: int, num_documents: int, seq_len: int = 48, shape_questions: float = 0.0,
                  named_query: bool = False) -> list[str]:
    """One writing of `naming_corpora` (named_query: binding queries' objects named), the same draws."""
    rng = np.random.default_rng([seed, 9])
    return [naming_document(rng, i, seq_len, shape_questions, named_query) for i in range(num_documents)]


def corpus(seed: int, num_documents: int, copy_fraction: float = 0.5, naming_fraction: float = 0.0,
           seq_len: int = 48, multi_scene_fraction: float = 0.0, shape_questions: float = 0.0,
           multi_scene_scenes: int = 0, named_queries: float = 0.0) -> list[str]:
    """The LM's pretraining text. Drawn from every split: the LM knows the whole language;
    only the image-caption pairs of prefix training avoid the held-out combinations.
    A `naming_fraction` of the documents are naming episodes, a `multi_scene_fraction` of the
    others 2-3 scenes with a question each (none of either by default; `multi_scene_scenes` 2 or 3
    fixes their number, 0 draws it). `named_queries`: that share of the naming documents write a
    binding query's objects named (`episode_text`), drawn on a generator of its own, so that the
    documents are otherwise the same."""
    rng = np.random.default_rng([seed, 7])
    naming_rng = np.random.default_rng([seed, 8])
    multi_rng = np.random.default_rng([seed, 10])
    named_rng = np.random.default_rng([seed, 11])
    docs = []
    for i in range(num_documents):
        if naming_fraction > 0 and naming_rng.random() < naming_fraction:
            named = named_queries > 0 and named_rng.random() < named_queries
            docs.append(naming_document(naming_rng, i, seq_len, shape_questions, named))
            continue
        split = TEXT_SPLITS[i % len(TEXT_SPLITS)] if i % 10 == 0 else "train"
        scene = scenes.make_scene(seed + 1000, split, i)
        if multi_scene_fraction > 0 and multi_rng.random() < multi_scene_fraction:
            drawn = int(multi_rng.integers(1, 3))  # drawn in either case: the corpus the default was measured on
            extra = multi_scene_scenes - 1 if multi_scene_scenes else drawn
            more = [scenes.make_scene(seed + 2000, split, i * 2 + j) for j in range(extra)]
            docs.append(multi_scene_document([scene, *more], multi_rng))
            continue
        docs.append(document(scene, rng, copy_fraction))
    return docs
