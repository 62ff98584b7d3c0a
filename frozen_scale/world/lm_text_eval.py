"""The world LM's text-only measurements: held-out QA (zero- and few-shot), two-object lookups,
in-context naming (classification, binding) and lookups by names, all greedy on written text.
What an image prefix can carry to the LM is bounded by these."""

from __future__ import annotations

import numpy as np
import torch

from frozen_scale.world import text


@torch.no_grad()
def text_qa_accuracy(model, tokenizer, seed: int, n: int = 200, shots: int = 0) -> float:
    """Held-out text-only QA: written caption + question -> answer (greedy); with `shots` solved
    examples first (other scenes, each its caption, a question and the answer), as n-shot VQA
    prompts put them."""
    from frozen_scale.world import scenes

    rng = np.random.default_rng([seed, 99])
    items = []
    for scene in scenes.scenes(seed + 5000, "eval", n):
        qa = scenes.questions(scene)
        items.append((scene, *qa[int(rng.integers(len(qa)))]))
    return _qa_accuracy(model, tokenizer, items, shots, seed + 6000, np.random.default_rng([seed, 97]))


@torch.no_grad()
def text_lookup_accuracy(model, tokenizer, seed: int, n: int = 200, shots: int = 0) -> float:
    """Held-out two-object lookups in text (`scenes.lookup_questions`: the answer is one object's
    colour or shape, the other object's differs), prompted as `text_qa_accuracy` prompts; chance
    between the scene's two objects is 0.5. Most of text QA's questions name one object or none
    (single-object scenes, counting), so its accuracy can be high while this is at chance."""
    from frozen_scale.world import scenes

    rng = np.random.default_rng([seed, 96])
    held_out = ((s, qa) for s in scenes.scenes(seed + 7000, "eval", 50 * n) if (qa := scenes.lookup_questions(s)))
    items = [(scene, *qa[int(rng.integers(len(qa)))]) for _, (scene, qa) in zip(range(n), held_out)]
    return _qa_accuracy(model, tokenizer, items, shots, seed + 8000, np.random.default_rng([seed, 95]))


def _qa_accuracy(model, tokenizer, items, shots: int, solved_seed: int, shot_rng: np.random.Generator) -> float:
    """(scene, question, answer) items asked after `shots` solved scenes of `solved_seed`."""
    from frozen_scale.world import scenes

    prompts, answers = [], []
    for i, (scene, q, a) in enumerate(items):
        solved = [scenes.make_scene(solved_seed, "eval", i * shots + j) for j in range(shots)]
        head = text.multi_scene_document(solved, shot_rng) + " " if shots else ""
        prompts.append(f"{head}{text.context(scene)} {text.question_prompt(q)}")
        answers.append(a)
    return first_word_accuracy(model, tokenizer, prompts, answers)


@torch.no_grad()
def text_naming_accuracy(model, tokenizer, seed: int, n: int = 200) -> dict:
    """Held-out naming episodes written as text, as the image evaluations ask them: 2-way 1-shot
    classification and 1-shot binding, every scene given by its caption."""
    from frozen_scale.world import episodes
    from frozen_scale.eval.names import NONSENSE_NAMES

    out = {}
    for kind in ("classification", "binding"):
        prompts, answers = [], []
        for i in range(n):
            rng = np.random.default_rng([seed, 98, i])
            ep = (episodes.classification(rng, 2, 1, NONSENSE_NAMES, index=i) if kind == "classification"
                  else episodes.binding(rng, 1, NONSENSE_NAMES, index=i))
            written = text.episode_text(ep)
            prompts.append(written[: written.rindex(f" {ep.answer} .")])
            answers.append(ep.answer)
        out[f"text_{kind}_accuracy"] = first_word_accuracy(model, tokenizer, prompts, answers)
    return out


@torch.no_grad()
def text_name_lookup_accuracy(model, tokenizer, seed: int, n: int = 200) -> float:
    """Held-out lookups by names (`text.name_lookup_text`): the query of the 1-shot binding episodes
    `text_naming_accuracy` asks, its objects' names instead of their shapes, asked the binding
    question by name without the support; chance between the two objects 0.5."""
    from frozen_scale.world import episodes
    from frozen_scale.eval.names import NONSENSE_NAMES

    eps = [episodes.binding(np.random.default_rng([seed, 98, i]), 1, NONSENSE_NAMES, index=i) for i in range(n)]
    return first_word_accuracy(model, tokenizer, [f"{text.name_lookup_query(ep)} {text.question_prompt(ep.question())}"
                                                   for ep in eps], [ep.answer for ep in eps])


def first_word_accuracy(model, tokenizer, prompts: list[str], answers: list[str]) -> float:
    tokenizer.padding_side = "left"
    enc = tokenizer([tokenizer.bos_token + " " + p for p in prompts], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    preds = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return float(np.mean([p.split()[:1] == [a] for p, a in zip(preds, answers)]))
