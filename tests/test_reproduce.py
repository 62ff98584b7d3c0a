"""`frozen-scale reproduce`: config layering, the variants' inputs, the verdict, and a tiny
end-to-end run that writes the table and the plot with all four variants."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from frozen_scale.app import reproduce as rp

ROOT = Path(__file__).resolve().parents[1]
BASE, OVERLAY = ROOT / "configs" / "tiny-cpu.yaml", ROOT / "configs" / "reproduce-cpu.yaml"


def test_overlay_is_laid_over_the_demo_config():
    import yaml

    base = rp.load_reproduce_config(str(BASE), None, [])
    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), ["eval.batch_size=7"])
    overlay = yaml.safe_load(OVERLAY.read_text())
    assert cfg.train.steps == overlay["train"]["steps"] and cfg.checkpoint.every == overlay["checkpoint"]["every"]
    assert cfg.eval.num_samples == overlay["eval"]["num_samples"]
    assert cfg.model == base.model and cfg.data == base.data  # untouched sections stay the demo's
    for key, value in vars(cfg.lm_pretrain).items():  # the LM: the demo's, but for the naming curriculum
        assert value == overlay["lm_pretrain"].get(key, getattr(base.lm_pretrain, key)), key
    assert cfg.lm_pretrain.naming_steps > 0 and base.lm_pretrain.naming_steps == base.lm_pretrain.naming_fraction == 0
    assert cfg.train.lr == base.train.lr and cfg.eval.batch_size == 7
    quick = rp.load_reproduce_config(str(BASE), str(OVERLAY), rp.QUICK)
    assert quick.train.steps <= 5 and quick.lm_pretrain.n_embd == 32


def test_variant_configs(tmp_path):
    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), [])
    from frozen_scale.config import load_config

    for name, spec in rp.VARIANTS.items():
        lm = tmp_path / ("lm_scratch" if spec["lm"] == "scratch" else "lm")
        shards = tmp_path / ("shards_blind" if spec["blind"] else "shards")
        vcfg = load_config(rp.variant_config(cfg, tmp_path, name, lm, shards))
        assert vcfg.model.train_lm is spec["train_lm"]
        assert vcfg.model.lm_path == str(lm.resolve()) and vcfg.data.train_shards == str(shards.resolve())
        assert vcfg.train.run_dir == str((tmp_path / name / "prefix").resolve())
        assert vcfg.train.steps == cfg.train.steps and vcfg.model.prefix_length == cfg.model.prefix_length
    assert [n for n, s in rp.VARIANTS.items() if not s["train_lm"]] == ["frozen", "blind"]


def test_blind_shards_hold_black_images_and_the_same_captions(tmp_path):
    import webdataset as wds
    from PIL import Image

    cfg = rp.load_reproduce_config(str(BASE), None, ["world.num_train=6", "world.samples_per_shard=4"])
    seen = {}
    for blind in (False, True):
        out = rp.write_shards(tmp_path / f"s{blind}", cfg, blind)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["num_samples"] == 6 and [s["num_samples"] for s in manifest["shards"]] == [4, 2]
        samples = [s for shard in sorted(out.glob("*.tar")) for s in wds.WebDataset(str(shard), shardshuffle=False)]
        seen[blind] = samples
        extrema = [Image.open(io.BytesIO(s["png"])).convert("L").getextrema() for s in samples]
        # real scenes: some object brighter than the darkest object colour (blue, luminance ~88)
        # allows and brighter than any background shade (<= 45)
        assert all(e == (0, 0) for e in extrema) if blind else all(e[1] > 60 for e in extrema)
    assert [s["txt"] for s in seen[False]] == [s["txt"] for s in seen[True]]
    assert [s["__key__"] for s in seen[False]] == [s["__key__"] for s in seen[True]]


def test_scratch_lm_is_untrained_and_shaped_like_the_pretrained_one(tmp_path):
    from frozen_scale.model.lm import load_lm

    cfg = rp.load_reproduce_config(str(BASE), None, rp.QUICK)
    a = load_lm(str(rp.scratch_lm(tmp_path / "a", cfg)))
    b = load_lm(str(rp.scratch_lm(tmp_path / "b", cfg)))
    assert a.config.n_layer == cfg.lm_pretrain.n_layer and a.config.n_embd == cfg.lm_pretrain.n_embd
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert p.shape == q.shape and bool((p == q).all()), n  # seeded: the same random init


def test_finding_verdict():
    def res(f, t):
        return {"frozen": {"scores": {"vqa_0shot": f}}, "finetuned": {"scores": {"vqa_0shot": t}}}

    assert "held here" in rp.finding(res(0.3, 0.2))
    assert "did not hold" in rp.finding(res(0.1, 0.2))
    assert "tie" in rp.finding(res(0.0, 0.0))
    assert rp.finding({"frozen": {"scores": {"vqa_0shot": 1.0}}}) is None


@pytest.mark.slow
def test_quick_reproduce_writes_table_and_plot_for_all_variants(tmp_path):
    run = tmp_path / "rq"
    assert rp.main(["--quick", "--run-dir", str(run), "--nproc", "1", "--no-progress",
                    "--base", str(BASE), "--config", str(OVERLAY)]) == 0
    table = (run / "ablation.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == list(rp.VARIANTS)
    png = (run / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    result = json.loads((run / "ablation.json").read_text())
    assert set(result["variants"]) == set(rp.VARIANTS)
    for name, r in result["variants"].items():
        assert set(r["scores"]) == {c for c, *_ in rp.EVALS}
        assert all(0.0 <= v <= 10.0 for v in r["scores"].values())
        assert r["train_seconds"] > 0 and r["final_loss"] is not None
        assert (run / name / "prefix" / "export" / "frozen_vlm.json").exists()
    # the finetuned and scratch exports carry LM weights, the frozen one does not
    from safetensors.torch import load_file

    has_lm = {n: any(k.startswith("lm.") for k in load_file(str(run / n / "prefix" / "export" / "prefix.safetensors")))
              for n in rp.VARIANTS}
    assert has_lm == {"frozen": False, "finetuned": True, "scratch": True, "blind": False}
    assert result["info"]["total_seconds"] > 0
    # a second call reuses every finished stage
    assert rp.main(["--quick", "--run-dir", str(run), "--nproc", "1", "--no-progress",
                    "--base", str(BASE), "--config", str(OVERLAY)]) == 0
    assert json.loads((run / "ablation.json").read_text())["info"]["total_seconds"] < result["info"]["total_seconds"]


def test_a_run_folder_refuses_another_config(tmp_path):
    from frozen_scale.config import save_config

    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), [])
    save_config(cfg, tmp_path / "config.yaml")
    rp.check_same_config(tmp_path, cfg)  # the same config: stages are reused
    other = rp.load_reproduce_config(str(BASE), str(OVERLAY), ["lm_pretrain.naming_fraction=0.1"])
    with pytest.raises(SystemExit, match=r"lm_pretrain.naming_fraction: .* -> 0.1"):
        rp.check_same_config(tmp_path, other)
