"""`frozen-scale submit --launcher ray` and `--launcher k8s`: the Jobs API submission spec, the
KubeRay RayJob manifest, and a real local Ray cluster (a head and a second node) running the
tiny config as a 2-worker job submitted through the Jobs API."""

from __future__ import annotations

import json
import re
import shlex
import socket
import sys
from pathlib import Path

import pytest
import yaml

from frozen_scale.config import ConfigError
from launchers import cli

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_job_spec(tiny_run_config, capsys, tmp_path):
    over = ["launcher.nodes=4", "launcher.gpus_per_node=8", "launcher.env={DS_ACCELERATOR: cpu}", "train.lr=0.01"]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--dry-run", *over]) == 0
    spec = json.loads(capsys.readouterr().out)
    entry = shlex.split(spec["entrypoint"].split(" && ", 1)[1])
    assert entry[1:4] == ["-m", "launchers.ray_driver", str(tiny_run_config)]
    assert "--num-workers=32" in entry and "--use-gpu" in entry and "train.lr=0.01" in entry
    assert not any(a.startswith("launcher.") for a in entry)
    assert spec["runtime_env"]["env_vars"]["DS_ACCELERATOR"] == "cpu"
    # an uploaded working_dir must contain the config; the entrypoint then uses the relative path
    with pytest.raises(ConfigError, match="must contain the config"):
        cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--dry-run", f"launcher.ray_working_dir={REPO}"])


def test_kuberay_rayjob_manifest(tiny_run_config, capsys):
    over = ["launcher.nodes=4", "launcher.gpus_per_node=8", "launcher.container=ghcr.io/org/frozen-scale:1",
            "launcher.job_name=Frozen_7B run", "launcher.k8s_namespace=ml"]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "k8s", "--dry-run", *over]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["metadata"] == {"name": "frozen-7b-run", "namespace": "ml",
                               "labels": {"app.kubernetes.io/name": "frozen-scale"}}
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert "launchers.ray_driver" in spec["entrypoint"] and "--num-workers=32" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "ghcr.io/org/frozen-scale:1"
    assert {p["containerPort"] for p in head["ports"]} == {6379, 8265, 10001}
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert worker["resources"]["requests"] == worker["resources"]["limits"]
    with pytest.raises(ConfigError, match="launcher.container"):
        cli.submit_main([str(tiny_run_config), "--launcher", "k8s", "--dry-run"])


@pytest.fixture
def two_node_ray():
    """A head node and a second node, one logical CPU each, with the dashboard (Jobs API)."""
    from ray.cluster_utils import Cluster

    port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster, f"http://127.0.0.1:{port}"
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_ray_cluster_runs_two_worker_job(two_node_ray, tiny_run_config, capsys):
    from ray.job_submission import JobSubmissionClient

    _, address = two_node_ray
    cfg = yaml.safe_load(Path(tiny_run_config).read_text())
    run_dir = Path(cfg["train"]["run_dir"])
    over = ["launcher.nodes=2", "launcher.gpus_per_node=1", "launcher.request_gpus=false",
            f"launcher.python={sys.executable}", "launcher.env={DS_ACCELERATOR: cpu, OMP_NUM_THREADS: '1'}",
            f"launcher.workdir={REPO}", "launcher.max_requeues=0"]
    JobSubmissionClient(address)  # the Jobs API answers
    rc = cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--address", address, "--wait", *over])
    out = capsys.readouterr()
    assert rc == 0, out.err[-4000:]
    final = run_dir / "checkpoints" / f"step_{cfg['train']['steps']:08d}"
    assert (final / "COMMITTED").exists()
    assert json.loads((final / "trainer_state.json").read_text())["world_size"] == 2
    # one worker per Ray node: the two ranks ran on different nodes (SPREAD over 1-CPU nodes)
    nodes = dict(re.findall(r"rank (\d)/2 on \S+ ray node (\w+)", out.err))
    assert set(nodes) == {"0", "1"} and nodes["0"] != nodes["1"], out.err[-3000:]
    assert "checkpoint committed" in (run_dir / "logs" / "ray-rank0.log").read_text()
    assert (run_dir / "logs" / "ray-rank1.log").exists()
