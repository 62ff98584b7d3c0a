"""data_prep end to end against a loopback HTTP server: real images plus every hostile case, each
counted under the right status; shards read back with tarfile and webdataset; Ray runs, resume,
a failing shard reported; the same job to s3:// (a local S3 server) and file:// gives identical
shards. (One module, so its Ray runs share one local Ray.)"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_prep.loopback import ImageServer, bomb_png, make_image
from data_prep.manifest import JobMismatch, read_manifest
from data_prep.options import FetchOptions, ImageOptions, JobOptions
from data_prep.shard import LocalRegistry, write_shard
from data_prep.sources import UrlTable, units

from tests.support.prep_ray import ray_on_loopback

JPEG = make_image(320, 240, "JPEG", seed=1)
PNG = make_image(200, 150, "PNG", seed=2)

# (path, route kwargs or None for no route, caption bytes, expected status, expected error)
CASES = [
    ("/ok.jpg", dict(body=JPEG, content_type="image/jpeg"), b"a photo", "success", None),
    ("/ok.png", dict(body=PNG, content_type="image/png"), b"a drawing", "success", None),
    ("/missing.jpg", None, b"gone", "failed_to_download", "http_404"),
    ("/flaky.jpg", dict(body=make_image(100, 80, "JPEG", seed=3), fail_first=1), b"flaky", "success", None),
    ("/slow.jpg", dict(body=make_image(90, 90, "JPEG", seed=4), delay_s=8.0), b"slow", "failed_to_download", "timeout"),
    ("/trunc.jpg", dict(body=JPEG[: len(JPEG) // 2]), b"cut", "failed_to_resize", "truncated_image"),
    ("/empty.jpg", dict(body=b""), b"nothing", "failed_to_download", "empty_content"),
    ("/page.jpg", dict(body=b"<html><body>hi</body></html>", content_type="image/jpeg"), b"html",
     "failed_to_resize", "not_an_image"),
    ("/bomb.png", dict(body=bomb_png(12_000), content_type="image/png"), b"bomb", "failed_to_resize",
     "decompression_bomb"),
    ("/huge.png", dict(body=make_image(400, 400, "PNG", seed=5)), b"huge", "failed_to_download", "too_many_bytes"),
    ("file:///etc/passwd", None, b"secrets", "failed_to_download", "unsupported_scheme"),
    ("/moved.jpg", dict(body=b"", status=301, headers={"Location": "/target.jpg"}), b"moved", "success", None),
    ("/to-file.jpg", dict(body=b"", status=302, headers={"Location": "file:///etc/passwd"}), b"redirected",
     "failed_to_download", "unsupported_scheme"),
    ("/latin1.jpg", dict(body=make_image(64, 64, "JPEG", seed=6)), b"caf\xe9 au lait", "filtered", "caption_not_utf8"),
    ("/ok.jpg", None, b"the same url again", "duplicate", "duplicate_url"),
    ("/optout.jpg", dict(body=make_image(64, 64, "JPEG", seed=7), headers={"X-Robots-Tag": "noai"}), b"mine",
     "opted_out", "opted_out"),
    ("/copy.png", dict(body=PNG), b"same pixels at another url", "duplicate", "duplicate_image"),
    ("/nocap.jpg", dict(body=make_image(64, 64, "JPEG", seed=8)), b"", "filtered", "empty_caption"),
    ("/tiny.png", dict(body=make_image(10, 10, "PNG", seed=9)), b"tiny", "filtered", "too_small"),
    ("/wide.png", dict(body=make_image(300, 20, "PNG", seed=10)), b"wide", "filtered", "aspect_ratio"),
    ("/down.jpg", dict(body=JPEG, fail_first=99), b"always 500", "failed_to_download", "http_500"),
    ("/otherbot.jpg", dict(body=make_image(64, 48, "JPEG", seed=11), headers={"X-Robots-Tag": "otherbot: noai"}),
     b"not for us", "success", None),
    ("/us.jpg", dict(body=make_image(64, 48, "JPEG", seed=12), headers={"X-Robots-Tag": "frozen_scale: noimageai"}),
     b"for us", "opted_out", "opted_out"),
]


def job_options(server, **kw) -> JobOptions:
    image = ImageOptions(image_size=64, resize_mode="center_crop", encode_format="jpg", min_side=16,
                         max_aspect_ratio=4.0, max_pixels=50_000_000)
    # a timeout far from every fast route under load (a 2-core machine running Ray), and far below /slow.jpg
    fetch = FetchOptions(timeout_s=2.5, retries=1, backoff_s=0.05, max_bytes=200_000, allow_hosts=(server.origin,))
    return JobOptions(samples_per_shard=kw.pop("samples_per_shard", 100), threads=8, fetch=fetch, image=image, **kw)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        for path, route, *_ in CASES:
            if route is not None and path.startswith("/"):
                srv.add(path, **route)
        srv.add("/target.jpg", make_image(70, 50, "JPEG", seed=13))  # where /moved.jpg points
        yield srv


def write_table(server, folder: Path) -> Path:
    lines = [b"url,caption,source_id"]
    for i, (path, _, caption, *_rest) in enumerate(CASES):
        url = path if "://" in path else server.url(path)
        lines.append(url.encode() + b"," + caption + b"," + str(1000 + i).encode())
    table = folder / "corpus.csv"
    table.write_bytes(b"\n".join(lines) + b"\n")
    return table


def read_status(out: Path) -> list[dict]:
    rows = []
    for f in sorted(out.glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return sorted(rows, key=lambda r: r["row"])


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def check_expected(rows: list[dict]) -> None:
    """Identical pixels in two shards included: the earlier row (1) keeps them, whatever the timing."""
    assert [r["row"] for r in rows] == list(range(len(CASES)))
    for r, (path, _, _, status, error) in zip(rows, CASES):
        assert (r["status"], r["error_message"]) == (status, error), (path, r)


def test_every_hostile_row_is_counted_once_and_shards_read_back(server, tmp_path):
    source = UrlTable(str(write_table(server, tmp_path)), extra_cols=["source_id"])
    opts = job_options(server)
    (unit,) = list(units(source, opts.samples_per_shard))
    out = tmp_path / "out"
    stats = write_shard(unit, str(out), opts, registry=LocalRegistry())

    rows = read_status(out)
    check_expected(rows)
    assert server.hits["/flaky.jpg"] == 2 and server.hits["/down.jpg"] == 2  # one retry each
    assert server.hits["/page.jpg"] == 1  # not retried: a 200 with bad content
    assert all("frozen_scale" in ua for ua in server.user_agents)

    expected_ok = [i for i, c in enumerate(CASES) if c[3] == "success"]
    assert stats["num_samples"] == len(expected_ok) == stats["status_counts"]["success"]
    assert sum(stats["status_counts"].values()) == len(CASES)
    assert stats["error_histogram"]["timeout"] == 1 and stats["error_histogram"]["duplicate_url"] == 1

    samples = tar_samples(out / "00000.tar")
    assert sorted(samples) == [f"{i:09d}" for i in expected_ok]
    for key, files in samples.items():
        assert set(files) == {"jpg", "txt", "json"}
        meta = json.loads(files["json"])
        img = Image.open(io.BytesIO(files["jpg"]))
        assert img.format == "JPEG" and img.size == (64, 64) == (meta["width"], meta["height"])
        assert meta["source_id"] == str(1000 + int(key)) and meta["status"] == "success"
        assert files["txt"].decode() == CASES[int(key)][2].decode()
    assert json.loads(samples["000000000"]["json"])["original_width"] == 320

    import webdataset as wds

    read = list(wds.WebDataset(str(out / "00000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in read] == sorted(samples)
    assert all(s["jpg"] == samples[s["__key__"]]["jpg"] for s in read)


def test_ray_job_counts_everything_resumes_and_refuses_another_job(server, tmp_path, ray_local):
    from data_prep.pipeline import run_job

    table = write_table(server, tmp_path)
    out = tmp_path / "out"
    opts = job_options(server, samples_per_shard=8)
    manifest = run_job(UrlTable(str(table)), str(out), opts, progress=False)

    rows = read_status(out)
    check_expected(rows)
    assert manifest == read_manifest(str(out))
    assert [s["name"] for s in manifest["shards"]] == ["00000.tar", "00001.tar", "00002.tar"]
    for shard in manifest["shards"]:
        stats = json.loads((out / shard["stats"]).read_text())
        samples = tar_samples(out / shard["name"])
        assert stats["num_samples"] == shard["num_samples"] == len(samples)
    assert manifest["num_samples"] == sum(r["status"] == "success" for r in rows)

    hits = dict(server.hits)
    again = run_job(UrlTable(str(table)), str(out), opts, progress=False)
    assert dict(server.hits) == hits  # every shard was committed: nothing re-downloaded
    assert again["shards"] == manifest["shards"]

    with pytest.raises(JobMismatch, match="samples_per_shard"):
        run_job(UrlTable(str(table)), str(out), job_options(server, samples_per_shard=5), progress=False)


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A local Ray whose workers have the object store's credentials in their environment, as a
    cluster's nodes do (data_prep forwards storage settings to workers, never credentials)."""
    import ray

    from data_prep.pipeline import _start_ray

    with ray_on_loopback():
        started = _start_ray(None, 2)
        yield
        if started:
            ray.shutdown()


def test_a_shard_that_keeps_failing_is_reported_not_dropped_and_rerun_fills_it(server, tmp_path, ray_local):
    from data_prep.pipeline import PrepIncomplete, run_job

    table = write_table(server, tmp_path)
    out = tmp_path / "out"
    (out / "00001.tar").mkdir(parents=True)  # the shard's tar cannot be put in place: OSError
    opts = job_options(server, samples_per_shard=8)
    before = server.hits["/optout.jpg"]  # a shard-1 row
    with pytest.raises(PrepIncomplete) as err:
        run_job(UrlTable(str(table)), str(out), opts, progress=False, max_retries=1)
    assert list(err.value.failed) == [1] and "IsADirectoryError" in err.value.failed[1]
    assert server.hits["/optout.jpg"] - before == 2  # the OSError was retried once
    manifest = read_manifest(str(out))
    assert manifest["complete"] is False and manifest["failed_shards"] == [1]
    assert [s["name"] for s in manifest["shards"]] == ["00000.tar", "00002.tar"]

    (out / "00001.tar").rmdir()
    hits = dict(server.hits)
    manifest = run_job(UrlTable(str(table)), str(out), opts, progress=False)
    assert manifest["complete"] and [s["name"] for s in manifest["shards"]] == ["00000.tar", "00001.tar", "00002.tar"]
    refetched = {p for p in server.hits if server.hits[p] != hits.get(p, 0)}
    shard1_paths = {c[0] for c in CASES[8:16]} | {"/target.jpg"}  # /moved.jpg redirects there
    assert refetched and refetched <= shard1_paths  # only the failed shard's rows were redone
    check_expected(read_status(out))


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
                          fetch=FetchOptions(timeout_s=5, retries=0, allow_hosts=(srv.origin,)),
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



def test_dedup_follows_input_order_not_timing(tmp_path, ray_local):
    """The same image at rows 0, 2 and 4 (three shards): row 0 keeps it, though its shard is the
    slowest; with the delays swapped the output is byte for byte the same."""
    from data_prep.pipeline import run_job

    same = make_image(90, 70, "JPEG", seed=50)
    with ImageServer() as srv:
        paths = ["/x-first", "/a", "/x-second", "/b", "/x-third", "/c"]
        for i, path in enumerate(paths):
            srv.add(path, same if path.startswith("/x") else make_image(60, 50, "JPEG", seed=51 + i),
                    delay_s=1.5 if path == "/x-first" else 0.0)
        table = tmp_path / "t.csv"
        table.write_text("url,caption\n" + "".join(f"{srv.url(p)},row {i}\n" for i, p in enumerate(paths)))
        opts = JobOptions(samples_per_shard=2, threads=2, image=ImageOptions(image_size=32),
                          fetch=FetchOptions(timeout_s=20, allow_hosts=(srv.origin,)))
        run_job(UrlTable(str(table)), str(tmp_path / "one"), opts, progress=False, max_in_flight=3)
        srv.routes["/x-first"].delay_s, srv.routes["/x-third"].delay_s = 0.0, 1.5
        run_job(UrlTable(str(table)), str(tmp_path / "two"), opts, progress=False, max_in_flight=3)

    rows = read_status(tmp_path / "one")
    assert [(r["status"], r["error_message"]) for r in rows] == [
        ("success", None), ("success", None), ("duplicate", "duplicate_image"), ("success", None),
        ("duplicate", "duplicate_image"), ("success", None)]
    for name in ("00000.tar", "00001.tar", "00002.tar", "00000.parquet", "00001.parquet", "00002.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_progress_moves_within_a_shard(tmp_path, ray_local, capsys):
    """One shard of slow rows: the bar shows rows done before the shard finishes."""
    import re

    from data_prep.pipeline import run_job
    from data_prep.shard import write_shard

    with ImageServer() as srv:
        for i in range(8):
            srv.add(f"/{i}.jpg", make_image(40, 30, "JPEG", seed=60 + i), delay_s=0.5)
        table = tmp_path / "t.csv"
        table.write_text("url,caption\n" + "".join(f"{srv.url(f'/{i}.jpg')},row {i}\n" for i in range(8)))
        opts = JobOptions(samples_per_shard=8, threads=1, image=ImageOptions(image_size=16),
                          fetch=FetchOptions(timeout_s=20, allow_hosts=(srv.origin,)))
        reports = []
        (unit,) = list(units(UrlTable(str(table)), 8))
        write_shard(unit, str(tmp_path / "direct"), opts, registry=LocalRegistry(), on_progress=lambda *a: reports.append(a))
        run_job(UrlTable(str(table)), str(tmp_path / "out"), opts, progress=True)

    assert any(0 < rows < 8 for rows, _ in reports) and reports[-1] == (8, 8)
    assert [r for r, _ in reports] == sorted(r for r, _ in reports)
    shown = {int(done) for done, total in re.findall(r"\b(\d+)/(\d+)\b", capsys.readouterr().err) if total == "8"}
    assert shown & set(range(1, 8)), f"the bar only showed {sorted(shown)}"
