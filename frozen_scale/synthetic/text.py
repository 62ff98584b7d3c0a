"""The world's language: a word-level tokenizer, the LM pretraining corpus and the prompt formats.

Documents have a context sentence (a scene's caption) followed by one or two tasks that refer to
it: a caption task ("caption : <the caption> .") or a question ("question : <q> answer : <a> .").
Prefix training replaces the written context with an image prefix, so the same tasks asked after
an image test whether what the LM learned from text transfers to images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from frozen_scale.synthetic import world

EOS = "<|endoftext|>"
PAD = "<pad>"
UNK = "<unk>"

CAPTION_PROMPT = "caption :"


def question_prompt(question: str) -> str:
    return f"question : {question} answer :"


def context(scene: world.Scene) -> str:
    return f"{world.caption(scene)} ."


def _all_words() -> list[str]:
    words = {"a", "on", "the", "and", "left", "right", ".", ":", "?", "caption", "question", "answer"}
    words.update(world.COLORS, world.SHAPES, world.SIZES, world.NUMBER_WORDS.values())
    for scene_split in world.SPLITS:
        for scene in world.scenes(0, scene_split, 200):
            for q, a in world.questions(scene):
                words.update(q.split())
                words.update(a.split())
    return sorted(words)


def build_tokenizer(out_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on the world's vocabulary; save it if out_dir is given."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=[EOS, PAD, UNK], min_frequency=1)
    tok.train_from_iterator([" ".join(_all_words())], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    fast.clean_up_tokenization_spaces = False
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def document(scene: world.Scene, rng: np.random.Generator, copy_fraction: float) -> str:
    """One pretraining document: the scene's caption as context, then one or two tasks."""
    parts = [context(scene)]
    qa = world.questions(scene)
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < copy_fraction:
            parts.append(f"{CAPTION_PROMPT} {world.caption(scene)} .")
        else:
            q, a = qa[int(rng.integers(len(qa)))]
            parts.append(f"{question_prompt(q)} {a} .")
    return " ".join(parts)


def corpus(seed: int, num_documents: int, copy_fraction: float = 0.5) -> list[str]:
    """The LM's pretraining text. Drawn from every split: the LM knows the whole language;
    only the image-caption pairs of prefix training avoid the held-out combinations."""
    rng = np.random.default_rng([seed, 7])
    docs = []
    for i in range(num_documents):
        split = world.SPLITS[i % len(world.SPLITS)] if i % 10 == 0 else "train"
        scene = world.make_scene(seed + 1000, split, i)
        docs.append(document(scene, rng, copy_fraction))
    return docs
