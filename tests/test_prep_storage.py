"""The same job to s3:// (a local S3 server) and to file:// gives identical shards."""

from __future__ import annotations

import io
import json
import tarfile

import fsspec
import pytest

from data_prep.loopback import ImageServer, make_image
from data_prep.manifest import read_manifest
from data_prep.options import FetchOptions, ImageOptions, JobOptions
from data_prep.sources import UrlTable


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from data_prep.pipeline import _start_ray

    started = _start_ray(None, 2)
    yield
    if started:
        ray.shutdown()


def test_s3_and_file_outputs_hold_identical_shards(tmp_path, s3_server, ray_local):
    from data_prep.pipeline import run_job

    with ImageServer() as srv:
        lines = ["url,caption,license"]
        for i in range(12):
            fmt = "PNG" if i % 3 == 0 else "JPEG"
            url = srv.add(f"/i{i}", make_image(80 + 7 * i, 60 + 5 * i, fmt, seed=100 + i))
            lines.append(f"{url},picture number {i},cc-by")
        lines.append(f"{srv.url('/nowhere')},a dead link,cc-by")
        table = tmp_path / "t.csv"
        table.write_text("\n".join(lines) + "\n")
        opts = JobOptions(samples_per_shard=5, threads=4,
                          fetch=FetchOptions(timeout_s=5, retries=0),
                          image=ImageOptions(image_size=48, resize_mode="border", encode_format="webp",
                                             encode_quality=80))
        local = run_job(UrlTable(str(table), extra_cols=["license"]), f"file://{tmp_path}/out", opts, progress=False)
        bucket = s3_server.new_bucket()
        remote = run_job(UrlTable(str(table), extra_cols=["license"]), f"{bucket}/cc/v1", opts,
                         storage_options=s3_server.storage_options, progress=False)

    assert local["shards"] == remote["shards"] and local["num_samples"] == 12
    assert read_manifest(f"{bucket}/cc/v1", s3_server.storage_options)["shards"] == remote["shards"]
    s3 = fsspec.filesystem("s3", **s3_server.storage_options)
    names = sorted(p.rsplit("/", 1)[-1] for p in s3.ls(f"{bucket}/cc/v1", refresh=True))
    assert not [n for n in names if ".tmp" in n]
    for shard in local["shards"]:
        a = (tmp_path / "out" / shard["name"]).read_bytes()
        b = s3.cat_file(f"{bucket}/cc/v1/{shard['name']}")
        assert a == b
        with tarfile.open(fileobj=io.BytesIO(b)) as tar:
            assert len(tar.getnames()) == 3 * shard["num_samples"]
            meta = json.loads(tar.extractfile(tar.getnames()[2]).read())
            assert meta["license"] == "cc-by" and meta["width"] == meta["height"] == 48

