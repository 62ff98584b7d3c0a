"""The demo's report: report.md with the numbers and examples, and a PNG loss curve."""

from __future__ import annotations

from pathlib import Path

from frozen_scale.train.metrics import read_metrics


def plot_loss(metrics_dir: str, out_png: Path) -> bool:
    records = [r for r in read_metrics(metrics_dir) if "loss" in r]
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="prefix training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (caption tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return True


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def write_report(run: Path, m: dict, cfg) -> Path:
    has_plot = plot_loss(cfg.train.run_dir, run / "loss_curve.png")
    lm = m.get("lm_pretrain", {})
    lines = [
        "# frozen_scale demo report",
        "",
        f"Frozen LM: {lm.get('arch')} with {lm.get('parameters', 0):,} parameters, pretrained on the world's text "
        f"(final loss {_fmt(lm.get('final_loss'))}, text-only QA accuracy {_fmt(lm.get('text_qa_accuracy'))}).",
        f"Prefix: {cfg.model.vision.kind} encoder, k={cfg.model.prefix_length}, {m['train_steps']} steps, "
        f"DeepSpeed ZeRO-{m['zero_stage']} on {m['world_size']} ranks.",
        "",
        "| metric | with image | blind (black image) |",
        "|---|---|---|",
        f"| caption exact match (held-out scenes) | {_fmt(m['caption_exact_match'])} | {_fmt(m['caption_exact_match_blind'])} |",
        f"| caption attribute accuracy | {_fmt(m['caption_attribute_accuracy'])} | {_fmt(m['caption_attribute_accuracy_blind'])} |",
        f"| zero-shot VQA accuracy | {_fmt(m['vqa_zero_shot_accuracy'])} | {_fmt(m['vqa_zero_shot_accuracy_blind'])} |",
        "",
        f"Per attribute (with image): {', '.join(f'{k} {_fmt(v)}' for k, v in m['caption_per_attribute'].items())}.",
        f"Held-out colour/shape combinations: exact match {_fmt(m.get('heldout_combos_caption_exact_match'))}, "
        f"attribute accuracy {_fmt(m.get('heldout_combos_caption_attribute_accuracy'))}.",
        "",
        f"Time: prefix training {m['train_seconds']:.0f} s, whole demo {m['total_seconds']:.0f} s.",
        "",
    ]
    if has_plot:
        lines += ["![loss curve](loss_curve.png)", ""]
    lines += ["## Caption examples", "", "| reference | prediction |", "|---|---|"]
    lines += [f"| {e['reference']} | {e['prediction']} |" for e in m["caption_examples"]]
    lines += ["", "## Zero-shot VQA examples", "", "| question | answer | prediction |", "|---|---|---|"]
    lines += [f"| {e['question']} | {e['answer']} | {e['prediction']} |" for e in m["vqa_examples"]]
    path = run / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
