"""Probes of why few-shot prompts fail or work on the built-in world: the same episodes with some
scenes written as text, and the same captions at shifted positions.

- `episode_items(..., written=...)`: classification or binding episodes in which the support,
  the query, both or neither are written as their captions instead of shown as images. With
  everything written the prompt is the LM's own text (its ceiling); with nothing written it is
  the image evaluation. The two mixed layouts tell which side of the prompt the prefix fails on:
  being read as support after other text, or being the query after it.
- `caption_accuracy_at_offsets`: teacher-forced caption accuracy of a trained prefix with every
  position id shifted by an offset (the image at positions offset+1.., the text the same), or with
  other captions written before the image (`text_before`, positions natural). An LM with learned
  absolute positions (GPT-2) sees its prefix at positions it was never trained at; a rotary one
  (Llama) is unchanged by a shift by construction. The written caption at the same places is the
  control: how far the LM itself depends on where a caption stands.
"""

from __future__ import annotations

import numpy as np
import torch

from frozen_scale.data import prompts
from frozen_scale.world import items as fw
from frozen_scale.world import episodes, scenes, text

WRITTEN = ("none", "support", "query", "all")
"""Which scenes of an episode are written as captions instead of shown."""


def _scene_segments(scene: scenes.Scene, written: bool, image_size: int, images: list) -> list:
    if written:
        return [prompts.Text(text.context(scene))]
    images.append(scenes.render(scene, image_size))
    return [prompts.Image()]


def episode_items(kind: str, seed: int, n: int, image_size: int, language: fw.NamingLanguage,
                  written: str = "none") -> list[fw.Item]:
    """The evaluation's 2-way 1-shot classification or 1-shot binding episodes (the same rng as
    `fewshot_world`), with the `written` scenes given as their captions."""
    if written not in WRITTEN:
        raise ValueError(f"written must be one of {WRITTEN}, got {written!r}")
    items = []
    for i in range(n):
        if kind == "classification":
            rng = np.random.default_rng([seed, 77, 2, 1, i])
            ep = episodes.classification(rng, 2, 1, language.names, "eval", i)
            tail = language.query
        elif kind == "binding":
            rng = np.random.default_rng([seed, 88, 1, i])
            ep = episodes.binding(rng, 1, language.names, "eval", i)
            tail = text.question_prompt(ep.question())
        else:
            raise ValueError(f"kind must be classification or binding, got {kind!r}")
        segments, images = [], []
        for scene, name in ep.support:
            segments += _scene_segments(scene, written in ("support", "all"), image_size, images)
            segments.append(prompts.Text(language.template.format(name=name)))
        segments += _scene_segments(ep.query, written in ("query", "all"), image_size, images)
        segments.append(prompts.Text(tail))
        items.append(fw.Item(f"{kind}-{written}-{i:06d}", segments, images, [ep.answer]))
    return items


@torch.no_grad()
def caption_accuracy_at_offsets(model, tokenizer, *, seed: int, n: int, offsets, prompt: str = "caption :",
                                written: bool = False, text_before: int = 0) -> dict[int, float]:
    """offset -> fraction of held-out captions whose every word (the end token aside: after a written
    caption the LM's text goes on with " .") is the LM's argmax, teacher forced, with position ids offset.. instead of 0.. (written: the caption given as text first,
    no image: the LM's own copying at the same positions). text_before: that many other held-out
    captions written first ("a blue square ."), position ids natural: the image at later positions
    after real text, as in a few-shot prompt."""
    from frozen_scale.data.loader import to_tensor

    v = model.cfg.vision
    drawn = list(scenes.scenes(seed, "eval", n))
    encoded, pixels = [], []
    for i, scene in enumerate(drawn):
        head = [prompts.Text(text.context(scene))] if written else [prompts.Image()]
        if text_before:
            others = " ".join(text.context(drawn[(i + j + 1) % len(drawn)]) for j in range(text_before))
            head = [prompts.Text(others)] + head
        segments = head + [prompts.Text(prompt), prompts.Text(" " + scenes.caption(scene), target=True)]
        encoded.append(prompts.encode(segments, tokenizer, model.k, add_eos_to_target=False))
        if not written:
            pixels.append(to_tensor(scenes.render(scene, v.image_size), v.mean, v.std))
    batch = prompts.pad_batch(encoded, tokenizer.pad_token_id)
    dev = next(model.prefix.parameters()).device
    embeds, mask, _ = model.embed_images(batch["input_ids"].to(dev), torch.stack(pixels).to(dev) if pixels else None,
                                         batch["attention_mask"].to(dev))
    labels = batch["labels"][:, 1:].to(dev)
    out = {}
    for offset in offsets:  # positions skip a word prefix's blank slots, as the LM reads them
        positions = prompts.position_ids(mask) + int(offset)
        logits = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits
        hit = (logits[:, :-1].argmax(-1) == labels) | (labels == prompts.IGNORE)
        out[int(offset)] = float(hit.all(dim=1).float().mean())
    return out


@torch.no_grad()
def lexical_readout(model, tokenizer, *, seed: int, n: int) -> dict | None:
    """What a lexical prefix (`model.prefix_kind=lexical`) writes for held-out drawn: each slot's
    most weighted word, read as text. Returns, per object count, the fraction of drawn whose
    slots spell the start of the scene's written context ("a red circle ." in k=4 slots), the mean
    weight of each slot's top word, and examples; None for a continuous prefix."""
    from frozen_scale.data.loader import to_tensor

    if not hasattr(model.prefix, "token_weights"):
        return None
    v = model.cfg.vision
    drawn = list(scenes.scenes(seed, "eval", n))
    pixels = torch.stack([to_tensor(scenes.render(s, v.image_size), v.mean, v.std) for s in drawn])
    dev = next(model.prefix.parameters()).device
    weights = model.prefix.token_weights(model.vision(pixels.to(dev)), model.lm.get_input_embeddings()).float().cpu()
    top, ids = weights.max(-1)
    out: dict = {}
    for count in (1, 2):
        rows = [i for i, s in enumerate(drawn) if len(s.objects) == count]
        if not rows:
            continue
        spelled, examples = 0, []
        for i in rows:  # a word prefix's blank slots (the pad token) write nothing
            written = tokenizer.convert_ids_to_tokens([t for t in ids[i].tolist() if t != tokenizer.pad_token_id])
            context = text.context(drawn[i]).split()[: model.k]
            spelled += written == context
            if len(examples) < 4:
                examples.append({"scene": scenes.caption(drawn[i]), "writes": " ".join(written)})
        out[f"{count}_object"] = {"spells_context": spelled / len(rows), "n": len(rows),
                                  "top_weight": float(top[rows].mean()), "examples": examples}
    return out


OFFSETS = (0, 1, 8, 32)
TEXT_BEFORE = (0, 1, 2, 3)


def run_probes(model, tokenizer, *, seed: int, n: int, batch_size: int = 50, progress: bool = False) -> dict:
    """Both probes on `n` held-out items: accuracy of every written layout of both episode kinds,
    and caption accuracy at OFFSETS and after TEXT_BEFORE written captions, shown and written."""
    from frozen_scale.eval import tasks

    language = fw.naming_language(tokenizer)
    out: dict = {"episodes": {}, "caption_at_offset": {}}  # caption_after_text added below
    for kind, task in (("classification", "fewshot-cls"), ("binding", "binding")):
        for written in WRITTEN:
            items = episode_items(kind, seed, n, model.cfg.vision.image_size, language, written)
            result = tasks.run_task(model, tokenizer, {}, task, items=items, batch_size=batch_size, progress=progress)
            out["episodes"][f"{kind}-{written}"] = {"accuracy": result["accuracy"], "n": result["n"],
                                                    "examples": result["examples"][:4]}
    out["caption_after_text"] = {}
    for written in (False, True):
        shown = "written" if written else "image"
        out["caption_at_offset"][shown] = caption_accuracy_at_offsets(model, tokenizer, seed=seed, n=n,
                                                                      offsets=OFFSETS, written=written)
        out["caption_after_text"][shown] = {
            m: caption_accuracy_at_offsets(model, tokenizer, seed=seed, n=n, offsets=(0,), written=written,
                                           text_before=m)[0] for m in TEXT_BEFORE}
    readout = lexical_readout(model, tokenizer, seed=seed, n=n)
    if readout is not None:
        out["lexical_readout"] = readout
    return out
