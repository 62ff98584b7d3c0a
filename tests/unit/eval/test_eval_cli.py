"""`frozen-scale eval`: prefix placement in interleaved prompts, scoring wiring, every task on a
tiny trained run (world items and shards), and two ranks = one rank."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frozen_scale.data.prompts import IMAGE_TOKEN, Image, Text, encode, pad_batch
from frozen_scale.eval import cli, fewshot, tasks
from frozen_scale.world import items as fw
from frozen_scale.world import scenes, text
from tests.support.core_fixtures import train_tiny_run

K = 3
ROOT = Path(__file__).resolve().parents[3]


# -- FrozenVLM.embed: each image's k prefix vectors at its slots --------------------------------
@pytest.fixture(scope="module")
def tiny_vlm(tiny_lm_dir):
    from frozen_scale.config import ModelConfig, VisionConfig
    from frozen_scale.model.frozen_vlm import FrozenVLM
    from frozen_scale.model.lm import load_lm

    torch.manual_seed(0)
    cfg = ModelConfig(lm_path=str(tiny_lm_dir), prefix_length=K,
                      vision=VisionConfig(kind="resnet", image_size=16, resnet_widths=[8, 16]))
    return FrozenVLM(cfg, load_lm(str(tiny_lm_dir))).eval()


def test_embed_places_each_images_prefix_at_its_slots_in_a_two_image_prompt(tiny_vlm):
    tok = text.build_tokenizer()
    long_prompt = [Image(), Text("caption : a big red circle ."), Image(), Text("caption :")]
    short_prompt = [Image(), Text("caption : a"), Image(), Text("caption :")]
    enc = [encode(long_prompt, tok, K), encode(short_prompt, tok, K)]
    batch = pad_batch(enc, tok.pad_token_id, left=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pixels = torch.randn(4, 3, 16, 16)  # row 0: images 0, 1; row 1: images 2, 3
    embeds = tiny_vlm.embed(ids, pixels)
    prefix = tiny_vlm.image_prefix(pixels)
    token_table = tiny_vlm.lm.get_input_embeddings().weight
    pad = len(enc[0].input_ids) - len(enc[1].input_ids)
    assert pad > 0
    for row, e in enumerate(enc):
        offset = 0 if row == 0 else pad
        slots = [offset + i for i, t in enumerate(e.input_ids) if t == IMAGE_TOKEN]
        assert len(slots) == 2 * K
        first, second = slots[:K], slots[K:]
        # the two images occupy two separate runs of k positions, text in between
        assert first == list(range(first[0], first[0] + K)) and second == list(range(second[0], second[0] + K))
        assert second[0] > first[-1] + 1
        for j, (run, image) in enumerate(((first, 2 * row), (second, 2 * row + 1))):
            assert torch.equal(embeds[row, run], prefix[image]), f"row {row}: image {j} misplaced"
        text_pos = [offset + i for i, t in enumerate(e.input_ids) if t != IMAGE_TOKEN]
        assert torch.equal(embeds[row, text_pos], token_table[ids[row, text_pos]])
        # the mask: 0 exactly on the left padding, 1 on every token and image slot
        assert mask[row].tolist() == [0] * offset + [1] * len(e.input_ids)
    # swapping the images of row 0 swaps what its slots hold
    swapped = tiny_vlm.embed(ids, pixels[[1, 0, 2, 3]])
    slots0 = [i for i, t in enumerate(enc[0].input_ids) if t == IMAGE_TOKEN]
    assert torch.equal(swapped[0, slots0[:K]], prefix[1]) and torch.equal(swapped[0, slots0[K:]], prefix[0])


def test_left_padding_is_masked_out(tiny_vlm):
    """A left-padded row gives the logits and the greedy continuation of the same prompt alone."""
    tok = text.build_tokenizer()
    enc = [encode([Image(), Text("caption : a big red circle ."), Image(), Text("caption :")], tok, K),
           encode([Image(), Text("question :"), Image(), Text("caption :")], tok, K)]
    batch = pad_batch(enc, tok.pad_token_id, left=True)
    alone = pad_batch(enc[1:], tok.pad_token_id, left=True)
    pixels = torch.randn(4, 3, 16, 16)

    def last_logits(ids, mask, pix):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = tiny_vlm.lm(inputs_embeds=tiny_vlm.embed(ids, pix), attention_mask=mask, position_ids=positions)
        return out.logits[:, -1]

    with torch.no_grad():
        both = last_logits(batch["input_ids"], batch["attention_mask"], pixels)
        single = last_logits(alone["input_ids"], alone["attention_mask"], pixels[2:])
        unmasked = last_logits(batch["input_ids"], torch.ones_like(batch["attention_mask"]), pixels)
    torch.testing.assert_close(both[1], single[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmasked[1], single[0], atol=1e-4)  # the mask does matter
    kw = dict(max_new_tokens=5, eos_token_id=None, pad_token_id=tok.pad_token_id)
    gen_both = tiny_vlm.generate(pixels, batch["input_ids"], batch["attention_mask"], **kw)
    gen_alone = tiny_vlm.generate(pixels[2:], alone["input_ids"], alone["attention_mask"], **kw)
    assert torch.equal(gen_both[1], gen_alone[0])


# -- the world's episodes ---------------------------------------------------------------------
def test_score_wiring():
    items = [fw.Item("a", [], [], ["red"]), fw.Item("b", [], [], ["two"]), fw.Item("c", [], [], ["blue"])]
    res = tasks.score("vqa", items, ["red . question", "2 .", "green ."], tokenize="simple")
    assert res["vqa_accuracy"] == pytest.approx(2 / 3)  # "2" matches "two" after VQA normalisation
    res = tasks.score("binding", items, ["red .", "two", "blue green"], tokenize="simple")
    assert res["accuracy"] == pytest.approx(1.0)
    res = tasks.score("binding", items, ["reddish", "", "."], tokenize="simple")
    assert res["accuracy"] == 0.0
    caps = [fw.Item("x", [], [], ["a big red circle"], {"canonical": True}),
            fw.Item("y", [], [], ["a small blue square"], {"canonical": True})]
    res = tasks.score("caption", caps, ["a big red circle . caption : a", "a small red square"], tokenize="simple")
    assert res["exact_match"] == 0.5 and 0 < res["bleu4"] < 1 and res["cider"] > 0


# -- a tiny trained run -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tiny_lm_dir, tiny_shards, tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("evalrun"), tiny_lm_dir, tiny_shards)


def _result(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("task,extra,metric", [
    ("caption", ["--num-beams", "2"], "cider"),
    ("vqa", ["--shots", "1"], "vqa_accuracy"),
    ("fewshot-cls", ["--shots", "1", "--ways", "2"], "accuracy"),
    ("binding", ["--blind"], "accuracy"),
])
def test_every_task_runs_on_the_world(tiny_run, tmp_path, task, extra, metric):
    out = tmp_path / "r.json"
    assert cli.eval_main([str(tiny_run), "--task", task, "--num-samples", "5", "--no-progress",
                          "--tokenize", "simple", "--out", str(out), *extra]) == 0
    res = _result(out)
    assert res["n"] == 5 and res["task"] == task and len(res["examples"]) == 5
    assert res[metric] >= 0 and all(isinstance(e["prediction"], str) for e in res["examples"])
    assert (tiny_run / "export" / "frozen_vlm.json").exists()  # exported on the fly


def test_blind_changes_what_the_model_sees(tiny_run):
    model, tok, meta = tasks.load_model(str(tiny_run / "export"))
    items = fw.caption_items(0, "eval", 4, "caption :", model.cfg.vision.image_size)
    seen = []
    original = model.generate

    def spy(pixel_values, *a, **kw):
        seen.append(pixel_values.clone())
        return original(pixel_values, *a, **kw)

    model.generate = spy
    tasks.generate(model, tok, items, max_new_tokens=2, progress=False)
    tasks.generate(model, tok, items, max_new_tokens=2, progress=False, blind=True)
    assert seen[0].std(dim=(1, 2, 3)).min() > 0  # real images
    assert torch.equal(seen[1], seen[1][:1].expand_as(seen[1]))  # one constant black image
    assert not torch.equal(seen[0], seen[1])


def _write_keyed_shards(out: Path, keys: list[str], image_size: int = 16) -> Path:
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(out / "00000.tar")) as sink:
        for i, key in enumerate(keys):
            scene = scenes.make_scene(0, "eval", i)
            buf = io.BytesIO()
            scenes.render(scene, image_size).save(buf, "PNG")
            sink.write({"__key__": key, "png": buf.getvalue(), "txt": scenes.caption(scene),
                        "json": json.dumps({"shape": scene.objects[0].shape}).encode()})
    (out / "manifest.json").write_text(json.dumps(
        {"shards": [{"name": "00000.tar", "num_samples": len(keys)}]}))
    return out


def test_caption_from_shards_with_coco_references(tiny_run, tmp_path):
    keys = [f"COCO_val2014_{i:012d}" for i in range(1, 5)]
    shards = _write_keyed_shards(tmp_path / "shards", keys)
    out = tmp_path / "plain.json"
    args = [str(tiny_run), "--task", "caption", "--shards", str(shards), "--no-progress", "--tokenize", "simple"]
    assert cli.eval_main(args + ["--out", str(out)]) == 0
    plain = _result(out)
    assert plain["n"] == 4 and plain["source"] == str(shards)
    assert [e["answers"] for e in plain["examples"]] == [[scenes.caption(scenes.make_scene(0, "eval", i))]
                                                         for i in range(4)]
    # COCO json: the first image's references include exactly what the model wrote
    first_pred = plain["examples"][0]["prediction"]
    coco = {"images": [{"id": i + 1, "file_name": f"{k}.jpg"} for i, k in enumerate(keys)],
            "annotations": [{"image_id": 1, "caption": first_pred}, {"image_id": 1, "caption": "zzz"}]
            + [{"image_id": i + 1, "caption": "qqq www"} for i in range(1, 4)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert cli.eval_main(args + ["--captions-json", str(tmp_path / "coco.json"), "--out", str(out)]) == 0
    res = _result(out)
    assert res["exact_match"] == pytest.approx(0.25)
    assert res["examples"][0]["answers"] == [first_pred, "zzz"]


def test_caption_from_an_img2dataset_folder(tiny_run, tmp_path):
    """--shards at img2dataset's output (no manifest.json): its tars are read, captions as references."""
    from tests.support.img2dataset_layout import write_img2dataset_folder

    written = write_img2dataset_folder(tmp_path / "laion", kept=(3, 2), with_stats=(True, False))
    out = tmp_path / "r.json"
    assert cli.eval_main([str(tiny_run), "--task", "caption", "--shards", str(tmp_path / "laion"), "--no-progress",
                          "--tokenize", "simple", "--out", str(out)]) == 0
    res = _result(out)
    assert res["n"] == 5
    assert [e["answers"] for e in res["examples"]] == [[caption] for shard in written for _, caption in shard]


def test_vqa_from_shards_with_vqav2_files(tiny_run, tmp_path):
    keys = ["101", "102", "103"]
    shards = _write_keyed_shards(tmp_path / "shards", keys)
    questions = {"questions": [{"question_id": 10 + i, "image_id": int(k), "question": "what color is it ?"}
                               for i, k in enumerate(keys)]}
    qpath, apath = tmp_path / "q.json", tmp_path / "a.json"
    qpath.write_text(json.dumps(questions))

    def annotate(answers_per_q):
        apath.write_text(json.dumps({"annotations": [
            {"question_id": 10 + i, "image_id": int(k), "answers": [{"answer": a} for a in answers_per_q[i]]}
            for i, k in enumerate(keys)]}))

    annotate([["zzz"] * 10] * 3)
    out = tmp_path / "v.json"
    base = [str(tiny_run), "--task", "vqa", "--shards", str(shards), "--questions", str(qpath),
            "--annotations", str(apath), "--no-progress", "--out", str(out)]
    assert cli.eval_main(base) == 0
    res = _result(out)
    assert res["n"] == 3 and res["vqa_accuracy"] == 0.0
    from frozen_scale.eval.metrics import normalize_vqa_answer

    preds = [normalize_vqa_answer(tasks.first_sentence(e["prediction"])) for e in res["examples"]]
    # 10-choose-9 subsets: 3 humans agreeing with the model score (3*2/3 + 7*1)/10 = 0.9,
    # 2 humans (2*1/3 + 8*2/3)/10 = 0.6
    annotate([[preds[0]] * 3 + ["zzz"] * 7, [preds[1]] * 2 + ["zzz"] * 8, ["zzz"] * 10])
    assert cli.eval_main(base) == 0
    assert _result(out)["vqa_accuracy"] == pytest.approx((0.9 + 0.6 + 0.0) / 3)
    # 1-shot: the shot comes from another image and is written in the paper's format
    ns = argparse.Namespace(shards=str(shards), questions=str(qpath), annotations=str(apath), seed=0,
                            shots=1, num_samples=3)
    items = tasks.shard_items("vqa", {}, ns, 16)
    for item in items:
        assert [type(s).__name__ for s in item.segments] == ["Image", "Text", "Text", "Image", "Text"]
        assert item.segments[1] == Text("Question: what color is it ? Answer:")
        assert item.images[0] is not item.images[1]


def test_fewshot_classification_from_labelled_shards(tiny_run, tmp_path):
    from frozen_scale.eval.names import NONSENSE_NAMES

    keys = [f"img{i:03d}" for i in range(12)]
    shards = _write_keyed_shards(tmp_path / "shards", keys)
    ns = argparse.Namespace(shards=str(shards), seed=0, shots=1, ways=2, num_samples=6, label_key="json:shape",
                            task_induction=True)
    items = tasks.shard_items("fewshot-cls", {}, ns, 16)
    assert len(items) == 6
    for item in items:
        names = set(item.meta["bound"])
        assert names <= set(NONSENSE_NAMES) and len(names) == 2 and item.answers[0] in names
        assert item.segments[0] == Text(fewshot.task_induction_text(
            [s.text.split()[-1].rstrip(".") for s in item.segments[2:5:2]]))
        assert [type(s).__name__ for s in item.segments[1:]] == ["Image", "Text"] * 3
        assert item.segments[-1] == Text(fewshot.CLASSIFICATION_QUESTION) and len(item.images) == 3
    out = tmp_path / "c.json"
    assert cli.eval_main([str(tiny_run), "--task", "fewshot-cls", "--shards", str(shards), "--label-key",
                          ns.label_key, "--num-samples", "4", "--no-progress", "--out", str(out)]) == 0
    assert _result(out)["n"] == 4 and _result(out)["shots"] == 1
    ns.ways = 5
    with pytest.raises(ValueError, match="5-way"):
        tasks.shard_items("fewshot-cls", {}, ns, 16)


def test_user_errors_are_messages(tiny_run, tiny_shards, tmp_path, capsys):
    from frozen_scale.app.cli import main

    assert main(["eval", str(tmp_path / "nothing"), "--task", "caption"]) == 2
    assert main(["eval", str(tiny_run), "--task", "binding", "--shards", str(tiny_shards)]) == 2
    assert main(["eval", str(tiny_run), "--task", "vqa", "--shards", str(tiny_shards)]) == 2
    assert main(["eval", str(tiny_run), "--task", "caption", "--shards", str(tmp_path)]) == 2
    assert main(["eval", str(tiny_run), "--task", "caption", "--shards", str(tiny_shards),
                 "--captions-json", str(tmp_path / "none.json")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("frozen-scale")]
    assert len(err) == 5 and all(line.startswith("frozen-scale eval: error: ") for line in err), err
    for line, said in zip(err, ["neither an export", "needs items from an item source", "--questions", "no manifest", "no such file"]):
        assert said in line, line
    with pytest.raises(SystemExit, match="2"):
        cli.eval_main([str(tiny_run), "--task", "fewshot-cls", "--ways", "4"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_give_the_one_rank_predictions(tiny_run, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    common = ["--task", "vqa", "--shots", "1", "--num-samples", "7", "--no-progress", "--batch-size", "2"]
    assert cli.eval_main([str(tiny_run), *common, "--out", str(one)]) == 0
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "frozen_scale.app.cli", "eval", str(tiny_run / "export"), *common, "--out", str(two)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _result(one), _result(two)
    assert [e["prediction"] for e in a["examples"]] == [e["prediction"] for e in b["examples"]]
    assert a["vqa_accuracy"] == b["vqa_accuracy"] and b["n"] == 7
