"""The built-in shapes world written as shards through the same pipeline as real corpora: the one
world shard writer (the demo, `frozen-scale reproduce`, the benchmarks and the tests use it), a
generated source of data_prep (`data_prep.generated`; `frozen-scale prep synthetic`).

Sample i: __key__ = scene.key, png/jpg/webp = the rendered scene (black when blind), txt = its
caption, json = the scene plus every (question, answer) pair it answers. Next to the tars: each
shard's status table and stats (its commit marker), job.json and manifest.json (`data_prep.manifest`).
"""

from __future__ import annotations

import argparse

from data_prep.generated import GeneratedSource
from data_prep.options import ImageOptions, JobOptions
from frozen_scale.world import scenes

FORMAT_ALIASES = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}


def make_sample(row: dict, image_size: int) -> tuple:
    """Row -> (key, image, caption, meta): scene `index` of `split`; black when the row is blind."""
    from frozen_scale.data.blind import black_image

    scene = scenes.make_scene(row["seed"], row["split"], row["index"])
    img = black_image(image_size) if row.get("blind") else scenes.render(scene, image_size)
    meta = dict(scene.to_json(), questions=[list(qa) for qa in scenes.questions(scene)])
    return scene.key, img, scenes.caption(scene), meta


def world_source(*, seed: int, split: str, count: int, blind: bool = False) -> GeneratedSource:
    """Scenes 0..count-1 of `split`; blind: every image black (`frozen_scale.data.blind`),
    captions and scene json unchanged."""
    scenes.make_scene(seed, split, 0)  # validates the split name
    params = {"seed": seed, "split": split, **({"blind": True} if blind else {})}
    return GeneratedSource("synthetic", make_sample, count, params)


def add_prep_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `frozen-scale prep synthetic` (registered in `world.registry`)."""
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help=f"one of {', '.join(scenes.SPLITS)}")


def write_world_shards(output_url: str, *, seed: int, split: str, count: int, samples_per_shard: int,
                       image_size: int = 32, image_format: str = "png", blind: bool = False,
                       num_workers: int | None = None, storage_options: dict | None = None,
                       progress: bool = False) -> dict:
    """Render `count` scenes of `split` into shards under `output_url`; returns manifest.json's
    content. blind: every image black (`frozen_scale.data.blind`), captions unchanged.

    num_workers=0 writes the shards in this process, one after another, without Ray. Otherwise a
    running Ray is used if there is one, else a local one is started (and stopped) with
    `num_workers` CPUs (None: all). Committed shards are kept, so writing again resumes."""
    if image_format.lower() not in FORMAT_ALIASES:
        raise ValueError(f"image format '{image_format}' is not one of png, jpg, webp")
    image = ImageOptions(image_size=image_size, resize_mode="no",
                         encode_format=FORMAT_ALIASES[image_format.lower()], encode_quality=95)
    opts = JobOptions(samples_per_shard=samples_per_shard, threads=1, dedup_urls=False,
                      dedup_images=False, image=image)
    from data_prep.pipeline import run_job  # Ray: only when shards are written

    source = world_source(seed=seed, split=split, count=count, blind=blind)
    return run_job(source, output_url, opts, storage_options=storage_options, num_cpus=num_workers or None,
                   progress=progress, in_process=num_workers == 0)
