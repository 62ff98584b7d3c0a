"""The demo's evaluation on the built-in world: captioning and zero-shot VQA, each next to the
blind baseline, through the task runner of `frozen-scale eval` (`eval.tasks`).

Items are held-out scenes rendered on the fly (`world.items`), the same items as
`frozen-scale eval --task caption` and `--task vqa --shots 0` with the same seed. Blind is the
runner's: every image replaced by a black one (`frozen_scale.data.blind`), the prompt unchanged,
so the gap to it is what the image contributes. Captions are scored the world's way: exact match
after normalisation and per-attribute accuracy (objects matched by position).
"""

from __future__ import annotations

import re

import numpy as np

from frozen_scale.world import items as fw
from frozen_scale.eval import tasks
from frozen_scale.world import scenes

_OBJ = re.compile(r"a (?:(small|big) )?(\w+) (circle|square|triangle)")


ATTRIBUTES = ("color", "shape", "size") if len(scenes.SIZES) > 1 else ("color", "shape")


def parse_caption(caption: str) -> list[dict]:
    """Objects named in a caption, in order: [{'size', 'color', 'shape'}, ...]."""
    return [{"size": s or scenes.SIZES[-1], "color": c, "shape": h} for s, c, h in _OBJ.findall(caption)]


def attribute_accuracy(pred: str, scene: scenes.Scene) -> dict[str, float]:
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


def caption_eval(model, tokenizer, *, seed: int, split: str, n: int, prompt: str, max_new_tokens: int = 24,
                 num_beams: int = 1, batch_size: int = 64, progress: bool = True) -> dict:
    """Captions of `n` drawn of `split`, with the image and blind: exact match, attribute accuracy
    (mean and per attribute) and the first examples."""
    drawn = list(scenes.scenes(seed, split, n))
    items = fw.caption_items(seed, split, n, prompt, model.cfg.vision.image_size)
    refs = [it.answers[0] for it in items]
    result = {}
    for blind in (False, True):
        preds = tasks.predict(model, tokenizer, "caption", items, blind=blind, num_beams=num_beams,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
        exact = float(np.mean([normalize(p) == r for p, r in zip(preds, refs)]))
        attrs = [attribute_accuracy(normalize(p), s) for p, s in zip(preds, drawn)]
        per_attr = {a: float(np.mean([x[a] for x in attrs])) for a in (*ATTRIBUTES, "count")}
        suffix = "_blind" if blind else ""
        result[f"caption_exact_match{suffix}"] = exact
        result[f"caption_attribute_accuracy{suffix}"] = float(np.mean([per_attr[a] for a in ATTRIBUTES]))
        result[f"caption_per_attribute{suffix}"] = per_attr
        result[f"caption_examples{suffix}"] = [
            {"key": s.key, "reference": r, "prediction": p} for s, r, p in list(zip(drawn, refs, preds))[:8]
        ]
    return result


def vqa_eval(model, tokenizer, *, seed: int, split: str, n: int, batch_size: int = 64,
             progress: bool = True) -> dict:
    """Zero-shot VQA (`frozen-scale eval --task vqa --shots 0`): image prefix + a question never
    seen with images in prefix training, with the image and blind."""
    result = {}
    for blind in (False, True):
        r = tasks.run_task(model, tokenizer, {}, "vqa", shots=0, n=n, split=split, seed=seed, blind=blind,
                           batch_size=batch_size, progress=progress)
        suffix = "_blind" if blind else ""
        result[f"vqa_zero_shot_accuracy{suffix}"] = r["vqa_accuracy"]
        result[f"vqa_examples{suffix}"] = [
            {"question": e["question"], "answer": e["answers"][0], "prediction": e["prediction"]}
            for e in r["examples"]
        ]
    return result
