"""`frozen-scale demo`: the whole Frozen pipeline on the built-in world, on CPU, in minutes.

world -> shards (data_prep) -> LM pretraining (the paper's step 1) -> freeze -> prefix training
with DeepSpeed ZeRO-2 on two CPU ranks -> export -> evaluation (captioning and zero-shot VQA,
each against the blind baseline: every image black) -> report.md, metrics.json, loss_curve.png in
the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from frozen_scale.config import FrozenConfig, load_config, save_config
from launchers.local import launch_training

log = logging.getLogger("frozen_scale.world.demo")


def prepare(cfg: FrozenConfig, run_dir: Path, progress: bool = True) -> dict:
    """Shards of the world and the pretrained LM (reused when already in the run folder)."""
    from frozen_scale.world.shards import write_world_shards
    from frozen_scale.world.pretrain_lm import pretrain

    info: dict = {}
    shards = run_dir / "shards"
    t0 = time.perf_counter()
    if not (shards / "manifest.json").exists():
        write_world_shards(str(shards), seed=cfg.world.seed, split="train", count=cfg.world.num_train,
                           samples_per_shard=cfg.world.samples_per_shard, image_size=cfg.model.vision.image_size)
    info["shards_seconds"] = time.perf_counter() - t0
    lm_dir = run_dir / "lm"
    summary_path = lm_dir / "pretrain_summary.json"
    if not summary_path.exists():
        summary = pretrain(cfg.lm_pretrain, str(lm_dir), seed=cfg.world.seed, progress=progress)
        summary_path.write_text(json.dumps(summary, indent=1))
    info["lm"] = json.loads(summary_path.read_text())
    return info


def evaluate(export_dir: str, cfg: FrozenConfig, progress: bool = True) -> dict:
    """Captioning (held-out scenes and held-out colour/shape combinations) and zero-shot VQA, each
    with the image and blind, through the task runner of `frozen-scale eval`."""
    from frozen_scale.eval.tasks import load_model
    from frozen_scale.world.evaluation import caption_eval, vqa_eval

    model, tokenizer, _ = load_model(export_dir)
    common = dict(seed=cfg.world.seed, batch_size=cfg.eval.batch_size, progress=progress)
    metrics = caption_eval(model, tokenizer, split="eval", n=cfg.eval.num_samples, prompt=cfg.data.prompt,
                           max_new_tokens=cfg.eval.max_new_tokens, num_beams=cfg.eval.num_beams, **common)
    held = caption_eval(model, tokenizer, split="heldout_combos", n=min(200, cfg.eval.num_samples),
                        prompt=cfg.data.prompt, max_new_tokens=cfg.eval.max_new_tokens, **common)
    metrics["heldout_combos_caption_exact_match"] = held["caption_exact_match"]
    metrics["heldout_combos_caption_attribute_accuracy"] = held["caption_attribute_accuracy"]
    metrics.update(vqa_eval(model, tokenizer, split="eval", n=cfg.eval.num_samples, **common))
    return metrics


def run_demo(config_path: str | None, run_dir: str, overrides: list[str], nproc: int = 2,
             progress: bool = True) -> dict:
    from frozen_scale.world.report import write_report
    from frozen_scale.train.export import export

    t_start = time.perf_counter()
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config_path, [f"train.run_dir={run / 'prefix'}", *overrides])
    info = prepare(cfg, run, progress)
    cfg.model.lm_path = str((run / "lm").resolve())
    cfg.data.train_shards = str((run / "shards").resolve())
    cfg.train.progress = progress
    train_cfg = run / "prefix_config.yaml"
    save_config(cfg, train_cfg)
    t0 = time.perf_counter()
    # a re-run continues (or, finished, keeps) the prefix run already in the folder
    code = launch_training(train_cfg, nproc, [] if cfg.train.resume else ["train.resume=auto"])
    train_seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"prefix training failed (exit {code}); see the log above")
    export_dir = export(cfg.train.run_dir)
    torch.set_num_threads(os.cpu_count() or 2)
    metrics = evaluate(export_dir, cfg, progress)
    metrics.update(
        train_seconds=train_seconds, total_seconds=time.perf_counter() - t_start, lm_pretrain=info["lm"],
        shards_seconds=info["shards_seconds"], train_steps=cfg.train.steps, world_size=nproc,
        zero_stage=cfg.deepspeed.stage,
    )
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_report(run, metrics, cfg)
    return metrics


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="frozen-scale demo", description=__doc__)
    parser.add_argument("--config", default="configs/tiny-cpu.yaml")
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks (CPU processes)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = args.config if Path(args.config).exists() else None
    m = run_demo(config, args.run_dir, args.overrides, args.nproc, not args.no_progress)
    print(f"\ncaption exact match {m['caption_exact_match']:.3f} (blind {m['caption_exact_match_blind']:.3f}); "
          f"zero-shot VQA {m['vqa_zero_shot_accuracy']:.3f} (blind {m['vqa_zero_shot_accuracy_blind']:.3f}); "
          f"total {m['total_seconds']:.0f} s\nreport: {Path(args.run_dir) / 'report.md'}")
    return 0
