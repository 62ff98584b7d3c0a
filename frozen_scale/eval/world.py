"""Evaluation on the built-in world: captioning and zero-shot VQA, each next to a blind baseline.

Images are rendered straight from held-out scenes (no shards needed). Blind = the same prompt
with no image, so the gap to it is what the image contributes.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from tqdm import tqdm

from frozen_scale.data import prompts
from frozen_scale.data.loader import to_tensor
from frozen_scale.synthetic import text, world

_OBJ = re.compile(r"a (?:(small|big) )?(\w+) (circle|square|triangle)")


ATTRIBUTES = ("color", "shape", "size") if len(world.SIZES) > 1 else ("color", "shape")


def parse_caption(caption: str) -> list[dict]:
    """Objects named in a caption, in order: [{'size', 'color', 'shape'}, ...]."""
    return [{"size": s or world.SIZES[-1], "color": c, "shape": h} for s, c, h in _OBJ.findall(caption)]


def attribute_accuracy(pred: str, scene: world.Scene) -> dict[str, float]:
    """Per-attribute accuracy of one caption against the scene (objects matched by position)."""
    got = parse_caption(pred)
    out = {}
    for attr in ATTRIBUTES:
        hits = [i < len(got) and got[i][attr] == getattr(o, attr) for i, o in enumerate(scene.objects)]
        out[attr] = float(np.mean(hits))
    out["count"] = float(len(got) == len(scene.objects))
    return out


def normalize(caption: str) -> str:
    """Lowercase, single spaces, cut at the first full stop (the caption's end)."""
    caption = " ".join(caption.lower().split())
    return caption.split(".", 1)[0].strip()


@torch.no_grad()
def generate_texts(model, tokenizer, sequences: list[list], images: list[torch.Tensor | None], *,
                   max_new_tokens: int, num_beams: int = 1, batch_size: int = 64, desc: str = "generate",
                   progress: bool = True) -> list[str]:
    """Greedy/beam generation for prompts given as segment lists (images in slot order)."""
    model.eval()
    out: list[str] = []
    dev = next(model.prefix.parameters()).device
    for start in tqdm(range(0, len(sequences), batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
        chunk = sequences[start:start + batch_size]
        enc = [prompts.encode(seq, tokenizer, model.k) for seq in chunk]
        batch = prompts.pad_batch(enc, tokenizer.pad_token_id, left=True)
        imgs = [img for img in images[start:start + batch_size] if img is not None]
        pixel = torch.stack(imgs).to(dev) if imgs else None
        new = model.generate(pixel, batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                             max_new_tokens=max_new_tokens, num_beams=num_beams,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out += [s.strip() for s in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


def _images(scenes, image_size, mean, std):
    return [to_tensor(world.render(s, image_size), mean, std) for s in scenes]


def _segments(blind: bool, prompt_text: str) -> list:
    segs = [] if blind else [prompts.Image()]
    return segs + ([prompts.Text(prompt_text)] if prompt_text else [])


def caption_eval(model, tokenizer, *, seed: int, split: str, n: int, prompt: str, image_size: int,
                 mean, std, max_new_tokens: int = 24, num_beams: int = 1, batch_size: int = 64,
                 progress: bool = True) -> dict:
    scenes = list(world.scenes(seed, split, n))
    images = _images(scenes, image_size, mean, std)
    result = {}
    for blind in (False, True):
        seqs = [_segments(blind, prompt) for _ in scenes]
        preds = generate_texts(model, tokenizer, seqs, [None if blind else im for im in images],
                               max_new_tokens=max_new_tokens, num_beams=num_beams, batch_size=batch_size,
                               desc=f"caption{' blind' if blind else ''} ({split})", progress=progress)
        refs = [world.caption(s) for s in scenes]
        exact = float(np.mean([normalize(p) == r for p, r in zip(preds, refs)]))
        attrs = [attribute_accuracy(normalize(p), s) for p, s in zip(preds, scenes)]
        per_attr = {a: float(np.mean([x[a] for x in attrs])) for a in (*ATTRIBUTES, "count")}
        suffix = "_blind" if blind else ""
        result[f"caption_exact_match{suffix}"] = exact
        result[f"caption_attribute_accuracy{suffix}"] = float(np.mean([per_attr[a] for a in ATTRIBUTES]))
        result[f"caption_per_attribute{suffix}"] = per_attr
        result[f"caption_examples{suffix}"] = [
            {"key": s.key, "reference": r, "prediction": p} for s, r, p in list(zip(scenes, refs, preds))[:8]
        ]
    return result


def vqa_eval(model, tokenizer, *, seed: int, split: str, n: int, image_size: int, mean, std,
             batch_size: int = 64, progress: bool = True) -> dict:
    """Zero-shot VQA: image prefix + a question (never seen with images in prefix training)."""
    scenes = list(world.scenes(seed, split, n))
    images = _images(scenes, image_size, mean, std)
    rng = np.random.default_rng([seed, 4242])
    qa = []
    for s in scenes:
        pairs = world.questions(s)
        qa.append(pairs[int(rng.integers(len(pairs)))])
    result = {}
    for blind in (False, True):
        seqs = [_segments(blind, text.question_prompt(q)) for q, _ in qa]
        preds = generate_texts(model, tokenizer, seqs, [None if blind else im for im in images],
                               max_new_tokens=3, batch_size=batch_size,
                               desc=f"vqa{' blind' if blind else ''} ({split})", progress=progress)
        hits = [p.split()[:1] == [a] for p, (_, a) in zip(preds, qa)]
        suffix = "_blind" if blind else ""
        result[f"vqa_zero_shot_accuracy{suffix}"] = float(np.mean(hits))
        result[f"vqa_examples{suffix}"] = [
            {"question": q, "answer": a, "prediction": p} for (q, a), p in list(zip(qa, preds))[:8]
        ]
    return result
