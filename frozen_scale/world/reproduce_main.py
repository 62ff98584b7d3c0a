"""`frozen-scale reproduce`: the Frozen paper's ablation on the built-in world, in one command.

Four variants (frozen, finetuned, scratch, blind; `world.reproduce`) are trained on the world's
captions with the paper's prefix (continuous vectors trained by the caption loss alone) and
evaluated on captioning (CIDEr, BLEU-4, exact match), zero-shot and 2-shot VQA, open-ended 2-way
1-shot classification and fast concept binding (with the paper's nonsense names and with a
second pool the LM never read), each with its chance level and a 95% Wilson interval.

Splits: `--candidates single,offset,interleaved` trains the frozen prefix once per setting and
chooses the one with the best few-shot score on the dev split; every reported number is on the
test split, drawn from streams never used to choose anything. `--baselines words,lexical,...`
adds prefixes that change the method, labelled as such, below the headline.

Seeds: `--seeds N` runs the whole pipeline (shards, LM pretraining, every variant) for world seeds
S, S+1, ... in {run}/seed_S/..., then writes per-seed values, their mean and range. The same
seed on the same machine gives the same numbers.

The run config is configs/tiny-cpu.yaml with configs/reproduce-cpu.yaml laid over it (then dotted
overrides). Writes {run}/ablation.md, ablation.json (with the command, config, seeds, splits and
commit) and ablation.png. Finished stages are reused when the command is run again on the same folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import subprocess
from pathlib import Path

from frozen_scale.config import FrozenConfig, redacted_dict
from frozen_scale.world import reproduce as rp
from frozen_scale.world.reproduce_report import EVALS


def commit() -> str | None:
    """The git commit of the code that ran (None outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def aggregate(per_seed: dict[int, dict]) -> dict:
    """{variant: {column: {"values": [per seed], "mean", "min", "max"}}} over the seeds' test scores."""
    out: dict = {}
    for seed, result in per_seed.items():
        for name, r in result["variants"].items():
            for column, value in r["scores"].items():
                out.setdefault(name, {}).setdefault(column, {"seeds": [], "values": []})
                out[name][column]["seeds"].append(seed)
                out[name][column]["values"].append(value)
    for columns in out.values():
        for entry in columns.values():
            vals = entry["values"]
            entry.update(mean=sum(vals) / len(vals), min=min(vals), max=max(vals))
    return out


def write_seed_table(run: Path, summary: dict, per_seed: dict[int, dict]) -> Path:
    """ablation.md over seeds: each variant's test mean and range per column, then every seed's table."""
    columns = [c for c, *_ in EVALS if any(c in cols for cols in summary.values())]
    first = next(iter(per_seed.values()))
    chance = next((r.get("chance") for r in first["variants"].values() if r.get("chance")), {})
    lines = ["# The Frozen ablation on the built-in world, over seeds", "",
             f"Method: {rp.METHOD}. Test split, seeds {', '.join(map(str, per_seed))}: mean (min-max) per column.",
             "", "| variant | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, cols in summary.items():
        cells = [f"{cols[c]['mean']:.3f} ({cols[c]['min']:.2f}-{cols[c]['max']:.2f})" if c in cols else "-"
                 for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| *chance* | " + " | ".join(f"{chance[c]:.3f}" if chance.get(c) is not None else "-"
                                             for c in columns) + " |")
    for seed in per_seed:
        lines += ["", f"Seed {seed}: [seed_{seed}/ablation.md](seed_{seed}/ablation.md)"]
    path = run / "ablation.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_seeds(run_dir: str, cfg: FrozenConfig, seeds: int, **kwargs) -> dict:
    """One seed: `reproduce` in run_dir. Several: each in run_dir/seed_S, then the summary."""
    if seeds == 1:
        return rp.reproduce(run_dir, cfg, **kwargs)
    run = Path(run_dir)
    per_seed = {}
    for offset in range(seeds):
        seed_cfg = copy.deepcopy(cfg)
        seed_cfg.world.seed = cfg.world.seed + offset
        per_seed[seed_cfg.world.seed] = rp.reproduce(str(run / f"seed_{seed_cfg.world.seed}"), seed_cfg, **kwargs)
    summary = aggregate(per_seed)
    write_seed_table(run, summary, per_seed)
    out = {"info": {"method": rp.METHOD, "split": "test", "seeds": list(per_seed),
                    "total_seconds": sum(r["info"]["total_seconds"] for r in per_seed.values())},
           "summary": summary, "per_seed": {str(s): r for s, r in per_seed.items()}}
    (run / "ablation.json").write_text(json.dumps(out, indent=1))
    return out


def _names(parser, text: str, allowed, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    wrong = [n for n in names if n not in allowed]
    if wrong:
        parser.error(f"unknown {what} {wrong}; choose from {', '.join(allowed)}")
    return names


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="frozen-scale reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/reproduce")
    parser.add_argument("--base", default="configs/tiny-cpu.yaml", help="run config the ablation starts from")
    parser.add_argument("--config", default="configs/reproduce-cpu.yaml", help="overrides laid over --base")
    parser.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks (CPU processes) per training")
    parser.add_argument("--variants", default=",".join(rp.VARIANTS), help="comma-separated subset of "
                        + ", ".join(rp.VARIANTS))
    parser.add_argument("--candidates", default=",".join(rp.DEFAULT_CANDIDATES),
                        help="settings of the paper's prefix to choose from on the dev split (one name: no search): "
                        + ", ".join(f"{n} ({' '.join(rp.CANDIDATES[n]) or 'as configured'})" for n in rp.PAPER_SETTINGS))
    parser.add_argument("--baselines", default="", help="prefixes that change the method, reported as labelled "
                        "baselines: " + ", ".join(f"{n} ({label})" for n, label in rp.BASELINES.items()))
    parser.add_argument("--seeds", type=int, default=1, help="whole pipelines, for world seeds S, S+1, ...")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds of training)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args(argv)
    variants = _names(parser, args.variants, rp.VARIANTS, "variant(s)")
    candidates = _names(parser, args.candidates, rp.PAPER_SETTINGS, "candidate(s) of the paper's prefix")
    baselines = _names(parser, args.baselines, rp.BASELINES, "baseline(s)")
    if not variants or not candidates or args.seeds < 1:
        parser.error("--variants and --candidates need at least one name, --seeds at least 1")
    for path in (args.base, args.config):
        if path and not Path(path).exists():
            parser.error(f"config {path} not found")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = rp.load_reproduce_config(args.base, args.config,
                                   (rp.quick_overrides(args.base, args.config) if args.quick else []) + args.overrides)
    out = run_seeds(args.run_dir, cfg, args.seeds, nproc=args.nproc, variants=variants,
                    progress=not args.no_progress, candidates=candidates, baselines=baselines)
    out["info"].update(command=["frozen-scale", "reproduce", *argv], commit=commit(), config=redacted_dict(cfg))
    Path(args.run_dir, "ablation.json").write_text(json.dumps(out, indent=1))
    print(Path(args.run_dir, "ablation.md").read_text())
    print(f"total {out['info']['total_seconds']:.0f} s; table {Path(args.run_dir) / 'ablation.md'}, "
          f"results {Path(args.run_dir) / 'ablation.json'}")
    return 0
