"""A Ray worker, and separately the driver, killed mid-job; the job re-run; then: every row in
exactly one shard or the failure table, no duplicate, no missing row, stats match tars."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import psutil
import pytest

from data_prep.loopback import ImageServer, make_image

from tests.support import prep_ray

wait_for = prep_ray.wait_for

REPO = Path(__file__).resolve().parents[2]
ROWS, PER_SHARD = 48, 6


@pytest.fixture
def corpus(tmp_path):
    with ImageServer() as srv:
        lines = ["url,caption"]
        for i in range(ROWS):
            lines.append(f"{srv.add(f'/img{i}.jpg', make_image(48, 40, 'JPEG', seed=i), delay_s=0.2)},image {i}")
        table = tmp_path / "corpus.csv"
        table.write_text("\n".join(lines) + "\n")
        yield srv, table, tmp_path / "out"


def start_job(table: Path, out: Path, origin: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "data_prep.cli", "urls", str(table), "--out", str(out), "--allow-host", origin,
           "--samples-per-shard", str(PER_SHARD), "--threads", "2", "--num-cpus", "2", "--max-in-flight", "2",
           "--image-size", "32", "--timeout", "10", "--no-progress"]
    env = dict(os.environ, **prep_ray.LOOPBACK_ENV,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        _reap_group(proc)
    return proc.returncode, output


def _reap_group(proc: subprocess.Popen) -> None:
    """End what is left of the session this test started (Ray's helpers of a killed driver)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def shard_task_workers(driver_pid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.Process(driver_pid).children(recursive=True):
        try:
            if "_shard_task" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def check_output(out: Path) -> dict:
    return prep_ray.check_output(out, ROWS, PER_SHARD)


@pytest.mark.slow
def test_killed_worker_is_retried_and_rerun_is_a_no_op(corpus):
    srv, table, out = corpus
    proc = start_job(table, out, srv.origin)
    try:
        wait_for(lambda: sum(srv.hits.values()) >= 8, what="downloads to start")
        victims = wait_for(lambda: shard_task_workers(proc.pid), what="a running shard task")
        victims[0].send_signal(signal.SIGKILL)
        code, log = finish(proc)
    finally:
        _reap_group(proc)
    assert code == 0, log
    assert sum(srv.hits.values()) > ROWS, "the killed task's rows were not fetched again"
    first = check_output(out)

    hits = sum(srv.hits.values())
    code, log = finish(start_job(table, out, srv.origin))
    assert code == 0, log
    assert sum(srv.hits.values()) == hits  # re-run: every shard committed, nothing fetched
    assert check_output(out)["shards"] == first["shards"]


@pytest.mark.slow
def test_killed_driver_leaves_no_committed_partial_shard_and_rerun_completes(corpus):
    srv, table, out = corpus
    proc = start_job(table, out, srv.origin)
    try:
        wait_for(lambda: len(list(out.glob("*_stats.json"))) >= 2, what="two committed shards")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _reap_group(proc)
    committed = {p.name: p.read_bytes() for p in out.glob("*_stats.json")}
    assert 2 <= len(committed) < ROWS // PER_SHARD, "the driver was not killed mid-job"
    for name in committed:  # whatever is committed is whole
        stats = json.loads(committed[name])
        with tarfile.open(out / stats["tar"]) as tar:
            assert len(tar.getnames()) == 3 * stats["num_samples"]

    code, log = finish(start_job(table, out, srv.origin))
    assert code == 0, log
    check_output(out)
    for name, data in committed.items():  # committed shards were skipped, not redone
        assert (out / name).read_bytes() == data
