"""A worker node lost mid-job: a two-node Ray cluster (ray.cluster_utils.Cluster, both nodes on
loopback), a job of several shards driven from the head node, and the second node removed while
its shard tasks run, its worker processes killed with it (the machine is gone). The job must
finish (the lost tasks run again on the head) with every input row exactly once, no sample in
two tars, and stats that match the tars."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from data_prep.loopback import ImageServer, make_image

from tests.support import prep_ray

REPO = Path(__file__).resolve().parents[2]
ROWS, PER_SHARD = 36, 4
# The head notices a dead node after a few missed health checks (defaults: ~30 s)
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


@pytest.fixture
def two_nodes(monkeypatch):
    from ray.cluster_utils import Cluster

    # worker processes of both nodes import this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with prep_ray.ray_on_loopback():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "_system_config": FAST_NODE_DEATH})
        try:
            worker_node = cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
            yield cluster, worker_node
        finally:
            cluster.shutdown()


def shard_tasks_on(node) -> list[psutil.Process]:
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    found = []
    for p in raylet.children(recursive=True):
        try:
            if "_shard_task" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_a_worker_node_lost_mid_job(two_nodes, tmp_path):
    cluster, worker_node = two_nodes
    assert cluster.address.startswith("127.0.0.1:")
    with ImageServer() as srv:
        lines = ["url,caption"]
        for i in range(ROWS):
            lines.append(f"{srv.add(f'/img{i}.jpg', make_image(48, 40, 'JPEG', seed=i), delay_s=0.3)},image {i}")
        table = tmp_path / "corpus.csv"
        table.write_text("\n".join(lines) + "\n")
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "data_prep.cli", "urls", str(table), "--out", str(out),
               "--allow-host", srv.origin, "--address", cluster.address, "--samples-per-shard", str(PER_SHARD),
               "--threads", "1", "--image-size", "32", "--timeout", "10", "--no-progress"]
        env = dict(os.environ, **prep_ray.LOOPBACK_ENV)
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            victims = prep_ray.wait_for(lambda: shard_tasks_on(worker_node), what="a shard task on the worker node")
            prep_ray.wait_for(lambda: sum(srv.hits.values()) >= 3, what="downloads to start")
            committed_before = len(list(out.glob("*_stats.json")))
            cluster.remove_node(worker_node, allow_graceful=False)
            for p in victims:  # the node's machine is gone: nothing of it finishes its work
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            log, _ = driver.communicate(timeout=300)
        finally:
            try:
                os.killpg(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        hits = sum(srv.hits.values())

    assert driver.returncode == 0, log[-3000:]
    assert committed_before < ROWS // PER_SHARD, "the node was removed after the job had finished"
    assert hits > ROWS, "no task of the lost node was run again"
    manifest = prep_ray.check_output(out, ROWS, PER_SHARD)
    assert manifest["num_samples"] == ROWS
