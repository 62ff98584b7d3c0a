"""The Frozen paper's ablation on the built-in world, one seed: the variants, their inputs, their
training and their evaluation on the dev and test splits (`frozen-scale reproduce`, whose command
line and seeds are `world.reproduce_main`).

Variants (Tsimpoukelli et al. 2021, Table 1), each trained on the world's captions only:
  frozen     pretrained LM, frozen; only the vision prefix trains (the method)
  finetuned  the same pretrained LM, finetuned together with the prefix
  scratch    an LM of the same shape, randomly initialised (no text pretraining), trained with
             the prefix on the caption task only
  blind      pretrained LM, frozen; the prefix is trained and evaluated on black images, so it
             can only learn a constant prompt (the language prior alone)
The prefix is the paper's (METHOD); settings of it (PAPER_SETTINGS) are chosen on the dev split,
and every number reported is on the test split. Prefixes that change the method (BASELINES) are
trained only as labelled baselines.
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
from frozen_scale.world.items import DEV_SPLIT, TEST_SPLIT
from frozen_scale.world.reproduce_report import (EVALS, FEWSHOT_COLUMNS, chance_level, dev_score, finding,  # noqa: F401
                                               fewshot_score, plot, text_ceilings, wilson_interval, write_table)
from launchers.local import launch_training

log = logging.getLogger("frozen_scale.world.reproduce")

VARIANTS = {
    "frozen": {"lm": "pretrained", "train_lm": False, "blind": False},
    "finetuned": {"lm": "pretrained", "train_lm": True, "blind": False},
    "scratch": {"lm": "scratch", "train_lm": True, "blind": False},
    "blind": {"lm": "pretrained", "train_lm": False, "blind": True},
}
# Training settings of the frozen prefix measured before the variants: each trains the frozen
# variant on the same LM and shards and is evaluated on the dev split's items; the one with the best
# dev few-shot score (FEWSHOT_COLUMNS) is then used for every variant, which are reported on test.
CANDIDATES = {
    "single": [],  # the paper's training: one image-caption pair per sequence, the image first
    "offset": ["data.text_before_image=3"],  # 0-3 other captions written before the image
    "interleaved": ["data.images_per_sequence=3"],  # 1-3 pairs per sequence, loss on every caption
    "lexical": ["model.prefix_kind=lexical"],  # each prefix vector a mixture of the LM's token embeddings
    "lexical_hard": ["model.prefix_kind=lexical_hard"],  # each prefix vector one of the LM's token embeddings
    # the image writes up to 14 of the LM's words (the longest caption and its "."), blanks masked out
    "words": ["model.prefix_kind=words", "model.prefix_length=14", "train.lr=0.003"],
}
PAPER_SETTINGS = ("single", "offset", "interleaved")
"""Settings of the paper's method: continuous prefix vectors trained by the caption loss alone."""
BASELINES = {
    "lexical": "lexical prefix (mixtures of the LM's token embeddings)",
    "lexical_hard": "lexical prefix (one LM token embedding a slot)",
    "words": "caption-then-read (supervised captioner feeding text)",
}
"""Settings that change the method, reported only as labelled baselines beside the headline."""
DEFAULT_CANDIDATES = ("single",)
LM_LR_SWEEP = (1.0, 0.1)
"""The LM's lr of the variants that train it (finetuned, scratch), as fractions of the LM's
pretraining peak (`lm_pretrain.lr`), the prefix keeping its own (`train.lm_lr`): each is
trained at every one and the best on dev is reported."""
METHOD = "the paper's prefix: continuous vectors from the vision encoder, trained by the caption loss alone"
QUICK = [
    "lm_pretrain.n_layer=2", "lm_pretrain.n_embd=32", "lm_pretrain.n_head=2", "lm_pretrain.steps=5",
    "lm_pretrain.num_documents=100", "lm_pretrain.batch_size=8", "lm_pretrain.naming_steps=2",
    "lm_pretrain.continue_steps=2",
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


def quick_overrides(base: str | None, overlay: str | None) -> list[str]:
    """QUICK for this config: a lookup phase (`lm_pretrain.lookup_steps`), if it has one, cut to one
    step, so that it still runs within QUICK's five LM steps."""
    cfg = load_reproduce_config(base, overlay, [])
    return QUICK + (["lm_pretrain.lookup_steps=1"] if cfg.lm_pretrain.lookup_steps else [])


def candidate_config(cfg: FrozenConfig, name: str) -> FrozenConfig:
    from frozen_scale.config import to_dict

    return from_dict(FrozenConfig, apply_overrides(to_dict(cfg), list(CANDIDATES[name])))


# -- inputs -----------------------------------------------------------------------------------
def write_shards(out: Path, cfg: FrozenConfig, blind: bool) -> Path:
    """The world's training scenes as shards (black images when blind), written in this process;
    a finished folder is kept as it is."""
    from frozen_scale.world.shards import write_world_shards

    write_world_shards(str(out), seed=cfg.world.seed, split="train", count=cfg.world.num_train,
                       samples_per_shard=cfg.world.samples_per_shard, image_size=cfg.model.vision.image_size,
                       blind=blind, num_workers=0)
    return out


def pretrained_lm(run: Path, cfg: FrozenConfig, progress: bool) -> tuple[Path, dict]:
    from frozen_scale.world.pretrain_lm import pretrain

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

    from frozen_scale.world import text
    from frozen_scale.world.pretrain_lm import positions, tiny_lm_config, uses_naming

    out = run / "lm_scratch"
    if (out / "config.json").exists():
        return out
    pc = cfg.lm_pretrain
    tok = text.build_tokenizer(naming=uses_naming(pc))
    lm_cfg = tiny_lm_config(pc.arch, len(tok), pc.n_layer, pc.n_embd, pc.n_head, positions(pc),
                            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(cfg.world.seed)
    AutoModelForCausalLM.from_config(lm_cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


# -- one variant ------------------------------------------------------------------------------
def variant_config(cfg: FrozenConfig, run: Path, name: str, lm_dir: Path, shards: Path,
                   folder: str | None = None) -> Path:
    spec = VARIANTS[name]
    folder = folder or name
    vcfg = copy.deepcopy(cfg)
    vcfg.train.run_dir = str((run / folder / "prefix").resolve())
    vcfg.model.lm_path = str(lm_dir.resolve())
    vcfg.model.train_lm = spec["train_lm"]
    vcfg.data.train_shards = str(shards.resolve())
    path = run / folder / "train_config.yaml"
    save_config(vcfg, path)
    return path


def evaluate_split(model, tokenizer, meta: dict, cfg: FrozenConfig, split: str, blind: bool, progress: bool) -> dict:
    """Every column of EVALS on `split`'s items: scores, Wilson intervals, chance levels, details.
    The `_novel` columns only for an LM whose vocabulary has the second name pool."""
    from frozen_scale.eval import tasks
    from frozen_scale.world.items import WORLD_ITEMS, naming_language

    scores, intervals, chance, details, cache = {}, {}, {}, {}, {}
    for column, task, kwargs, metric in EVALS:
        names = kwargs.get("names", "paper")
        if names == "novel":
            try:
                naming_language(tokenizer, "novel")
            except ValueError:
                continue
        key = (task, tuple(sorted(kwargs.items())))
        if key not in cache:
            shape = {k: v for k, v in kwargs.items() if k in ("shots", "ways")}
            items = WORLD_ITEMS.items(task, meta, tokenizer, seed=cfg.world.seed, split=split, n=cfg.eval.num_samples,
                                      shots=shape.get("shots", 0), ways=shape.get("ways", 2),
                                      image_size=model.cfg.vision.image_size, names=names)
            limit = cfg.eval.max_new_tokens if task == "caption" else None
            cache[key] = tasks.run_task(model, tokenizer, meta, task, split=split, seed=cfg.world.seed, blind=blind,
                                        max_new_tokens=limit, batch_size=cfg.eval.batch_size, progress=progress,
                                        items=items, **shape)
            cache[key]["chance"] = chance_level(task, items, shape.get("ways", 2))
            details["-".join([task, *(f"{k}{v}" for k, v in sorted(kwargs.items()))])] = cache[key]
        scores[column] = cache[key][metric]
        chance[column] = cache[key]["chance"]
        if metric in ("accuracy", "vqa_accuracy", "exact_match"):
            intervals[column] = wilson_interval(scores[column], cache[key]["n"])
    return {"split": split, "scores": scores, "intervals": intervals, "chance": chance, "details": details}


def evaluate_variant(export_dir: str, cfg: FrozenConfig, blind: bool, progress: bool) -> dict:
    """The test split's scores (the headline), with the dev split's beside them under "dev"."""
    from frozen_scale.eval import tasks

    model, tokenizer, meta = tasks.load_model(export_dir)
    dev = evaluate_split(model, tokenizer, meta, cfg, DEV_SPLIT, blind, progress)
    test = evaluate_split(model, tokenizer, meta, cfg, TEST_SPLIT, blind, progress)
    dev.pop("details")
    return {**test, "dev": dev}


def run_variant(name: str, cfg: FrozenConfig, run: Path, lm_dir: Path, shards: Path, nproc: int,
                progress: bool, folder: str | None = None, setting: str = "single", probe: bool = False) -> dict:
    """Train and evaluate one variant in run/folder (default: its name) with the candidate
    `setting`; a finished folder of the same setting is reused. probe: also the mechanism probes
    (`world.probes`)."""
    from frozen_scale.train.export import export

    folder = folder or name
    done = run / folder / "results.json"
    if done.exists():
        result = json.loads(done.read_text())
        if result.get("setting", "single") == setting and (not probe or "probes" in result):
            return result
    config_path = variant_config(cfg, run, name, lm_dir, shards, folder)
    t0 = time.perf_counter()
    overrides = ["train.resume=auto"]  # a variant interrupted before its results continues
    overrides += [] if progress else ["train.progress=false"]
    code = launch_training(config_path, nproc, overrides)
    train_seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"training of variant '{name}' failed (exit {code}); see the log above")
    export_dir = export(str(run / folder / "prefix"))
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    t1 = time.perf_counter()
    result = evaluate_variant(export_dir, cfg, VARIANTS[name]["blind"], progress)
    if probe:
        result["probes"] = probe_variant(export_dir, cfg, progress)
    result.update(variant=name, **VARIANTS[name], folder=folder, setting=setting, overrides=list(CANDIDATES[setting]),
                  train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1,
                  final_loss=_final_loss(run / folder / "prefix"))
    done.write_text(json.dumps(result, indent=1))
    return result


def probe_variant(export_dir: str, cfg: FrozenConfig, progress: bool) -> dict:
    """The mechanism probes of `world.probes` on the variant's export (the same held-out items)."""
    from frozen_scale.eval import tasks
    from frozen_scale.world import probes

    model, tokenizer, _ = tasks.load_model(export_dir)
    out = probes.run_probes(model, tokenizer, seed=cfg.world.seed, n=cfg.eval.num_samples,
                            batch_size=cfg.eval.batch_size, progress=progress)
    for entry in out["episodes"].values():
        entry["interval"] = wilson_interval(entry["accuracy"], entry["n"])
    return out


def _final_loss(prefix_run: Path) -> float | None:
    from frozen_scale.train.metrics import read_metrics

    losses = [r["loss"] for r in read_metrics(str(prefix_run)) if "loss" in r]
    return losses[-1] if losses else None


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
    old_data = yaml.safe_load(old_path.read_text()) or {}
    try:  # keys added to the config since that run take their defaults there
        old_data = to_dict(from_dict(FrozenConfig, old_data))
    except ValueError:
        pass  # a key that no longer exists: compared as written
    old, new = _flatten(old_data), _flatten(to_dict(cfg))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:6])
        raise SystemExit(f"{run} holds a reproduce run with another config ({shown}"
                         f"{', ...' if len(differ) > 6 else ''}); its finished stages would be reused. "
                         f"Use another --run-dir, or delete {run} to start over.")


def sweep_lm_lr(name: str, cfg: FrozenConfig, run: Path, lm_dir: Path, shards: Path, nproc: int, progress: bool,
                setting: str) -> dict:
    """A variant that trains its LM, at every LM lr of LM_LR_SWEEP (run/NAME/lm_lr_X); the one with
    the best dev score, with the sweep's dev scores under "lm_lr_sweep"."""
    tried = {}
    for fraction in LM_LR_SWEEP:
        lm_lr = cfg.lm_pretrain.lr * fraction
        vcfg = copy.deepcopy(cfg)
        vcfg.train.lm_lr = lm_lr
        tried[lm_lr] = run_variant(name, vcfg, run, lm_dir, shards, nproc, progress, folder=f"{name}/lm_lr_{lm_lr:g}",
                                   setting=setting)
    best = max(tried, key=lambda lr: (dev_score(tried[lr]), lr))
    sweep = {f"{lr:g}": dev_score(r) for lr, r in tried.items()}
    return {**tried[best], "lm_lr": best, "lm_lr_sweep": sweep,
            "train_seconds": sum(r["train_seconds"] for r in tried.values()),
            "eval_seconds": sum(r["eval_seconds"] for r in tried.values())}


def choose_setting(run: Path, cfg: FrozenConfig, candidates: list[str], lm_dir: Path, shards: Path, nproc: int,
                   progress: bool, timings: dict) -> tuple[str, dict]:
    """Train and evaluate the frozen variant with every candidate setting (run/candidates/NAME),
    probes included; returns the best setting by `fewshot_score` (the first on a tie) and all results."""
    results = {}
    for name in candidates:
        log.info("candidate %s (%s): training the frozen prefix", name, " ".join(CANDIDATES[name]) or "as configured")
        results[name] = run_variant("frozen", candidate_config(cfg, name), run, lm_dir, shards, nproc, progress,
                                    folder=f"candidates/{name}", setting=name, probe=True)
        timings[f"candidate_{name}"] = results[name]["train_seconds"] + results[name]["eval_seconds"]
        log.info("candidate %s: %s", name, results[name]["scores"])
    best = max(candidates, key=lambda n: (fewshot_score(results[n]), -candidates.index(n)))
    return best, results


def train_variants(variants: list[str], cfg: FrozenConfig, run: Path, setting: str, tried: dict, lm_dir: Path,
                   shards: tuple, nproc: int, progress: bool, timings: dict) -> dict:
    """Every variant with the chosen setting (the frozen one reused when it was a candidate; those
    that train their LM over LM_LR_SWEEP); shards: (real, black images)."""
    chosen = candidate_config(cfg, setting)
    results = {}
    for name in variants:
        spec = VARIANTS[name]
        if name == "frozen" and setting in tried:
            results[name] = tried[setting]  # already trained and evaluated as a candidate
            continue
        lm = scratch_lm(run, cfg) if spec["lm"] == "scratch" else lm_dir
        log.info("variant %s: training", name)
        if spec["train_lm"]:
            results[name] = sweep_lm_lr(name, chosen, run, lm, shards[0], nproc, progress, setting)
        else:
            results[name] = run_variant(name, chosen, run, lm, shards[1] if spec["blind"] else shards[0], nproc,
                                        progress, setting=setting, probe=name == "frozen")
        timings[name] = results[name]["train_seconds"] + results[name]["eval_seconds"]
        log.info("variant %s (test): %s", name, results[name]["scores"])
    return results


def reproduce(run_dir: str, cfg: FrozenConfig, *, nproc: int, variants: list[str], progress: bool,
              candidates: list[str] | None = None, baselines: list[str] = ()) -> dict:
    """One seed (cfg.world.seed) of the ablation in run_dir: settings chosen on dev, every variant
    reported on test, then the labelled baselines."""
    t_start = time.perf_counter()
    candidates = list(candidates or DEFAULT_CANDIDATES)
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
    setting, tried = candidates[0], {}  # one candidate: its setting, no search
    if len(candidates) > 1:
        setting, tried = choose_setting(run, cfg, candidates, lm_dir, shards, nproc, progress, timings)
        log.info("chosen setting (on dev): %s", setting)
    results = train_variants(variants, cfg, run, setting, tried, lm_dir, (shards, blind_shards), nproc, progress,
                             timings)
    extra = {}
    for name in baselines:
        extra[name] = run_variant("frozen", candidate_config(cfg, name), run, lm_dir, shards, nproc, progress,
                                  folder=f"baselines/{name}", setting=name)
        extra[name]["label"] = BASELINES[name]
        timings[f"baseline_{name}"] = extra[name]["train_seconds"] + extra[name]["eval_seconds"]
    lm_steps = cfg.lm_pretrain.steps + cfg.lm_pretrain.continue_steps
    info = {"method": METHOD, "split": TEST_SPLIT, "selection_split": DEV_SPLIT, "seed": cfg.world.seed,
            "lm": lm_summary, "lm_steps": lm_steps, "train_steps": cfg.train.steps,
            "batch": cfg.train.micro_batch_size * cfg.train.grad_accum * nproc, "nproc": nproc,
            "num_samples": cfg.eval.num_samples, "finding": finding(results), "setting": setting,
            "setting_overrides": list(CANDIDATES[setting]), "text_ceilings": text_ceilings(lm_summary)}
    info["total_seconds"] = time.perf_counter() - t_start
    info["timings"] = timings
    write_table(run, results, info, tried, extra)
    plot(run, results)

    def brief(group: dict) -> dict:
        return {n: {k: v for k, v in r.items() if k != "details"} for n, r in group.items()}

    out = {"info": info, "variants": brief(results), "candidates": brief(tried), "baselines": brief(extra)}
    (run / "ablation.json").write_text(json.dumps(out, indent=1))
    return out
