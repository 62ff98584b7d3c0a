"""The task runner of `frozen-scale eval`: items -> generation (spread over ranks) -> scores.

    model, tokenizer, meta = load_model(export_dir)
    result = run_task(model, tokenizer, meta, "vqa", shots=2, n=200)

Tasks: caption, vqa, fewshot-cls, binding (the paper's protocols; the prompts are
`eval.fewshot`). Items come from webdataset eval shards (`shard_items`) or from a registered
item source (`eval.items`; the built-in world registers one). Blind (`blind=True`) replaces every image by a black one
(`frozen_scale.data.blind`), the prompt unchanged. The eval command (`eval.cli`) and every
evaluation built on the library evaluate through `run_task` or its steps (`predict`, `score`).

Launched with several ranks (torchrun, WORLD_SIZE>1), rank r takes items r, r+W, ... and every
rank gets all predictions back in item order.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from frozen_scale.config import InputError, NotFoundError
from frozen_scale.data import prompts
from frozen_scale.data.blind import black_image
from frozen_scale.eval import fewshot, metrics
from frozen_scale.eval.items import Item, item_source
from frozen_scale.eval.names import assign_nonsense_names

TASKS = ("caption", "vqa", "fewshot-cls", "binding")
ANSWER_TOKENS = {"caption": None, "vqa": 4, "fewshot-cls": 3, "binding": 3}


# -- model ------------------------------------------------------------------------------------
def resolve_export(run: str) -> str:
    """The export folder of RUN (exporting the newest committed checkpoint if there is none)."""
    path = Path(run)
    if (path / "frozen_vlm.json").exists():
        return str(path)
    if (path / "export" / "frozen_vlm.json").exists():
        return str(path / "export")
    if (path / "config.yaml").exists():
        from frozen_scale.train.export import export

        return export(str(path))
    raise NotFoundError(f"{run} is neither an export folder (frozen_vlm.json) nor a training run (config.yaml): "
                        "give the folder `frozen-scale export` wrote, or a run folder of `frozen-scale train`")


def load_model(export_dir: str, device: str | None = None):
    """(model, tokenizer, the export's record) on `device` (default: this rank's GPU if any)."""
    from frozen_scale.model.frozen_vlm import FrozenVLM

    model = FrozenVLM.from_pretrained(export_dir)
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if device is not None:
        model.to(device)
    meta = json.loads((Path(export_dir) / "frozen_vlm.json").read_text())
    return model, model.tokenizer, meta


# -- ranks ------------------------------------------------------------------------------------
def rank_and_world() -> tuple[int, int]:
    """(rank, world size): the launch's process group when started by torchrun with several
    ranks (the same one training uses: NCCL on GPUs), else (0, 1) and no group at all."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from frozen_scale.distributed import engine as dist_engine  # imports DeepSpeed: only when needed

        return dist_engine.init_distributed()
    return 0, 1


def gather_predictions(local: dict[int, str], world_size: int) -> dict[int, str]:
    if world_size == 1:
        return local
    from frozen_scale.distributed import engine as dist_engine

    merged: dict[int, str] = {}
    for part in dist_engine.all_gather_object(local):
        merged.update(part)
    return merged


# -- generation -------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, tokenizer, items: list[Item], *, max_new_tokens: int, num_beams: int = 1,
             batch_size: int = 32, blind: bool = False, progress: bool = True, desc: str = "eval") -> list[str]:
    """Generated continuations of every item's prompt, items spread over the ranks; every rank
    returns all of them in item order. blind: every image replaced by a black one."""
    rank, world_size = rank_and_world()
    model.eval()
    black = black_image(model.cfg.vision.image_size)
    mine = list(range(rank, len(items), world_size))
    local: dict[int, str] = {}
    for start in tqdm(range(0, len(mine), batch_size), desc=desc, disable=not progress or rank != 0,
                      dynamic_ncols=True):
        idx = mine[start:start + batch_size]
        images = [[black] * len(items[i].images) if blind else items[i].images for i in idx]
        texts = model.generate_from_segments(tokenizer, [items[i].segments for i in idx], images,
                                             max_new_tokens=max_new_tokens, num_beams=num_beams)
        local.update(zip(idx, texts))
    merged = gather_predictions(local, world_size)
    return [merged[i] for i in range(len(items))]


def first_sentence(text: str) -> str:
    return re.split(r"[.\n]", text, maxsplit=1)[0].strip()


# -- scoring ----------------------------------------------------------------------------------
def score(task: str, items: list[Item], raw: list[str], tokenize: str = "ptb") -> dict:
    answers = [first_sentence(r) if task != "caption" else r.split("\n")[0].strip() for r in raw]
    if task == "caption":
        answers = [first_sentence(a) if it.meta.get("canonical") else a for a, it in zip(answers, items)]
        result = metrics.caption_scores({it.key: a for it, a in zip(items, answers)},
                                        {it.key: it.answers for it in items}, tokenize=tokenize)
        result = {"cider": result["cider"], "bleu4": result["bleu4"], "exact_match": result["exact_match"],
                  **{k: v for k, v in result.items() if k.startswith("bleu")}}
    elif task == "vqa":
        result = {"vqa_accuracy": metrics.vqa_score({it.key: a for it, a in zip(items, answers)},
                                                    {it.key: it.answers for it in items})}
    else:
        hits = [a.split()[:1] == [it.answers[0]] for a, it in zip(answers, items)]
        result = {"accuracy": float(np.mean(hits))}
    result["n"] = len(items)
    result["examples"] = [
        {"key": it.key, "answers": it.answers[:3], "prediction": r, **{k: v for k, v in it.meta.items() if k != "canonical"}}
        for it, r in list(zip(items, raw))[:8]
    ]
    return result


# -- items ---------------------------------------------------------------------------------------
def effective_shots(task: str, shots: int) -> int:
    return shots if task in ("caption", "vqa") else max(1, shots)


def shard_items(task: str, meta: dict, args, image_size: int) -> list[Item]:
    from frozen_scale.eval import coco, vqa_data

    if task == "caption":
        refs = coco.load_coco_captions(args.captions_json) if args.captions_json else None
        prompt = meta.get("data", {}).get("prompt", "")
        items = []
        for sample in coco.iter_samples(args.shards, image_size):
            answers = refs.get(sample["key"]) if refs is not None else ([sample["txt"]] if sample.get("txt") else None)
            if not answers:
                continue
            segs = [prompts.Image()] + ([prompts.Text(prompt)] if prompt else [])
            items.append(Item(sample["key"], segs, [sample["image"]], list(answers),
                              {"canonical": refs is None}))
            if len(items) == args.num_samples:
                break
        if not items:
            raise InputError(f"no shard sample of {args.shards} has a caption reference: give shards with captions "
                             "(.txt) or --captions-json")
        return items
    if task == "vqa":
        if not (args.questions and args.annotations):
            raise InputError("--task vqa with --shards needs --questions and --annotations (VQAv2 json)")
        questions = vqa_data.load_vqa(args.questions, args.annotations)
        rng = np.random.default_rng([args.seed, 4242, args.shots])
        queries = questions[: args.num_samples]
        shots = []
        for q in queries:
            pool = [i for i in rng.permutation(len(questions))[: 4 * args.shots + 8]
                    if questions[i].image_key != q.image_key]
            shots.append([questions[i] for i in pool[: args.shots]])
        keys = {q.image_key for q in queries} | {s.image_key for ss in shots for s in ss}
        images = {s["key"]: s["image"] for s in coco.iter_samples(args.shards, image_size, keys)}
        missing = sorted(keys - set(images))
        if missing:
            raise InputError(f"{len(missing)} question images are not in the shards, e.g. {missing[:5]} (a shard "
                             "sample's __key__ must be the image id)")
        items = []
        for q, ss in zip(queries, shots):
            shot_list = [(images[s.image_key], s.question, s.answers[0]) for s in ss]
            p = fewshot.nshot_vqa(shot_list, images[q.image_key], q.question, q.answers[0])
            items.append(Item(q.question_id, list(p.segments), list(p.images), list(q.answers),
                              {"question": q.question}))
        return items
    if task == "fewshot-cls":
        return _shard_classification(args, image_size)
    raise InputError(f"--task {task} needs items from an item source (drop --shards)")


def _label(sample: dict, label_key: str) -> str | None:
    if label_key == "txt":
        return sample.get("txt") or None
    field = label_key.removeprefix("json:")
    value = (sample.get("json") or {}).get(field)
    return None if value is None else str(value)


def _shard_classification(args, image_size: int) -> list[Item]:
    """miniImageNet-style episodes from labelled shards: n classes, k support images each named
    with a nonsense word ("This is a dax."), then a query of one of them."""
    from frozen_scale.eval import coco

    by_label: dict[str, list] = {}
    for sample in coco.iter_samples(args.shards, image_size):
        label = _label(sample, args.label_key)
        if label is not None:
            by_label.setdefault(label, []).append(sample["image"])
    ways, shots = args.ways, max(1, args.shots)
    classes = sorted(c for c, imgs in by_label.items() if len(imgs) > shots)
    if len(classes) < ways:
        raise InputError(f"{len(classes)} classes of {args.shards} have more than {shots} images "
                         f"(label {args.label_key}); {ways}-way episodes need {ways}")
    items = []
    for i in range(args.num_samples):
        rng = np.random.default_rng([args.seed, 77, ways, shots, i])
        chosen = [classes[j] for j in rng.choice(len(classes), ways, replace=False)]
        names = assign_nonsense_names(chosen, rng)
        picks = {c: [by_label[c][j] for j in rng.choice(len(by_label[c]), shots + 1, replace=False)] for c in chosen}
        support = [(picks[str(c)][s], names[str(c)]) for s in range(shots) for c in rng.permutation(chosen)]
        query_class = chosen[int(rng.integers(ways))]
        p = fewshot.open_ended_classification(support, picks[query_class][shots], names[query_class],
                                              task_induction=args.task_induction)
        items.append(Item(f"cls-{ways}way{shots}shot-{i:06d}", list(p.segments), list(p.images), [p.answer],
                          {"bound": {names[c]: c for c in chosen}}))
    return items


def predict(model, tokenizer, task: str, items: list[Item], *, blind: bool = False, num_beams: int = 1,
            max_new_tokens: int | None = None, batch_size: int = 32, progress: bool = True) -> list[str]:
    """The model's raw continuation of every item's prompt (the task's answer length unless
    max_new_tokens), in item order; blind: every image replaced by a black one."""
    limit = max_new_tokens or ANSWER_TOKENS[task] or 24
    return generate(model, tokenizer, items, max_new_tokens=limit, num_beams=num_beams, batch_size=batch_size,
                    blind=blind, progress=progress, desc=f"{task}{' blind' if blind else ''}")


def run_task(model, tokenizer, meta: dict, task: str, *, shots: int = 0, ways: int = 2, n: int = 200,
             split: str = "eval", seed: int = 0, blind: bool = False, num_beams: int = 1,
             max_new_tokens: int | None = None, batch_size: int = 32, tokenize: str = "ptb",
             progress: bool = True, items: list[Item] | None = None) -> dict:
    """One task on the given items, or on those the registered item source makes
    (`eval.items`): generate, score."""
    if items is None:
        items = item_source().items(task, meta, tokenizer, seed=seed, split=split, n=n, shots=shots, ways=ways,
                                    image_size=model.cfg.vision.image_size)
    raw = predict(model, tokenizer, task, items, blind=blind, num_beams=num_beams, max_new_tokens=max_new_tokens,
                  batch_size=batch_size, progress=progress)
    result = score(task, items, raw, tokenize)
    result.update(task=task, shots=effective_shots(task, shots), blind=blind, num_beams=num_beams)
    if task == "fewshot-cls":
        result["ways"] = ways
    return result
