"""`frozen-scale eval RUN --task {caption,vqa,fewshot-cls,binding}`: the paper's protocols.

RUN is an export folder (`frozen-scale export`), or a training run folder (its export/ is used,
or made from the newest committed checkpoint). Items come from webdataset eval shards (--shards)
or, without them, from the registered item source (the built-in world's: held-out scenes
rendered on the fly):

  caption      generation (greedy, or beam with --num-beams), CIDEr and BLEU-4 from pycocoevalcap,
               exact match; shard references from the sample's txt or a COCO captions json
  vqa          open-ended answers scored with the VQAv2 accuracy; --shots n interleaves n solved
               (image, question, answer) examples before the query; shards need --questions and
               --annotations (VQAv2 json, image id = sample __key__)
  fewshot-cls  open-ended n-way k-shot classification (item source; or labelled shards, --label-key)
  binding      fast concept binding: names bound to shapes in context, then a question (item source)

Launched with several ranks (torchrun, WORLD_SIZE>1), rank r takes items r, r+W, ... and rank 0
gathers the predictions, scores them and writes {RUN}/eval/{name}.json. The work is the task
runner's (`eval.tasks`); this module is the command line around it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from frozen_scale.data.shards import list_shards
from frozen_scale.eval.tasks import (TASKS, effective_shots, load_model, rank_and_world, resolve_export,
                                     run_task, shard_items)
from frozen_scale.eval.items import item_source


def default_name(args) -> str:
    name = args.task + (f"-{effective_shots(args.task, args.shots)}shot" if args.task != "caption" else "")
    if args.task == "fewshot-cls":
        name += f"-{args.ways}way"
    if args.num_beams > 1:
        name += f"-beam{args.num_beams}"
    return name + ("-blind" if args.blind else "") + ("-shards" if args.shards else "")


def _check_source_args(parser, args) -> None:
    """--split and --ways against the item source that will make the items."""
    source = item_source()
    args.split = args.split or source.default_split
    if args.split not in source.splits:
        parser.error(f"--split must be one of {', '.join(source.splits)} ({source.name} items), got {args.split}")
    if args.task == "fewshot-cls" and args.ways > source.max_ways:
        parser.error(f"--ways must be at most {source.max_ways} on {source.name} items")


def eval_main(argv: list[str]) -> int:
    """`frozen-scale eval`; the process group of a multi-rank evaluation is destroyed on every
    way out."""
    try:
        return _eval_main(argv)
    finally:
        if torch.distributed.is_initialized():
            from frozen_scale.distributed import engine as dist_engine

            dist_engine.shutdown()


def _eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="frozen-scale eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="export folder or training run folder")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--shards", default="", help="eval shards (folder with manifest.json, folder of .tar shards "
                        "such as img2dataset's output, or brace pattern)")
    parser.add_argument("--captions-json", default="", help="COCO captions json with the references")
    parser.add_argument("--questions", default="", help="VQAv2 questions json")
    parser.add_argument("--annotations", default="", help="VQAv2 annotations json")
    parser.add_argument("--shots", type=int, default=0, help="solved examples before the query (vqa; "
                        "inner shots per class for fewshot-cls/binding, default 1)")
    parser.add_argument("--ways", type=int, default=2, help="fewshot-cls: classes per episode")
    parser.add_argument("--label-key", default="txt", help="fewshot-cls on shards: the class label, "
                        "'txt' or 'json:FIELD'")
    parser.add_argument("--task-induction", action="store_true",
                        help="fewshot-cls on shards: start with 'Answer with dax or blicket.'")
    parser.add_argument("--num-samples", type=int, default=200, help="items (questions, images, episodes)")
    parser.add_argument("--split", default=None, help="the item source's split (default: its held-out one)")
    parser.add_argument("--seed", type=int, default=0, help="the item source's seed")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blind", action="store_true", help="replace every image by a black one")
    parser.add_argument("--tokenize", default="ptb", choices=("ptb", "simple"),
                        help="caption tokenizer: pycocoevalcap's PTB (java) or a pure-Python approximation")
    parser.add_argument("--out", default=None, help="result json (default RUN/eval/NAME.json)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.shots < 0 or args.num_samples < 1 or args.num_beams < 1:
        parser.error("--shots must be >= 0, --num-samples and --num-beams >= 1")
    if args.ways < 2:
        parser.error("--ways must be >= 2")
    if not args.shards:
        _check_source_args(parser, args)
    if args.shards:  # before any work (an export, a model load); every rank finds the same
        list_shards(args.shards)
    export_dir = resolve_export(args.run)
    model, tokenizer, meta = load_model(export_dir)
    items = shard_items(args.task, meta, args, model.cfg.vision.image_size) if args.shards else None
    result = run_task(model, tokenizer, meta, args.task, shots=args.shots, ways=args.ways, n=args.num_samples,
                      split=args.split, seed=args.seed, blind=args.blind, num_beams=args.num_beams,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      tokenize=args.tokenize, progress=not args.no_progress, items=items)
    rank, _ = rank_and_world()
    if rank == 0:
        out = Path(args.out or Path(args.run) / "eval" / f"{default_name(args)}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        result.update(export=export_dir, source=args.shards or f"{item_source().name}:{args.split}")
        out.write_text(json.dumps(result, indent=1))
        shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
        print(f"{args.task}: {shown} (n={result['n']}) -> {out}")
    return 0
