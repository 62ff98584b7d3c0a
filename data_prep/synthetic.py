"""The built-in shapes world written as shards through the same pipeline as real corpora: the one
world shard writer (the demo, `frozen-scale reproduce`, the benchmarks and the tests use it).

Sample i: __key__ = scene.key, png/jpg/webp = the rendered scene (black when blind), txt = its
caption, json = the scene plus every (question, answer) pair it answers. Next to the tars: each
shard's status table and stats (its commit marker), job.json and manifest.json (`data_prep.manifest`).
"""

from __future__ import annotations

from data_prep.options import ImageOptions, JobOptions
from data_prep.pipeline import run_job
from data_prep.sources import SyntheticWorld

FORMAT_ALIASES = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}


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
    source = SyntheticWorld(seed=seed, split=split, count=count, blind=blind)
    return run_job(source, output_url, opts, storage_options=storage_options, num_cpus=num_workers or None,
                   progress=progress, in_process=num_workers == 0)
