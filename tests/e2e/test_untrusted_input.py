"""Hostile input as real files, on the paths data_prep and training read them: formats that would
run an external program, memory bombs under a real memory ceiling, compressed shards, paths out
of their root, endless files, a field that breaks the CSV reader, YAML aliases, shards that can
never feed a batch. Each is counted or refused in one line; nothing starts a process."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from data_prep.imaging import ImageRejected, process_image
from data_prep.options import FetchOptions, ImageOptions, JobOptions
from data_prep.shard import handle_row
from frozen_scale.config import ConfigError, load_config
from frozen_scale.data.image_safety import ImageError
from frozen_scale.data.images import decode_image
from frozen_scale.data.loader import Counter, tar_samples
from tests.support.core_fixtures import tiny_config_dict
from tests.support.dist_util import REPO, child_env

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def _saved(fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(out, fmt, **kw)
    return out.getvalue()


def _psd() -> bytes:
    header = b"8BPS" + (1).to_bytes(2, "big") + bytes(6) + (3).to_bytes(2, "big") + (16).to_bytes(4, "big")
    return header + (16).to_bytes(4, "big") + (8).to_bytes(2, "big") + (3).to_bytes(2, "big") + bytes(64)


HOSTILE = {"eps": EPS, "pdf": _saved("PDF"), "psd": _psd(), "ico": _saved("ICO")}


@pytest.fixture
def no_processes(monkeypatch, tmp_path):
    """A `gs` on PATH that leaves a mark, and every way of starting a process recorded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mark = tmp_path / "gs-ran"
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {mark}\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    started = []
    real_init = subprocess.Popen.__init__

    def record(self, args, *a, **kw):
        started.append(args)
        return real_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", record)
    monkeypatch.setattr(os, "posix_spawn", lambda *a, **kw: started.append(a) or 0, raising=False)
    yield started
    assert not mark.exists(), "an external program ran on image bytes"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_other_formats_are_refused_without_a_process(name, no_processes, tmp_path):
    data = HOSTILE[name]
    with pytest.raises(ImageRejected) as rejected:
        process_image(data, ImageOptions(image_size=32))
    assert rejected.value.reason == "format"
    with pytest.raises(ImageError) as refused:
        decode_image(data, 32)
    assert refused.value.reason == "format"
    # through a whole row: a folder file named .jpg, counted, not a crashed task
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(data)
    res = handle_row({"row": 0, "key": "000000000", "kind": "file", "url": str(path), "caption": "x",
                      "extra": {}}, JobOptions())
    assert (res.status, res.error) == ("failed_to_resize", "format")
    assert no_processes == []


def test_allowed_formats_still_decode_and_look_right():
    for fmt, kw in (("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {})):
        assert decode_image(_saved(fmt, **kw), 8).size == (8, 8), fmt
    # EXIF orientation applied: a 20x10 image marked "rotate 90" comes out 10 wide, 20 high
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif)
    assert process_image(out.getvalue(), ImageOptions(image_size=10, resize_mode="no")).height == 20
    # 16-bit grey is scaled, not clipped to white
    grey = Image.fromarray(__import__("numpy").full((8, 8), 32768, dtype="uint16"))
    out = io.BytesIO()
    grey.save(out, "PNG")
    assert 120 <= decode_image(out.getvalue(), 8).getpixel((0, 0))[0] <= 135


LARGE_PNG_SCRIPT = textwrap.dedent("""
    import resource, sys, threading
    from data_prep.imaging import process_image
    from data_prep.options import ImageOptions
    data = open(sys.argv[1], 'rb').read()
    with open('/proc/self/status') as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize'))
    ceiling = vm + int(sys.argv[2]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    out = []
    def work():
        try:
            out.append(process_image(data, ImageOptions(image_size=64)).width)
        except MemoryError:
            out.append('MemoryError')
    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(out)
    sys.exit(0 if out == [64] * 4 else 1)
""")


@pytest.mark.slow
def test_large_transparent_pngs_decode_under_a_memory_ceiling(tmp_path):
    """A transparent 9000x9900 PNG of a few hundred KB, decoded by four threads at once in a
    process whose address space may grow by 1.5 GB: the pixel budget and flattening after the
    resize keep it within (four unbounded decodes need about 4 GB)."""
    path = tmp_path / "large.png"
    Image.new("LA", (9000, 9900), (0, 0)).save(path, optimize=True)
    assert path.stat().st_size < 2_000_000
    done = subprocess.run([sys.executable, "-c", LARGE_PNG_SCRIPT, str(path), "1536"], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_compressed_shard_is_never_inflated_and_a_huge_member_is_skipped():
    inflated = 64 * 2**20
    member = _tar({"000.jpg": bytes(inflated), "000.txt": b"x"})
    for bomb in (bz2.compress(member, 9), gzip.compress(member, 9)):  # a shard of ~80 bytes (bz2) inflating 64 MiB
        counter = Counter()
        assert list(tar_samples(io.BytesIO(bomb), "s3://b/00000.tar", counter, max_member_bytes=2**20)) == []
        assert counter.shard_errors == 1
    assert inflated / len(bz2.compress(member, 9)) > 8000
    counter = Counter()
    plain = _tar({"000.jpg": bytes(4096), "000.txt": b"x", "001.txt": b"y"})
    got = [m["fname"] for m in tar_samples(io.BytesIO(plain), "u", counter, max_member_bytes=1024)]
    assert got == ["000.txt", "001.txt"] and counter.corrupt == 1


def test_paths_out_of_their_root_and_endless_files_are_refused(tmp_path):
    from data_prep.fetch import fetch_file
    from data_prep.file_sources import CocoCaptions

    captions = tmp_path / "captions.json"
    names = ["ok.jpg", "../../../../dev/zero", "/etc/passwd", "a/../../b.jpg"]
    captions.write_text(json.dumps({"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                                    "annotations": [{"image_id": i, "caption": "c"} for i in range(len(names))]}))
    rows = list(CocoCaptions(str(captions), images_root=str(tmp_path / "images")).rows())
    assert [r.get("error") for r in rows] == [None, "path_outside_root", "path_outside_root", "path_outside_root"]
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    for endless in ("/dev/zero", str(fifo)):
        assert fetch_file(endless, FetchOptions()).error == "not_a_regular_file"
    assert time.monotonic() - t0 < 5


def test_nested_yaml_aliases_are_refused_at_once(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ntrain: {steps: *a9}\n")
    assert len(path.read_bytes()) < 700
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="aliases"):
        load_config(path)
    assert time.monotonic() - t0 < 1.0


def _prep(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frozen_scale.app.cli", "prep", *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_huge_csv_field_is_filtered_and_an_unclosed_quote_is_named(tmp_path):
    from data_prep.loopback import ImageServer, make_image

    with ImageServer() as srv:
        srv.add("/a.jpg", make_image(64, 48, "JPEG", seed=1))
        srv.add("/b.jpg", make_image(64, 48, "JPEG", seed=2))
        host = srv.url("/").split("/")[2]
        table = tmp_path / "table.csv"
        table.write_text(f"url,caption\n{srv.url('/a.jpg')},a cat\n{srv.url('/x.jpg')},\"{'w' * 200_000}\"\n"
                         f"{srv.url('/b.jpg')},a dog\n")
        out = tmp_path / "shards"
        done = _prep("urls", str(table), "--out", str(out), "--allow-host", host, "--num-cpus", "1", "--no-progress")
        assert done.returncode == 0, done.stderr[-3000:]
        stats = json.loads(next(out.glob("*_stats.json")).read_text())
        text = json.dumps(stats)
        assert "caption_too_long" in text, text
        assert json.loads((out / "manifest.json").read_text())["shards"]
        bad = tmp_path / "bad.csv"
        bad.write_text(f"url,caption\n{srv.url('/a.jpg')},\"never closed\n{srv.url('/b.jpg')},a dog\n")
        done = _prep("urls", str(bad), "--out", str(tmp_path / "bad"), "--allow-host", host, "--num-cpus", "1",
                     "--no-progress")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and "line 2" in lines[-1] and "never closed" in lines[-1], done.stderr[-3000:]


def _train(cfg_path: Path, *over: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frozen_scale.app.cli", "train", str(cfg_path), *over], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unreadable shards", "wrong image key"])
def test_a_loader_that_cannot_progress_stops_in_one_line(case, tmp_path, tiny_lm_dir, tiny_shards):
    import yaml

    if case == "unreadable shards":
        shards = tmp_path / "bad"
        shards.mkdir()
        for i in range(3):
            (shards / f"{i:05d}.tar").write_bytes(b"\x1f\x8b" + os.urandom(2000))
        over = [f"data.train_shards={shards}"]
        expect = "shards in a row could not be read"
    else:
        over = ["data.image_key=bmp"]
        expect = "no member among bmp"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(tiny_lm_dir, tiny_shards, tmp_path / "run",
                                                   data={"num_workers": 2, "max_consecutive_failures": 20})))
    t0 = time.monotonic()
    done = _train(cfg, *over)
    took = time.monotonic() - t0
    lines = [ln for ln in done.stderr.strip().splitlines() if "frozen-scale train" in ln or "Traceback" in ln]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and expect in lines[0] and "data:" in lines[0], done.stderr[-3000:]
    assert took < 60


def test_a_manifest_names_shards_inside_its_folder_only(tmp_path):
    from frozen_scale.config import InputError
    from frozen_scale.data.shards import list_shards

    for name in ("s3://elsewhere/x.tar", "/etc/x.tar", "../other/x.tar"):
        (tmp_path / "manifest.json").write_text(json.dumps(
            {"format": "frozen_scale.shards/1", "shards": [{"name": name, "num_samples": 1}]}))
        with pytest.raises(InputError, match="not a path inside the manifest's folder"):
            list_shards(str(tmp_path))
        assert list_shards(str(tmp_path), allow_absolute=True)[0].url.endswith("x.tar")


def test_name_resolution_is_inside_the_download_deadline(monkeypatch):
    import socket

    from data_prep.fetch import fetch_url

    real = socket.getaddrinfo

    def slow(host, *a, **kw):
        if host == "slow.example":
            time.sleep(4)
        return real("127.0.0.1", *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    t0 = time.monotonic()
    got = fetch_url("http://slow.example/a.jpg", FetchOptions(timeout_s=1.0, retries=0))
    assert got.error == "timeout" and time.monotonic() - t0 < 2.5, (got.error, time.monotonic() - t0)
