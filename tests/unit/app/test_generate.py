"""`frozen-scale generate` and `FrozenVLM.generate_text`: prompts with placed images, the same
text as evaluation's generation, attention shares over the right slots, the picture, user errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image as PILImage

from frozen_scale.app import cli
from frozen_scale.app import generate as gen_cli
from frozen_scale.config import InputError, NotFoundError
from frozen_scale.data.prompts import (IMAGE_TOKEN, Image, Text, caption_prompt, encode, image_slot_runs,
                                       parse_prompt)
from frozen_scale.world import items as fw
from frozen_scale.eval import tasks
from frozen_scale.model.attention import lm_attentions, shares_over_slots
from frozen_scale.world import scenes, text
from tests.support.core_fixtures import TINY, train_tiny_run

K = 3


# -- prompts ----------------------------------------------------------------------------------
def test_parse_prompt_places_images_where_written():
    assert parse_prompt("Q <image> A <image>") == [Text("Q"), Image(), Text("A"), Image()]
    assert parse_prompt("<image> Question: what is this? Answer:") == [Image(), Text("Question: what is this? Answer:")]
    assert parse_prompt("<image><image> two") == [Image(), Image(), Text("two")]
    assert parse_prompt("no image here") == [Text("no image here")]
    # the default caption prompt is the task runner's caption layout
    item = fw.caption_items(0, "eval", 1, "caption :", 16)[0]
    assert parse_prompt(caption_prompt("caption :")) == item.segments
    assert parse_prompt(caption_prompt("")) == [Image()]


def test_slot_positions_follow_the_prompt():
    tok = text.build_tokenizer()
    ids = encode(parse_prompt("question <image> answer : <image> caption"), tok, K).input_ids
    first = 1 + len(tok("question", add_special_tokens=False)["input_ids"])  # after bos
    second = first + K + len(tok("answer :", add_special_tokens=False)["input_ids"])
    assert image_slot_runs(ids, K) == [list(range(first, first + K)), list(range(second, second + K))]
    assert all(ids[p] == IMAGE_TOKEN for run in image_slot_runs(ids, K) for p in run)
    with pytest.raises(ValueError, match="multiple of k"):
        image_slot_runs([IMAGE_TOKEN] * 4, K)


def test_shares_are_sums_over_the_given_slots():
    torch.manual_seed(0)
    width, heads = 9, 2
    causal = torch.ones(width, width).tril().bool()
    layers = [torch.randn(1, heads, width, width).masked_fill(~causal, float("-inf")).softmax(-1) for _ in range(3)]
    slots, queries = [[1, 2], [5, 6]], [6, 7, 8]
    shares = shares_over_slots(layers, queries, slots)
    assert shares.shape == (3, 3, 3)
    for t, q in enumerate(queries):
        for layer, weights in enumerate(layers):
            row = weights[0, :, q].mean(0)
            expected = [row[[1, 2]].sum(), row[[5, 6]].sum(), row[[0, 3, 4, 7, 8]].sum()]
            torch.testing.assert_close(shares[t, layer], torch.stack(expected))
    torch.testing.assert_close(shares.sum(-1), torch.ones(3, 3), atol=1e-5, rtol=0)
    # all the weight on one slot of image 2: share 1 there, 0 elsewhere
    one_hot = torch.zeros(1, heads, width, width)
    one_hot[..., 6] = 1.0
    assert shares_over_slots([one_hot], [8], slots)[0, 0].tolist() == [0.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def tiny_vlm(tiny_lm_dir):
    from frozen_scale.config import ModelConfig, VisionConfig
    from frozen_scale.model.frozen_vlm import FrozenVLM
    from frozen_scale.model.lm import load_lm, load_tokenizer

    torch.manual_seed(0)
    cfg = ModelConfig(lm_path=str(tiny_lm_dir), prefix_length=K,
                      vision=VisionConfig(kind="resnet", image_size=16, resnet_widths=[8, 16]))
    model = FrozenVLM(cfg, load_lm(str(tiny_lm_dir))).eval()
    model.tokenizer = load_tokenizer(str(tiny_lm_dir))
    return model


def _scene_image(i: int, size: int = 16):
    return scenes.render(scenes.make_scene(0, "eval", i), size)


def test_attention_shares_of_a_generation(tiny_vlm):
    tok = tiny_vlm.tokenizer
    prompt = "question <image> answer : <image> caption"
    images = [_scene_image(0), _scene_image(1)]
    text_out, shares = tiny_vlm.generate_text(images, prompt, max_new_tokens=4, return_attention=True)
    assert text_out == tiny_vlm.generate_text(images, prompt, max_new_tokens=4)
    prompt_ids = encode(parse_prompt(prompt), tok, K).input_ids
    assert shares.slots == image_slot_runs(prompt_ids, K) and len(shares.slots) == 2
    assert shares.columns == ["image 1", "image 2", "text"]
    rows = len(shares.tokens)
    assert 1 <= rows <= 4 and shares.per_layer.shape == (rows, TINY["n_layer"], 3)
    torch.testing.assert_close(shares.per_layer.sum(-1), torch.ones(rows, TINY["n_layer"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(shares.mean.sum(-1), torch.ones(rows), atol=1e-5, rtol=0)
    assert (shares.per_layer[..., :2] > 0).all()  # the tokens do look at the images
    # row t is the query that produced generated token t: the teacher-forced forward's argmax
    assert shares.queries == list(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + rows))
    new_ids = shares.token_ids
    assert shares.tokens == [tok.decode([t]) for t in new_ids]
    ids = torch.tensor([prompt_ids + new_ids[:-1]])
    with torch.no_grad():
        pixels = tiny_vlm.pixel_values(images)
        logits = tiny_vlm.lm(inputs_embeds=tiny_vlm.embed(ids, pixels)).logits[0]
    assert logits[shares.queries].argmax(-1).tolist() == new_ids
    # the shares are sums over the slots the prompt put the images in (positions counted by hand)
    first = 1 + len(tok("question", add_special_tokens=False)["input_ids"])
    second = first + K + len(tok("answer :", add_special_tokens=False)["input_ids"])
    assert shares.slots == [list(range(first, first + K)), list(range(second, second + K))]
    with torch.no_grad():
        weights = lm_attentions(tiny_vlm.lm, tiny_vlm.embed(ids, pixels))
    for layer, w in enumerate(weights):
        rows = w[0].mean(0)[shares.queries]
        by_hand = torch.stack([rows[:, first:first + K].sum(-1), rows[:, second:second + K].sum(-1),
                               rows[:, :first].sum(-1) + rows[:, first + K:second].sum(-1)
                               + rows[:, second + K:].sum(-1)], -1)
        torch.testing.assert_close(shares.per_layer[:, layer], by_hand)
    assert tiny_vlm.lm.config._attn_implementation == "sdpa"  # eager only for the measuring pass


def test_python_api_errors(tiny_vlm):
    img = _scene_image(0)
    with pytest.raises(InputError, match="2 <image> but 1 image"):
        tiny_vlm.generate_text([img], "<image> and <image>")
    with pytest.raises(InputError, match="captions one image"):
        tiny_vlm.generate_text([img, img])


# -- a tiny trained run -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tiny_lm_dir, tiny_shards, tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("genrun"), tiny_lm_dir, tiny_shards)


@pytest.fixture(scope="module")
def exported(tiny_run):
    return tasks.load_model(tasks.resolve_export(str(tiny_run)), device="cpu")


def test_generate_text_is_the_eval_generation(exported):
    model, tok, meta = exported
    size = model.cfg.vision.image_size
    items = fw.caption_items(0, "eval", 3, meta["data"]["prompt"], size)
    for beams in (1, 2):
        expected = tasks.predict(model, tok, "caption", items, num_beams=beams, max_new_tokens=6, progress=False)
        assert [model.generate_text(it.images, num_beams=beams, max_new_tokens=6) for it in items] == expected
    vqa = fw.vqa_items(0, "eval", 3, 0, size)
    expected = tasks.predict(model, tok, "vqa", vqa, progress=False)
    got = [model.generate_text(it.images, f"<image> {it.segments[1].text}", max_new_tokens=4) for it in vqa]
    assert got == expected and vqa[0].segments == parse_prompt(f"<image> {vqa[0].segments[1].text}")


def test_from_pretrained_takes_a_run_folder(tiny_run, exported, tmp_path):
    from frozen_scale.model.frozen_vlm import FrozenVLM

    model = FrozenVLM.from_pretrained(str(tiny_run))  # the run's export/
    assert model.caption_prompt == "caption :" and model.tokenizer is not None
    img = _scene_image(2, model.cfg.vision.image_size)
    assert model.generate_text([img]) == exported[0].generate_text([img])
    bare = tmp_path / "run"
    shutil.copytree(tiny_run, bare, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(NotFoundError, match="frozen-scale export"):
        FrozenVLM.from_pretrained(str(bare))


def _save(img, path: Path) -> str:
    img.save(path)
    return str(path)


def test_cli_on_a_run_folder_and_on_its_export(tiny_run, tmp_path, capsys):
    """A run folder without an export is exported first (as eval does); the export gives the same text."""
    run = tmp_path / "run"  # the run without its export/ (its config still names its checkpoints)
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export"))
    image = _save(_scene_image(3, 16), tmp_path / "a.png")
    assert cli.main(["generate", str(run), "--image", image, "--device", "cpu", "--max-new-tokens", "6"]) == 0
    from_run = capsys.readouterr().out
    assert (run / "export" / "frozen_vlm.json").exists() and from_run.strip()
    assert cli.main(["generate", str(run / "export"), "--image", image, "--device", "cpu", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == from_run
    model, tok, _ = tasks.load_model(str(run / "export"), device="cpu")
    items = fw.caption_items(0, "eval", 4, "caption :", 16)[3:]
    assert from_run.strip() == tasks.predict(model, tok, "caption", items, max_new_tokens=6, progress=False)[0]


def test_cli_prints_the_text_and_writes_the_attention_png(tiny_run, exported, tmp_path, capsys):
    model = exported[0]
    size = model.cfg.vision.image_size
    a = _save(_scene_image(0, size), tmp_path / "a.png")
    b = _save(_scene_image(1, size).convert("L"), tmp_path / "b.jpg")  # any format and mode
    out = tmp_path / "maps" / "att.png"
    prompt = "<image> caption : <image> caption :"
    assert cli.main(["generate", str(tiny_run), "--image", a, "--image", b, "--prompt", prompt,
                     "--beams", "2", "--max-new-tokens", "3", "--attention", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    from frozen_scale.data.images import decode_image

    images = [decode_image(Path(p).read_bytes(), size) for p in (a, b)]
    assert printed.out.strip() == model.generate_text(images, prompt, max_new_tokens=3, num_beams=2)
    assert str(out) in printed.err
    with PILImage.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 200 and png.size[1] > 100
        png.verify()


def test_user_errors_are_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    a = _save(_scene_image(0), tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    cases = [
        ([str(tiny_run), "--image", a, "--prompt", "<image> and <image>"], "2 <image> but 1 --image"),
        ([str(tiny_run), "--image", a, "--image", a], "without --prompt one image"),
        ([str(tiny_run), "--image", str(tmp_path / "missing.png")], "no such image file"),
        ([str(tiny_run), "--image", str(tmp_path / "bad.png"), "--device", "cpu"], "cannot read image"),
        ([str(tmp_path / "nothing"), "--image", a], "neither an export"),
    ]
    for argv, message in cases:
        assert cli.main(["generate", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith("frozen-scale generate: "), err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["generate", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--image", "--prompt", "--beams", "--max-new-tokens", "--device", "--attention"))
    assert "generate" in cli.COMMANDS and "frozen-scale generate" in cli.__doc__
    assert gen_cli.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
