"""`frozen-scale reproduce`: config layering, the variants' inputs, the verdict, and a tiny
end-to-end run that writes the table and the plot with all four variants."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from frozen_scale.world import reproduce as rp
from frozen_scale.world import reproduce_main

ROOT = Path(__file__).resolve().parents[3]
BASE, OVERLAY = ROOT / "configs" / "tiny-cpu.yaml", ROOT / "configs" / "reproduce-cpu.yaml"


def test_overlay_is_laid_over_the_demo_config():
    import dataclasses

    import yaml

    base = rp.load_reproduce_config(str(BASE), None, [])
    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), ["eval.batch_size=7"])
    overlay = yaml.safe_load(OVERLAY.read_text())
    assert cfg.train.steps == overlay["train"]["steps"] and cfg.checkpoint.every == overlay["checkpoint"]["every"]
    assert cfg.eval.num_samples == overlay["eval"]["num_samples"]
    assert cfg.data == base.data  # untouched sections stay the demo's; the model but for the ResNet's widths
    assert cfg.model.vision.resnet_widths == overlay["model"]["vision"]["resnet_widths"] != base.model.vision.resnet_widths
    assert dataclasses.replace(cfg.model, vision=base.model.vision) == base.model
    assert dataclasses.replace(cfg.model.vision, resnet_widths=base.model.vision.resnet_widths) == base.model.vision
    for key, value in vars(cfg.lm_pretrain).items():  # the LM: the demo's, but for the naming curriculum
        assert value == overlay["lm_pretrain"].get(key, getattr(base.lm_pretrain, key)), key
    assert cfg.lm_pretrain.naming_steps > 0 and base.lm_pretrain.naming_steps == base.lm_pretrain.naming_fraction == 0
    assert cfg.train.lr == base.train.lr and cfg.eval.batch_size == 7
    quick = rp.load_reproduce_config(str(BASE), str(OVERLAY), rp.quick_overrides(str(BASE), str(OVERLAY)))
    assert quick.train.steps <= 5 and quick.lm_pretrain.n_embd == 32 and quick.lm_pretrain.continue_steps <= 5
    pc = quick.lm_pretrain  # a lookup phase stays, cut to fit QUICK's steps; none where the config has none
    assert cfg.lm_pretrain.lookup_steps > 0 and 0 < pc.lookup_steps and pc.lookup_steps + pc.naming_steps < pc.steps
    assert rp.load_reproduce_config(str(BASE), None, rp.quick_overrides(str(BASE), None)).lm_pretrain.lookup_steps == 0


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


def test_wilson_interval():
    lo, hi = rp.wilson_interval(0.5, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3
    assert rp.wilson_interval(0.0, 100)[0] == 0.0 and 0.03 < rp.wilson_interval(0.0, 100)[1] < 0.04
    assert rp.wilson_interval(1.0, 10)[1] == 1.0 and rp.wilson_interval(1.0, 10)[0] < 0.75


def test_candidate_configs_apply_their_overrides():
    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), [])
    assert cfg.data.images_per_sequence == 1 and cfg.data.text_before_image == 0  # off by default
    assert rp.candidate_config(cfg, "single") == cfg
    assert rp.candidate_config(cfg, "interleaved").data.images_per_sequence == 3
    assert rp.candidate_config(cfg, "offset").data.text_before_image == 3
    assert cfg.model.prefix_kind == "continuous" and rp.candidate_config(cfg, "lexical").model.prefix_kind == "lexical"


def test_finding_verdict():
    def res(f, t):
        return {"frozen": {"scores": {"vqa_0shot": f}}, "finetuned": {"scores": {"vqa_0shot": t}}}

    assert "held here" in rp.finding(res(0.3, 0.2))
    assert "did not hold" in rp.finding(res(0.1, 0.2))
    assert "tie" in rp.finding(res(0.0, 0.0))
    assert rp.finding({"frozen": {"scores": {"vqa_0shot": 1.0}}}) is None

    def with_intervals(f, fi, t, ti):
        return {"frozen": {"scores": {"vqa_0shot": f}, "intervals": {"vqa_0shot": fi}},
                "finetuned": {"scores": {"vqa_0shot": t}, "intervals": {"vqa_0shot": ti}}}

    overlapping = rp.finding(with_intervals(0.60, (0.50, 0.69), 0.56, (0.46, 0.65)))
    assert "could not be told apart" in overlapping and "held" not in overlapping
    assert "held here" in rp.finding(with_intervals(0.9, (0.85, 0.94), 0.2, (0.13, 0.29)))
    assert "did not hold" in rp.finding(with_intervals(0.2, (0.13, 0.29), 0.9, (0.85, 0.94)))


@pytest.mark.parametrize("classification, warned", [(0.48, True), (1.0, False)])
def test_the_table_warns_when_the_lm_did_not_learn_naming(tmp_path, classification, warned):
    lm = {"arch": "gpt2", "parameters": 1, "text_qa_accuracy": 0.9, "text_qa_2shot_accuracy": 0.8,
          "text_lookup_accuracy": 0.55, "text_lookup_2shot_accuracy": 0.45,
          "text_classification_accuracy": classification, "text_binding_accuracy": 0.5,
          "text_name_lookup_accuracy": 0.97}
    info = {"lm": lm, "lm_steps": 7000, "train_steps": 3, "batch": 4, "nproc": 1, "num_samples": 2,
            "total_seconds": 1.0}
    results = {"frozen": {"scores": {c: 0.5 for c, *_ in rp.EVALS}, "final_loss": 1.0, "train_seconds": 1.0}}
    table = rp.write_table(tmp_path, results, info).read_text()
    assert ("**Warning: the LM did not learn in-context naming" in table) == warned
    assert "two-object lookups, where the answer differs between the scene's objects (chance 0.5): 0.550, " \
           "after 2 solved examples 0.450" in table
    assert "binding 0.500; lookups by names drawn afresh (chance 0.5) 0.970" in table
    assert rp.text_ceilings(lm)["text_name_lookup_accuracy"]["accuracy"] == 0.97
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:] == ["frozen"]


@pytest.mark.slow
def test_quick_reproduce_writes_table_and_plot_for_all_variants(tmp_path):
    run = tmp_path / "rq"
    argv = ["--quick", "--run-dir", str(run), "--nproc", "1", "--no-progress", "--candidates",
            ",".join(rp.PAPER_SETTINGS), "--baselines", ",".join(rp.BASELINES), "--base", str(BASE), "--config", str(OVERLAY)]
    assert reproduce_main.main(argv) == 0
    table = (run / "ablation.md").read_text()
    assert "every number below is on the test split; settings were chosen on eval" in table
    variants_table, candidates_table = table.split("\n\n| setting |")
    rows = [line.split("|")[1].strip() for line in variants_table.splitlines() if line.startswith("| ")][1:]
    assert rows == [*rp.VARIANTS, "*chance*"]
    candidates_table, baselines_table = candidates_table.split("Baselines that change the method")
    assert [line.split("|")[1].strip() for line in candidates_table.splitlines()[2:] if line.startswith("| ")] \
        == list(rp.PAPER_SETTINGS)
    assert [line.split("|")[1].strip() for line in baselines_table.splitlines() if line.startswith("| ")][1:] \
        == [*rp.BASELINES.values(), "*chance*"]
    png = (run / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    result = json.loads((run / "ablation.json").read_text())
    assert set(result["variants"]) == set(rp.VARIANTS) and set(result["baselines"]) == set(rp.BASELINES)
    info = result["info"]
    assert info["split"] == "test" and info["selection_split"] == "eval" and info["seed"] == 0
    assert info["command"][:2] == ["frozen-scale", "reproduce"] and info["config"]["world"]["seed"] == 0
    assert info["commit"] is None or len(info["commit"]) == 40
    for name, r in result["variants"].items():
        assert set(r["scores"]) == {c for c, *_ in rp.EVALS} == set(r["dev"]["scores"])
        assert r["split"] == "test" and r["dev"]["split"] == "eval"
        assert r["chance"]["cls_2way_1shot"] == 0.5 and r["chance"]["binding_1shot"] == 0.5
        assert 0 < r["chance"]["vqa_0shot"] <= 1 and r["chance"]["caption_exact"] is None
        assert all(0.0 <= v <= 10.0 for v in r["scores"].values())
        assert r["train_seconds"] > 0 and r["final_loss"] is not None
        assert r["setting"] == result["info"]["setting"] and set(r["intervals"]) <= set(r["scores"])
        assert all(lo <= r["scores"][c] <= hi for c, (lo, hi) in r["intervals"].items())
        assert (run / r["folder"] / "prefix" / "export" / "frozen_vlm.json").exists()
    # every candidate setting trained the frozen prefix with its overrides and was probed
    assert set(result["candidates"]) == set(rp.PAPER_SETTINGS)
    assert result["variants"]["frozen"] == result["candidates"][result["info"]["setting"]]
    for name, r in result["candidates"].items():
        cfg = yaml.safe_load((run / "candidates" / name / "train_config.yaml").read_text())
        for override in rp.CANDIDATES[name]:
            section, key = override.split("=")[0].split(".")
            assert str(cfg[section][key]) == override.split("=")[1]
        assert set(r["probes"]["episodes"]) == {f"{k}-{w}" for k in ("classification", "binding")
                                                for w in ("none", "support", "query", "all")}
    settings = list(rp.PAPER_SETTINGS)  # chosen by the dev split's few-shot score
    assert result["info"]["setting"] == max(settings, key=lambda n: (rp.fewshot_score(result["candidates"][n]),
                                                                     -settings.index(n)))
    assert rp.fewshot_score(result["candidates"]["single"]) == sum(
        result["candidates"]["single"]["dev"]["scores"][c] for c in rp.FEWSHOT_COLUMNS) / 3
    # the finetuned and scratch exports carry LM weights, the frozen one does not
    from safetensors.torch import load_file

    has_lm = {n: any(k.startswith("lm.") for k in load_file(str(run / r["folder"] / "prefix" / "export"
                                                                / "prefix.safetensors")))
              for n, r in result["variants"].items()}
    assert has_lm == {"frozen": False, "finetuned": True, "scratch": True, "blind": False}
    assert result["info"]["total_seconds"] > 0
    # a second call reuses every finished stage
    assert reproduce_main.main(argv) == 0
    assert json.loads((run / "ablation.json").read_text())["info"]["total_seconds"] < result["info"]["total_seconds"]


def test_a_run_folder_refuses_another_config(tmp_path):
    from frozen_scale.config import save_config

    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), [])
    save_config(cfg, tmp_path / "config.yaml")
    rp.check_same_config(tmp_path, cfg)  # the same config: stages are reused
    other = rp.load_reproduce_config(str(BASE), str(OVERLAY), ["lm_pretrain.naming_fraction=0.1"])
    with pytest.raises(SystemExit, match=r"lm_pretrain.naming_fraction: .* -> 0.1"):
        rp.check_same_config(tmp_path, other)


def test_a_run_folder_from_before_a_new_config_key_is_still_reused(tmp_path):
    """A key added to the config since the folder's run takes its default there: the folder is the
    same run (model.prefix_kind came after the README's runs), while a changed value still differs."""
    from frozen_scale.config import save_config

    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), [])
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["model"]["prefix_kind"], saved["lm_pretrain"]["naming_shape_questions"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    rp.check_same_config(tmp_path, cfg)
    with pytest.raises(SystemExit, match=r"model.prefix_kind: 'continuous' -> 'lexical'"):
        rp.check_same_config(tmp_path, rp.load_reproduce_config(str(BASE), str(OVERLAY), ["model.prefix_kind=lexical"]))


def test_one_candidate_is_the_setting_every_variant_trains_with(tmp_path, monkeypatch):
    """`--candidates interleaved` alone: no search, and every variant trains with that setting."""
    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), [])
    trained = {}

    def fake_run_variant(name, vcfg, run, lm, shards, nproc, progress, folder=None, setting="single", probe=False):
        trained[name] = (vcfg.data.images_per_sequence, setting, probe)
        return {"scores": {c: 0.0 for c, *_ in rp.EVALS}, "train_seconds": 1.0, "eval_seconds": 1.0,
                "final_loss": 0.0, "setting": setting}

    monkeypatch.setattr(rp, "write_shards", lambda out, cfg, blind: out)
    monkeypatch.setattr(rp, "pretrained_lm", lambda run, cfg, progress: (run / "lm", {"arch": "gpt2"}))
    monkeypatch.setattr(rp, "scratch_lm", lambda run, cfg: run / "lm_scratch")
    monkeypatch.setattr(rp, "run_variant", fake_run_variant)
    monkeypatch.setattr(rp, "plot", lambda run, results: run / "ablation.png")
    out = rp.reproduce(str(tmp_path), cfg, nproc=1, variants=list(rp.VARIANTS), progress=False,
                       candidates=["interleaved"])
    assert trained == {name: (3, "interleaved", name == "frozen") for name in rp.VARIANTS}  # frozen probed
    assert out["info"]["setting"] == "interleaved" and out["candidates"] == {}
    assert "setting 'interleaved' (data.images_per_sequence=3)" in (tmp_path / "ablation.md").read_text()


def test_the_headline_prefix_is_trained_by_the_caption_loss_alone():
    """Every setting of the paper's prefix builds continuous prefix vectors, and their training loss
    is the frozen LM's next-token loss on the caption: slot targets and their weight change nothing.
    The word prefix (a labelled baseline) is the one trained against the caption's tokens."""
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from frozen_scale.data.prompts import IGNORE, IMAGE_TOKEN
    from frozen_scale.model.frozen_vlm import FrozenVLM

    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), ["model.vision.resnet_widths=[8,16]",
                                                            "model.vision.image_size=16"])
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_layer=1, n_embd=16, n_head=2, n_positions=64)).eval()
    torch.manual_seed(0)
    k = cfg.model.prefix_length
    ids = torch.randint(0, 40, (2, k + 6))
    ids[:, :k] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, : k + 2] = IGNORE
    pixels, mask, targets = torch.randn(2, 3, 16, 16), torch.ones_like(ids), torch.randint(0, 40, (2, k))
    for name in rp.PAPER_SETTINGS:
        mcfg = rp.candidate_config(cfg, name).model
        assert mcfg.prefix_kind == "continuous", name
        model = FrozenVLM(mcfg, lm)
        loss = model(pixels, ids, mask, labels=labels, prefix_targets=targets)
        embeds, _, slot_logits = model.embed_images(ids, pixels, mask)
        assert slot_logits is None  # nothing to supervise: no slot loss can enter
        logits = lm(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1]
        caption = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none")
        expected = (caption.sum(1) / (labels[:, 1:] != IGNORE).sum(1)).mean()
        torch.testing.assert_close(loss, expected)
        model.cfg.prefix_target_weight = 0.0
        torch.testing.assert_close(model(pixels, ids, mask, labels=labels, prefix_targets=targets), loss)
    assert rp.candidate_config(cfg, "words").model.prefix_kind == "words" and "words" in rp.BASELINES
    assert not set(rp.BASELINES) & set(rp.PAPER_SETTINGS) and rp.DEFAULT_CANDIDATES == ("single",)


@pytest.mark.slow
def test_a_rerun_of_one_seed_gives_the_same_numbers(tmp_path):
    """The whole pipeline twice for one seed in two folders (shards, LM pretraining, prefix
    training on two ranks, evaluation): the same LM weights and the same scores on dev and test."""
    import hashlib

    from safetensors.torch import load_file

    results = []
    for run in (tmp_path / "a", tmp_path / "b"):
        assert reproduce_main.main(["--quick", "--run-dir", str(run), "--nproc", "2", "--no-progress", "--variants",
                                    "frozen", "--base", str(BASE), "--config", str(OVERLAY)]) == 0
        weights = load_file(str(run / "lm" / "model.safetensors"))
        digest = hashlib.sha256(b"".join(weights[k].numpy().tobytes() for k in sorted(weights))).hexdigest()
        frozen = json.loads((run / "ablation.json").read_text())["variants"]["frozen"]
        results.append((digest, frozen["scores"], frozen["dev"]["scores"], frozen["final_loss"]))
    assert results[0] == results[1]


def test_seeds_run_the_whole_pipeline_per_world_seed_and_report_mean_and_range(tmp_path, monkeypatch):
    cfg = rp.load_reproduce_config(str(BASE), str(OVERLAY), ["world.seed=5"])
    calls = []

    def fake_reproduce(run_dir, seed_cfg, **kwargs):
        calls.append((Path(run_dir).name, seed_cfg.world.seed))
        score = 0.5 + 0.1 * (seed_cfg.world.seed - 5)
        scores = {"vqa_0shot": score, "cls_2way_1shot": 1 - score}
        return {"info": {"total_seconds": 2.0},
                "variants": {"frozen": {"scores": scores, "chance": {"vqa_0shot": 0.3, "cls_2way_1shot": 0.5}}}}

    monkeypatch.setattr(rp, "reproduce", fake_reproduce)
    out = reproduce_main.run_seeds(str(tmp_path), cfg, 3, nproc=1, variants=["frozen"], progress=False)
    assert calls == [("seed_5", 5), ("seed_6", 6), ("seed_7", 7)] and cfg.world.seed == 5
    vqa = out["summary"]["frozen"]["vqa_0shot"]
    assert vqa["seeds"] == [5, 6, 7] and vqa["values"] == pytest.approx([0.5, 0.6, 0.7])
    assert vqa["mean"] == pytest.approx(0.6) and (vqa["min"], vqa["max"]) == pytest.approx((0.5, 0.7))
    table = (tmp_path / "ablation.md").read_text()
    assert "| frozen | 0.600 (0.50-0.70) |" in table and "| *chance* | 0.300 | 0.500 |" in table
    assert json.loads((tmp_path / "ablation.json").read_text())["info"]["seeds"] == [5, 6, 7]
