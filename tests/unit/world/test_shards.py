"""The synthetic world through the pipeline keeps the demo's contract (write_world_shards)."""

from __future__ import annotations

import io
import json

from tests.support.prep_ray import ray_on_loopback


def test_write_world_shards_contract(tmp_path):
    import ray
    import webdataset as wds
    from PIL import Image

    from frozen_scale.world.shards import write_world_shards
    from frozen_scale.world import scenes

    assert not ray.is_initialized()
    with ray_on_loopback():
        manifest = write_world_shards(str(tmp_path / "w"), seed=3, split="eval", count=250, samples_per_shard=100,
                                      image_size=24, image_format="png", num_workers=2)
    assert not ray.is_initialized(), "a Ray it started must be shut down"
    assert manifest["format"] == "frozen_scale.shards/1" and manifest["num_samples"] == 250
    assert [(s["name"], s["num_samples"], s["stats"]) for s in manifest["shards"]] == [
        ("00000.tar", 100, "00000_stats.json"), ("00001.tar", 100, "00001_stats.json"),
        ("00002.tar", 50, "00002_stats.json")]
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["shards"] == manifest["shards"]

    urls = [str(tmp_path / "w" / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 250
    for i in (0, 137, 249):
        scene = scenes.make_scene(3, "eval", i)
        s = samples[i]
        assert s["__key__"] == scene.key and s["txt"].decode() == scenes.caption(scene)
        meta = json.loads(s["json"])
        assert meta == dict(scene.to_json(), questions=[list(q) for q in scenes.questions(scene)])
        img = Image.open(io.BytesIO(s["png"]))
        assert img.format == "PNG" and img.convert("RGB").tobytes() == scenes.render(scene, 24).tobytes()


def test_in_process_and_ray_write_the_same_shards(tmp_path):
    """num_workers=0 (no Ray: tests, benchmarks, reproduce) and the Ray pipeline give the same bytes."""
    from frozen_scale.world.shards import write_world_shards

    kw = dict(seed=1, split="train", count=30, samples_per_shard=12, image_size=16)
    here = write_world_shards(str(tmp_path / "here"), num_workers=0, **kw)
    ray_ = write_world_shards(str(tmp_path / "ray"), num_workers=1, **kw)
    assert here["shards"] == ray_["shards"] and here["num_samples"] == 30
    for s in here["shards"]:
        assert (tmp_path / "here" / s["name"]).read_bytes() == (tmp_path / "ray" / s["name"]).read_bytes()
    # resuming a finished folder keeps it as it is
    again = write_world_shards(str(tmp_path / "here"), num_workers=0, **kw)
    assert again["shards"] == here["shards"]
