"""`frozen-scale reproduce`: the Frozen paper's ablation on the built-in world, in one command.

Variants (Tsimpoukelli et al. 2021, Table 1), each trained on the world's captions only:
  frozen     pretrained LM, frozen; only the vision prefix trains (the method)
  finetuned  the same pretrained LM, finetuned together with the prefix
  scratch    an LM of the same shape, randomly initialised (no text pretraining), trained with
             the prefix on the caption task only
  blind      pretrained LM, frozen; the prefix is trained and evaluated on black images, so it
             can only learn a constant prompt (the language prior alone)
Each is evaluated on captioning (CIDEr, BLEU-4, exact match), zero-shot and 2-shot VQA (the
questions were never seen with images), open-ended 2-way 1-shot classification and fast
concept binding. Writes {run}/ablation.md, ablation.json and ablation.png.

The LM's text includes naming episodes (configs/reproduce-cpu.yaml: lm_pretrain.naming_steps,
naming_fraction), so that the few-shot tasks probe an ability the LM has in text; the table's
header gives the LM's text-only accuracy on them, the ceiling for what can transfer to images.

The run config is configs/tiny-cpu.yaml with configs/reproduce-cpu.yaml laid over it (then dotted
overrides). Finished stages are reused when the command is run again on the same folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
from pathlib import Path

import yaml

from frozen_scale.config import FrozenConfig, apply_overrides, deep_merge, from_dict, save_config
from launchers.local import launch_training

log = logging.getLogger("frozen_scale.app.reproduce")

VARIANTS = {
    "frozen": {"lm": "pretrained", "train_lm": False, "blind": False},
    "finetuned": {"lm": "pretrained", "train_lm": True, "blind": False},
    "scratch": {"lm": "scratch", "train_lm": True, "blind": False},
    "blind": {"lm": "pretrained", "train_lm": False, "blind": True},
}
# (column, task, keyword arguments of eval.tasks.run_task, metric)
EVALS = (
    ("caption_cider", "caption", {}, "cider"),
    ("caption_bleu4", "caption", {}, "bleu4"),
    ("caption_exact", "caption", {}, "exact_match"),
    ("vqa_0shot", "vqa", {"shots": 0}, "vqa_accuracy"),
    ("vqa_2shot", "vqa", {"shots": 2}, "vqa_accuracy"),
    ("cls_2way_1shot", "fewshot-cls", {"shots": 1, "ways": 2}, "accuracy"),
    ("binding_1shot", "binding", {"shots": 1}, "accuracy"),
)
QUICK = [
    "lm_pretrain.n_layer=2", "lm_pretrain.n_embd=32", "lm_pretrain.n_head=2", "lm_pretrain.steps=5",
    "lm_pretrain.num_documents=100", "lm_pretrain.batch_size=8", "lm_pretrain.naming_steps=2",
    "world.num_train=48",
    "world.samples_per_shard=24", "model.vision.image_size=16", "model.vision.resnet_widths=[8,16]",
    "model.prefix_length=2", "train.steps=2", "train.micro_batch_size=4", "train.log_every=1",
    "train.warmup_steps=0", "checkpoint.every=0", "data.shuffle_buffer=8", "data.num_workers=0",
    "eval.num_samples=4", "eval.max_new_tokens=8", "train.tensorboard=false",
]


def load_reproduce_config(base: str | None, overlay: str | None, overrides: list[str]) -> FrozenConfig:
    data: dict = {}
    for path in (base, overlay):
        if path:
            data = deep_merge(data, yaml.safe_load(Path(path).read_text()) or {})
    return from_dict(FrozenConfig, apply_overrides(data, list(overrides)))


# -- inputs -----------------------------------------------------------------------------------
def write_shards(out: Path, cfg: FrozenConfig, blind: bool) -> Path:
    """The world's training scenes as shards (black images when blind), written in this process;
    a finished folder is kept as it is."""
    from data_prep.synthetic import write_world_shards

    write_world_shards(str(out), seed=cfg.world.seed, split="train", count=cfg.world.num_train,
                       samples_per_shard=cfg.world.samples_per_shard, image_size=cfg.model.vision.image_size,
                       blind=blind, num_workers=0)
    return out


def pretrained_lm(run: Path, cfg: FrozenConfig, progress: bool) -> tuple[Path, dict]:
    from frozen_scale.train.pretrain_lm import pretrain

    out = run / "lm"
    summary = out / "pretrain_summary.json"
    if not summary.exists():
        result = pretrain(cfg.lm_pretrain, str(out), seed=cfg.world.seed, progress=progress)
        summary.write_text(json.dumps(result, indent=1))
    return out, json.loads(summary.read_text())


def scratch_lm(run: Path, cfg: FrozenConfig) -> Path:
    """An LM of the pretrained one's shape, randomly initialised: no text pretraining."""
    import torch
    from transformers import AutoModelForCausalLM

    from frozen_scale.synthetic import text
    from frozen_scale.train.pretrain_lm import tiny_lm_config, uses_naming

    out = run / "lm_scratch"
    if (out / "config.json").exists():
        return out
    pc = cfg.lm_pretrain
    tok = text.build_tokenizer(naming=uses_naming(pc))
    lm_cfg = tiny_lm_config(pc.arch, len(tok), pc.n_layer, pc.n_embd, pc.n_head, max(64, pc.seq_len * 2),
                            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(cfg.world.seed)
    AutoModelForCausalLM.from_config(lm_cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


# -- one variant ------------------------------------------------------------------------------
def variant_config(cfg: FrozenConfig, run: Path, name: str, lm_dir: Path, shards: Path) -> Path:
    spec = VARIANTS[name]
    vcfg = copy.deepcopy(cfg)
    vcfg.train.run_dir = str((run / name / "prefix").resolve())
    vcfg.model.lm_path = str(lm_dir.resolve())
    vcfg.model.train_lm = spec["train_lm"]
    vcfg.data.train_shards = str(shards.resolve())
    path = run / name / "train_config.yaml"
    save_config(vcfg, path)
    return path


def evaluate_variant(export_dir: str, cfg: FrozenConfig, blind: bool, progress: bool) -> dict:
    from frozen_scale.eval import tasks

    model, tokenizer, meta = tasks.load_model(export_dir)
    scores, details, cache = {}, {}, {}
    for column, task, kwargs, metric in EVALS:
        key = (task, tuple(sorted(kwargs.items())))
        if key not in cache:
            limit = cfg.eval.max_new_tokens if task == "caption" else None
            cache[key] = tasks.run_task(model, tokenizer, meta, task, n=cfg.eval.num_samples, seed=cfg.world.seed,
                                      blind=blind, max_new_tokens=limit, batch_size=cfg.eval.batch_size,
                                      progress=progress, **kwargs)
            details["-".join([task, *(f"{k}{v}" for k, v in sorted(kwargs.items()))])] = cache[key]
        scores[column] = cache[key][metric]
    return {"scores": scores, "details": details}


def run_variant(name: str, cfg: FrozenConfig, run: Path, lm_dir: Path, shards: Path, nproc: int,
                progress: bool) -> dict:
    from frozen_scale.train.export import export

    done = run / name / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    config_path = variant_config(cfg, run, name, lm_dir, shards)
    t0 = time.perf_counter()
    overrides = [] if progress else ["train.progress=false"]
    code = launch_training(config_path, nproc, overrides)
    train_seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"training of variant '{name}' failed (exit {code}); see the log above")
    export_dir = export(str(run / name / "prefix"))
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    t1 = time.perf_counter()
    result = evaluate_variant(export_dir, cfg, VARIANTS[name]["blind"], progress)
    result.update(variant=name, **VARIANTS[name], train_seconds=train_seconds,
                  eval_seconds=time.perf_counter() - t1, final_loss=_final_loss(run / name / "prefix"))
    done.write_text(json.dumps(result, indent=1))
    return result


def _final_loss(prefix_run: Path) -> float | None:
    from frozen_scale.train.metrics import read_metrics

    losses = [r["loss"] for r in read_metrics(str(prefix_run)) if "loss" in r]
    return losses[-1] if losses else None


# -- report -----------------------------------------------------------------------------------
def write_table(run: Path, results: dict[str, dict], info: dict) -> Path:
    columns = [c for c, *_ in EVALS]
    lines = ["| variant | " + " | ".join(columns) + " | final train loss | train s |",
             "|---|" + "---|" * (len(columns) + 2)]
    for name, r in results.items():
        cells = [f"{r['scores'][c]:.3f}" for c in columns]
        loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {loss} | {r['train_seconds']:.0f} |")
    lm = info.get("lm", {})
    naming = ""
    if "text_binding_accuracy" in lm:
        naming = (f", with naming episodes written as text: 2-way 1-shot classification "
                  f"{lm['text_classification_accuracy']:.3f}, binding {lm['text_binding_accuracy']:.3f}")
    head = [
        "# The Frozen ablation on the built-in world",
        "",
        f"LM: {lm.get('arch')} with {lm.get('parameters', 0):,} parameters, pretrained {info['lm_steps']} steps "
        f"on the world's text (text-only QA accuracy {lm.get('text_qa_accuracy', float('nan')):.3f}{naming}). "
        f"Prefix training: {info['train_steps']} steps x {info['batch']} captions on {info['nproc']} rank(s). "
        f"Evaluation: {info['num_samples']} held-out items per task, greedy decoding. "
        f"Wall time {info['total_seconds']:.0f} s.",
        "",
    ]
    finding = info.get("finding")
    tail = ["", finding, ""] if finding else [""]
    path = run / "ablation.md"
    path.write_text("\n".join(head + lines + tail))
    return path


def finding(results: dict[str, dict]) -> str | None:
    if "frozen" not in results or "finetuned" not in results:
        return None
    f, t = results["frozen"]["scores"]["vqa_0shot"], results["finetuned"]["scores"]["vqa_0shot"]
    verdict = "held" if f > t else ("could not be told apart (a tie)" if f == t else "did not hold")
    return (f"Paper's finding (frozen > finetuned on zero-shot VQA) {verdict} here: "
            f"frozen {f:.3f} vs finetuned {t:.3f}.")


def plot(run: Path, results: dict[str, dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    acc_cols = [c for c, *_ in EVALS if c not in ("caption_cider",)]
    fig, (ax_c, ax_a) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 4]})
    ax_c.bar(names, [results[n]["scores"]["caption_cider"] for n in names], color=[f"C{i}" for i in range(len(names))])
    ax_c.set_title("captioning CIDEr")
    ax_c.tick_params(axis="x", rotation=45)
    width = 0.8 / len(names)
    x = np.arange(len(acc_cols))
    for i, n in enumerate(names):
        ax_a.bar(x + i * width, [results[n]["scores"][c] for c in acc_cols], width, label=n, color=f"C{i}")
    ax_a.set_xticks(x + width * (len(names) - 1) / 2, acc_cols, rotation=20)
    ax_a.set_ylim(0, 1.05)
    ax_a.set_title("accuracy / BLEU-4")
    ax_a.legend()
    fig.tight_layout()
    path = run / "ablation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- entry ------------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_same_config(run: Path, cfg: FrozenConfig) -> None:
    """Finished stages are reused, so a folder must not mix two configurations."""
    from frozen_scale.config import to_dict

    old_path = run / "config.yaml"
    if not old_path.exists():
        return
    old, new = _flatten(yaml.safe_load(old_path.read_text()) or {}), _flatten(to_dict(cfg))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:6])
        raise SystemExit(f"{run} holds a reproduce run with another config ({shown}"
                         f"{', ...' if len(differ) > 6 else ''}); its finished stages would be reused. "
                         f"Use another --run-dir, or delete {run} to start over.")


def reproduce(run_dir: str, cfg: FrozenConfig, *, nproc: int, variants: list[str], progress: bool) -> dict:
    t_start = time.perf_counter()
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    check_same_config(run, cfg)
    save_config(cfg, run / "config.yaml")
    timings = {}
    t = time.perf_counter()
    shards = write_shards(run / "shards", cfg, blind=False)
    blind_shards = write_shards(run / "shards_blind", cfg, blind=True) if "blind" in variants else None
    timings["shards"] = time.perf_counter() - t
    t = time.perf_counter()
    lm_dir, lm_summary = pretrained_lm(run, cfg, progress)
    timings["lm_pretrain"] = time.perf_counter() - t
    results = {}
    for name in variants:
        spec = VARIANTS[name]
        lm = scratch_lm(run, cfg) if spec["lm"] == "scratch" else lm_dir
        log.info("variant %s: training", name)
        results[name] = run_variant(name, cfg, run, lm, blind_shards if spec["blind"] else shards, nproc, progress)
        timings[name] = results[name]["train_seconds"] + results[name]["eval_seconds"]
        log.info("variant %s: %s", name, results[name]["scores"])
    info = {"lm": lm_summary, "lm_steps": cfg.lm_pretrain.steps, "train_steps": cfg.train.steps,
            "batch": cfg.train.micro_batch_size * cfg.train.grad_accum * nproc, "nproc": nproc,
            "num_samples": cfg.eval.num_samples, "finding": finding(results)}
    info["total_seconds"] = time.perf_counter() - t_start
    info["timings"] = timings
    write_table(run, results, info)
    plot(run, results)
    out = {"info": info, "variants": {n: {k: v for k, v in r.items() if k != "details"} for n, r in results.items()}}
    (run / "ablation.json").write_text(json.dumps(out, indent=1))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="frozen-scale reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/reproduce")
    parser.add_argument("--base", default="configs/tiny-cpu.yaml", help="run config the ablation starts from")
    parser.add_argument("--config", default="configs/reproduce-cpu.yaml", help="overrides laid over --base")
    parser.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks (CPU processes) per training")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of "
                        + ", ".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds of training)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    for path in (args.base, args.config):
        if path and not Path(path).exists():
            parser.error(f"config {path} not found")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_reproduce_config(args.base, args.config, (QUICK if args.quick else []) + args.overrides)
    out = reproduce(args.run_dir, cfg, nproc=args.nproc, variants=variants, progress=not args.no_progress)
    print(Path(args.run_dir, "ablation.md").read_text())
    print(f"total {out['info']['total_seconds']:.0f} s; table {Path(args.run_dir) / 'ablation.md'}, "
          f"plot {Path(args.run_dir) / 'ablation.png'}")
    return 0
