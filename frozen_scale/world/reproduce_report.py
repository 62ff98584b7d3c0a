"""`frozen-scale reproduce`'s report: the evaluation columns and their chance levels, Wilson
intervals, the table (ablation.md), the plot (ablation.png) and the text-only ceilings beside them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

EVALS = (
    ("caption_cider", "caption", {}, "cider"),
    ("caption_bleu4", "caption", {}, "bleu4"),
    ("caption_exact", "caption", {}, "exact_match"),
    ("vqa_0shot", "vqa", {"shots": 0}, "vqa_accuracy"),
    ("vqa_2shot", "vqa", {"shots": 2}, "vqa_accuracy"),
    ("cls_2way_1shot", "fewshot-cls", {"shots": 1, "ways": 2}, "accuracy"),
    ("binding_1shot", "binding", {"shots": 1}, "accuracy"),
    ("cls_2way_1shot_novel", "fewshot-cls", {"shots": 1, "ways": 2, "names": "novel"}, "accuracy"),
    ("binding_1shot_novel", "binding", {"shots": 1, "names": "novel"}, "accuracy"),
)
"""(column, task, item options, metric). The `_novel` columns name with the second pool of
nonsense words, which no text of the LM holds (only an LM pretrained with naming documents has them)."""
FEWSHOT_COLUMNS = ("cls_2way_1shot", "binding_1shot", "vqa_2shot")


def chance_level(task: str, items: list, ways: int = 2) -> float | None:
    """What guessing scores on these items: VQA the majority answer's share, n-way classification
    1/n (naming one of the support's names), binding 0.5 (one of the query's two colours);
    captioning none."""
    if task == "vqa":
        counts = Counter(it.answers[0] for it in items)
        return max(counts.values()) / len(items) if items else None
    if task == "fewshot-cls":
        return 1.0 / ways
    if task == "binding":
        return 0.5
    return None


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n items."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def fewshot_score(result: dict) -> float:
    """What a candidate setting is chosen by: the mean of its few-shot columns (with images) on the
    dev split."""
    scores = result.get("dev", result)["scores"]
    return sum(scores[c] for c in FEWSHOT_COLUMNS) / len(FEWSHOT_COLUMNS)


# -- report -----------------------------------------------------------------------------------
def dev_score(result: dict) -> float:
    """What an LM lr of a variant that trains its LM is chosen by: the mean of captioning exact
    match, 0-shot VQA and the few-shot columns on the dev split."""
    scores = result.get("dev", result)["scores"]
    columns = ("caption_exact", "vqa_0shot", *FEWSHOT_COLUMNS)
    return sum(scores[c] for c in columns) / len(columns)


def _cell(r: dict, column: str) -> str:
    if column not in r["scores"]:
        return "-"
    value = f"{r['scores'][column]:.3f}"
    interval = r.get("intervals", {}).get(column)
    return value + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval and column != "caption_exact" else "")


def _rows(results: dict[str, dict], columns: list[str], label: dict | None = None) -> list[str]:
    lines = ["| variant | " + " | ".join(columns) + " | final train loss | train s |",
             "|---|" + "---|" * (len(columns) + 2)]
    for name, r in results.items():
        loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "-"
        shown = (label or {}).get(name, name)
        lines.append(f"| {shown} | " + " | ".join(_cell(r, c) for c in columns) + f" | {loss} | {r['train_seconds']:.0f} |")
    chance = next((r.get("chance") for r in results.values() if r.get("chance")), None)
    if chance:
        lines.append("| *chance* | " + " | ".join(f"{chance[c]:.3f}" if chance.get(c) is not None else "-"
                                                 for c in columns) + " | | |")
    return lines


def _lm_line(lm: dict) -> str:
    naming = ""
    if "text_binding_accuracy" in lm:
        naming = (f", with naming episodes written as text: 2-way 1-shot classification "
                  f"{lm['text_classification_accuracy']:.3f}, binding {lm['text_binding_accuracy']:.3f}")
    if "text_name_lookup_accuracy" in lm:
        naming += f"; lookups by names drawn afresh (chance 0.5) {lm['text_name_lookup_accuracy']:.3f}"
    qa_2shot = (f", after 2 solved examples {lm['text_qa_2shot_accuracy']:.3f}"
                if "text_qa_2shot_accuracy" in lm else "")
    if "text_lookup_accuracy" in lm:
        qa_2shot += (f"; two-object lookups, where the answer differs between the scene's objects (chance 0.5): "
                     f"{lm['text_lookup_accuracy']:.3f}, after 2 solved examples {lm['text_lookup_2shot_accuracy']:.3f}")
    return f"text-only QA accuracy {lm.get('text_qa_accuracy', float('nan')):.3f}{qa_2shot}{naming}"


def write_table(run: Path, results: dict[str, dict], info: dict, candidates: dict[str, dict] | None = None,
                baselines: dict[str, dict] | None = None) -> Path:
    """ablation.md: the variants on the test split (the paper's prefix), chance levels, the
    settings tried on dev, then the labelled baselines (not the paper's method)."""
    columns = [c for c, *_ in EVALS if any(c in r["scores"] for r in results.values())]
    lm = info.get("lm", {})
    setting = info.get("setting", "single")
    head = [
        "# The Frozen ablation on the built-in world",
        "",
        f"Method: {info.get('method', 'the paper prefix')}. Split: every number below is on the "
        f"{info.get('split', 'test')} split; settings were chosen on {info.get('selection_split', 'dev')}. "
        f"Seed {info.get('seed', 0)}.",
        "",
        f"LM: {lm.get('arch')} with {lm.get('parameters', 0):,} parameters, pretrained {info['lm_steps']} steps "
        f"on the world's text ({_lm_line(lm)}). "
        f"Prefix training: {info['train_steps']} steps x {info['batch']} captions on {info['nproc']} rank(s), "
        f"setting '{setting}' ({' '.join(info.get('setting_overrides', [])) or 'as configured'}). "
        f"Evaluation: {info['num_samples']} items per task, greedy decoding; 95% Wilson intervals "
        f"in brackets. Wall time {info['total_seconds']:.0f} s.",
        "",
    ]
    from frozen_scale.world.pretrain_lm import naming_warning

    warning = naming_warning(lm)
    if warning:
        head += [f"**Warning: {warning}.**", ""]
    tail = [""]
    if candidates:
        tail += ["Frozen prefix training settings, on the dev split (the same LM and shards; chosen by the mean of "
                 + ", ".join(FEWSHOT_COLUMNS) + "):", "",
                 "| setting | " + " | ".join(columns[2:]) + " | few-shot score |", "|---|" + "---|" * (len(columns) - 1)]
        for name, r in candidates.items():
            dev = r.get("dev", r)
            tail.append(f"| {name} | " + " | ".join(_cell(dev, c) for c in columns[2:])
                        + f" | {fewshot_score(r):.3f} |")
        tail.append("")
    if baselines:
        tail += ["Baselines that change the method (not the paper's prefix), frozen LM, test split:", ""]
        tail += _rows(baselines, columns, {n: r.get("label", n) for n, r in baselines.items()}) + [""]
    for name, r in results.items():
        if r.get("lm_lr_sweep"):
            sweep = ", ".join(f"{lr}: {score:.3f}" for lr, score in r["lm_lr_sweep"].items())
            tail += [f"{name}: LM lr {r['lm_lr']:g} chosen on dev (dev score by LM lr: {sweep}); "
                     f"the prefix at train.lr.", ""]
    finding_text = info.get("finding")
    if finding_text:
        tail += [finding_text, ""]
    path = run / "ablation.md"
    path.write_text("\n".join(head + _rows(results, columns) + tail))
    return path


def finding(results: dict[str, dict]) -> str | None:
    """The paper's finding (frozen > finetuned on zero-shot VQA) on these results: held only when
    the two 95% intervals do not overlap (when intervals are given)."""
    if "frozen" not in results or "finetuned" not in results:
        return None
    f, t = results["frozen"]["scores"]["vqa_0shot"], results["finetuned"]["scores"]["vqa_0shot"]
    fi, ti = (results[n].get("intervals", {}).get("vqa_0shot") for n in ("frozen", "finetuned"))
    if f == t:
        verdict = "could not be told apart (a tie)"
    elif fi and ti and fi[0] <= ti[1] and ti[0] <= fi[1]:
        verdict = f"could not be told apart: {'frozen' if f > t else 'finetuned'} is higher within overlapping 95% intervals"
    else:
        verdict = "held" if f > t else "did not hold"
    shown = {n: f"{v:.3f}" + (f" ({i[0]:.2f}-{i[1]:.2f})" if i else "") for n, v, i in (("frozen", f, fi), ("finetuned", t, ti))}
    return (f"Paper's finding (frozen > finetuned on zero-shot VQA) {verdict} here: "
            f"frozen {shown['frozen']} vs finetuned {shown['finetuned']}.")


def plot(run: Path, results: dict[str, dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    acc_cols = [c for c, *_ in EVALS if c != "caption_cider" and all(c in results[n]["scores"] for n in names)]
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
def text_ceilings(lm_summary: dict, n: int = 200) -> dict:
    """The LM's text-only accuracies (what can transfer at most) with 95% intervals (`pretrain_lm`
    measures them on 200 held-out items)."""
    out = {}
    for key in ("text_qa_accuracy", "text_qa_2shot_accuracy", "text_lookup_accuracy", "text_lookup_2shot_accuracy",
                "text_classification_accuracy", "text_binding_accuracy", "text_name_lookup_accuracy"):
        if key in lm_summary:
            out[key] = {"accuracy": lm_summary[key], "n": n, "interval": wilson_interval(lm_summary[key], n)}
    return out
