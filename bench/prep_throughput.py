"""data_prep vs img2dataset: images/s per core on the same URL list served from loopback.

    python bench/prep_throughput.py [--images 3000[,20000]] [--threads 16]

`--images` takes one job size or several (comma-separated; `make bench-prep` runs 3000 and
20000): each size is a separate pair of jobs on the first N URLs, reported on its own; the last
line is the ratio per core of the last size.

Both tools get the same parquet of URLs (127.0.0.1, a server in its own process), one worker
process each (Ray with 1 CPU / img2dataset processes_count=1), the same thread count, output size
(256, center_crop), encoder (jpg, quality 95) and shard size. "Per core" is images divided by the
CPU-seconds of the command and all its descendants (Ray's own processes and start-up included, the
loopback server excluded), which stays meaningful on a loaded machine; wall-clock images/s with one
worker process each is printed too. img2dataset runs from its own environment, bench/.peer-venv
(`python -m venv bench/.peer-venv && bench/.peer-venv/bin/pip install img2dataset`); it is not a
dependency of this project. Source images are distinct JPEGs of 640x480, 1024x768 and 1600x1200.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import common  # the shared runner

REPO = Path(__file__).resolve().parents[1]
PEER = REPO / "bench" / ".peer-venv" / "bin" / "img2dataset"
SIZES = [(640, 480), (1024, 768), (1600, 1200)]
BASES_PER_SIZE = 8


def _unique(jpeg: bytes, i: int) -> bytes:
    """Same pixels, distinct bytes: a JPEG comment segment (COM) carrying the index."""
    text = f"frozen_scale bench image {i}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


class _UniqueImages:
    """Routes /{i}.jpg for i < n, each image made when asked (20,000 stored copies would take GBs)."""

    def __init__(self, bases: list[bytes], n: int):
        self.bases, self.n = bases, n

    def get(self, path: str):
        from data_prep.loopback import Route

        stem = path.lstrip("/").removesuffix(".jpg")
        if not stem.isdigit() or int(stem) >= self.n:
            return None
        i = int(stem)
        return Route(_unique(self.bases[i % len(self.bases)], i), content_type="image/jpeg")


def _serve(n: int, port_queue) -> None:
    from data_prep.loopback import ImageServer, make_image

    bases = [make_image(w, h, "JPEG", seed=k * 31 + j, quality=90) for k, (w, h) in enumerate(SIZES)
             for j in range(BASES_PER_SIZE)]
    srv = ImageServer()
    srv.routes = _UniqueImages(bases, n)
    srv.start()
    port_queue.put(srv.base)
    while True:
        time.sleep(3600)


def _count_samples(folder: Path) -> int:
    n = 0
    for tar in folder.glob("*.tar"):
        with tarfile.open(tar) as t:
            n += sum(m.name.endswith(".jpg") for m in t.getmembers())
    return n


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and all its descendants, sampled every 50 ms)."""
    import psutil

    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cpu: dict[int, float] = {}
    names: dict[int, str] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                t = p.cpu_times()
                cpu[p.pid] = max(cpu.get(p.pid, 0.0), t.user + t.system)
                names[p.pid] = " ".join(p.cmdline())[:50]
            except psutil.Error:
                pass
        time.sleep(0.05)
    output = proc.stdout.read()
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
    if os.environ.get("PREP_BENCH_VERBOSE"):
        for pid, c in sorted(cpu.items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {c:6.2f} s  {names.get(pid, '?')}")
    return seconds, sum(cpu.values())


def _compare(base: str, n: int, a, tmp: Path) -> dict:
    """Both tools on the first n URLs, alternating, a.repeats times; medians."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = tmp / f"urls-{n}.parquet"
    pq.write_table(pa.table({"url": [f"{base}/{i}.jpg" for i in range(n)],
                             "caption": [f"image {i}" for i in range(n)]}), urls)
    common = dict(size=a.image_size, q=95, per_shard=1000)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ours_cmd = [sys.executable, "-m", "data_prep.cli", "urls", str(urls), "--out", str(tmp / "ours"),
                "--num-cpus", "1", "--threads", str(a.threads), "--image-size", str(common["size"]),
                "--resize-mode", "center_crop", "--encode-format", "jpg", "--encode-quality", "95",
                "--samples-per-shard", str(common["per_shard"]), "--no-progress",
                "--allow-host", base.split("://", 1)[1],
                *os.environ.get("PREP_BENCH_OURS_ARGS", "").split()]
    peer_cmd = [str(PEER), "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
                "--caption_col", "caption", "--output_format", "webdataset",
                "--output_folder", str(tmp / "peer"), "--processes_count", "1",
                "--thread_count", str(a.threads), "--image_size", str(common["size"]),
                "--resize_mode", "center_crop", "--encode_format", "jpg", "--encode_quality", "95",
                "--number_sample_per_shard", str(common["per_shard"]), "--extract_exif", "False",
                "--distributor", "multiprocessing", "--enable_wandb", "False"]
    peer_env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    runs = {"frozen_scale": (ours_cmd, env, tmp / "ours")}
    if not a.ours_only:
        runs["img2dataset"] = (peer_cmd, peer_env, tmp / "peer")
    results: dict = {}
    for rep in range(a.repeats):  # alternate, so load from elsewhere hits both alike
        for name, (cmd, cmd_env, out) in runs.items():
            shutil.rmtree(out, ignore_errors=True)
            wall, cpu = _run(cmd, cmd_env)
            images = _count_samples(out)
            shutil.rmtree(out, ignore_errors=True)
            results.setdefault(name, []).append({"wall_s": wall, "cpu_s": cpu, "images": images})
            print(f"  {n} images, run {rep + 1} {name}: {images} images, {wall:.1f} s wall, {cpu:.1f} s CPU",
                  flush=True)
    summary: dict = {"images": n}
    for name, runs_ in results.items():
        per_cpu = statistics.median(r["images"] / r["cpu_s"] for r in runs_)
        per_wall = statistics.median(r["images"] / r["wall_s"] for r in runs_)
        summary[name] = {"images_per_cpu_s": per_cpu, "images_per_wall_s_one_worker": per_wall, "runs": runs_}
        print(f"{name:>13} ({n} images): {per_cpu:6.1f} images/s per core (images / CPU-seconds of all its "
              f"processes); {per_wall:6.1f} images/s wall with one worker process", flush=True)
    if "img2dataset" in results:
        summary["ratio_per_core"] = summary["frozen_scale"]["images_per_cpu_s"] / summary["img2dataset"]["images_per_cpu_s"]
        summary["ratio_wall"] = (summary["frozen_scale"]["images_per_wall_s_one_worker"]
                                 / summary["img2dataset"]["images_per_wall_s_one_worker"])
    return summary


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__, "--ours-only", "skip img2dataset (no ratio)")
    p.add_argument("--images", default="3000", help="job size, or sizes comma-separated (e.g. 3000,20000)")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="runs of each tool (alternating); medians reported")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    try:
        sizes = [int(x) for x in a.images.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        print(f"--images expects positive numbers, comma-separated; got {a.images!r}", file=sys.stderr)
        return 2
    if not a.ours_only and not PEER.exists():
        print(f"img2dataset not found at {PEER}; create it with:\n  python3 -m venv bench/.peer-venv && "
              "bench/.peer-venv/bin/pip install img2dataset\n(or pass --ours-only)", file=sys.stderr)
        return 2

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    server = ctx.Process(target=_serve, args=(max(sizes), q), daemon=True)
    server.start()
    base = q.get(timeout=300)
    summary = {"threads": a.threads, "image_size": a.image_size, "repeats": a.repeats, "jobs": []}
    try:
        with tempfile.TemporaryDirectory(prefix="prep-bench-") as tmp:
            for n in sizes:
                summary["jobs"].append(_compare(base, n, a, Path(tmp)))
    finally:
        server.kill()
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1))
    compared = [j for j in summary["jobs"] if "ratio_per_core" in j]
    for job in compared[:-1]:
        print(f"ratio frozen_scale / img2dataset at {job['images']} images: {job['ratio_per_core']:.2f}x per core "
              f"({job['ratio_wall']:.2f}x wall)")
    if compared:
        last = compared[-1]
        common.report(a, "prep_throughput", last["ratio_per_core"], "frozen_scale / img2dataset images per CPU-second",
                      1.0, better="higher", extra={"summary": summary},
                      line=f"ratio frozen_scale / img2dataset: {last['ratio_per_core']:.2f}x per core "
                           f"({last['ratio_wall']:.2f}x wall) at {last['images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
