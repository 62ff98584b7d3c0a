"""Shards people already have: a folder in img2dataset's layout, without our manifest, read by the
shard listing (counts from its _stats.json, unknown without one), the loader, the eval shard
reader, data_prep's manifest reader, and a training run; `prep --out` into it is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from data_prep import cli
from data_prep.manifest import read_manifest
from frozen_scale.data.shards import list_shards, total_samples

from tests.support.core_fixtures import tiny_config_dict
from tests.support.img2dataset_layout import write_img2dataset_folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[list[tuple[str, str]]]]:
    out = tmp_path_factory.mktemp("img2dataset") / "laion-part"
    return out, write_img2dataset_folder(out, kept=(5, 4, 3), with_stats=(True, True, False))


def test_listing_takes_counts_from_stats_and_leaves_the_rest_unknown(corpus):
    folder, written = corpus
    shards = list_shards(str(folder))
    assert [s.url for s in shards] == [f"{folder}/{i:05d}.tar" for i in range(3)]
    assert [s.num_samples for s in shards] == [5, 4, None]  # the last has no _stats.json
    assert total_samples(shards) is None
    assert list_shards(f"file://{folder}/")[0] == list_shards(f"file://{folder}")[0]
    (folder / "00002_stats.json").write_text(json.dumps({"count": 4, "successes": 3}))
    try:
        assert total_samples(list_shards(str(folder))) == 12
    finally:
        (folder / "00002_stats.json").unlink()


def test_a_folder_with_nothing_to_read_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no shards here")
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no manifest"):
        list_shards(str(tmp_path / "missing"))


def test_the_loader_reads_every_sample(corpus, tiny_lm_dir):
    from frozen_scale.data.loader import CaptionStream, ResumableBatches
    from frozen_scale.model.lm import load_tokenizer

    folder, written = corpus
    stream = CaptionStream(list_shards(str(folder)), load_tokenizer(str(tiny_lm_dir)), k=2, image_size=16,
                           batch_size=4, seed=0, rank=0, world_size=1, shuffle_buffer=1)
    batches = iter(ResumableBatches(stream, num_workers=0))
    seen = {}
    for _ in range(3):  # one epoch: 12 samples
        batch = next(batches)
        seen.update(zip(batch["keys"], batch["captions"]))
    assert seen == {key: caption for shard in written for key, caption in shard}
    assert batch["pixel_values"].shape[1:] == (3, 16, 16)


def test_the_eval_shard_reader_reads_every_sample(corpus):
    from frozen_scale.eval.coco import iter_samples

    folder, written = corpus
    samples = list(iter_samples(str(folder), 16))
    assert [(s["key"], s["txt"]) for s in samples] == [pair for shard in written for pair in shard]
    assert samples[0]["json"]["status"] == "success" and samples[0]["image"].size == (16, 16)


def test_data_prep_lists_it_and_refuses_to_write_into_it(corpus, tmp_path, capsys):
    folder, _ = corpus
    manifest = read_manifest(str(folder))
    assert manifest["listed_from_folder"] and manifest["num_samples"] is None
    assert [(s["name"], s["num_samples"]) for s in manifest["shards"]] == [
        ("00000.tar", 5), ("00001.tar", 4), ("00002.tar", None)]

    table = tmp_path / "t.csv"
    table.write_text("url,caption\nhttps://images.example.org/a.jpg,a\n")
    before = sorted(p.name for p in folder.iterdir())
    assert cli.main(["urls", str(table), "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "img2dataset" in err and "data.train_shards" in err and "\n" not in err
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written there


def test_training_on_it(corpus, tiny_lm_dir, tmp_path):
    from frozen_scale.config import load_config
    from frozen_scale.train.trainer import train

    folder, _ = corpus
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tiny_lm_dir, folder, tmp_path / "run",
                                                    train={"steps": 2}, checkpoint={"every": 0})))
    assert train(load_config(path)) == 0
