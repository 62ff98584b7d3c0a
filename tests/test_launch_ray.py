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


def _trainer_pids(config_path: str) -> list[int]:
    """Training processes of this test's run (their command line names its config), by pid."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"frozen_scale.app.cli" in argv and config_path.encode() in argv:
                pids.append(int(proc.name))

    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    return [pid for pid in pids if parent(pid) not in pids]  # not their DataLoader workers


@pytest.mark.slow
def test_ray_cluster_runs_two_worker_job_and_resumes_after_preemption(two_node_ray, tiny_run_config, capsys):
    """The tiny config as a 2-worker job through the Jobs API, one worker per Ray node. Midway,
    SIGUSR1 to the trainers: they commit and exit 75, Ray Train restarts the worker group
    (FailureConfig), train.resume=auto continues from that checkpoint, and the job succeeds."""
    import os
    import signal
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    from launchers import ray_job

    _, address = two_node_ray
    cfg = yaml.safe_load(Path(tiny_run_config).read_text())
    run_dir = Path(cfg["train"]["run_dir"])
    steps = 400  # ~50 ms a step: the signal must land before the end on a fast machine too
    over = ["launcher.nodes=2", "launcher.gpus_per_node=1", "launcher.request_gpus=false",
            f"launcher.python={sys.executable}", "launcher.env={DS_ACCELERATOR: cpu, OMP_NUM_THREADS: '1'}",
            f"launcher.workdir={REPO}", "launcher.max_requeues=2", f"train.steps={steps}", "checkpoint.every=1000"]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--address", address, *over]) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    client = JobSubmissionClient(address)
    # a bound, not a target: ~30 s idle; Ray runs its workers (and so the trainers) at nice 15, so
    # a 2-core machine busy with other work took over 8 min
    deadline = time.time() + 480
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()):  # both ranks are past their first step
        status = client.get_job_status(job)
        assert status in (JobStatus.PENDING, JobStatus.RUNNING), f"{status}\n{client.get_job_logs(job)[-4000:]}"
        assert time.time() < deadline, client.get_job_logs(job)[-4000:]
        time.sleep(0.5)
    pids = _trainer_pids(str(tiny_run_config))
    assert len(pids) == 2, (pids, client.get_job_logs(job)[-4000:])
    if os.geteuid() == 0:  # Ray's workers run at nice 15; the trainers are put back at 0 where permitted
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [0, 0]
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    status, logs = ray_job.wait(address, job, timeout=600, poll=1.0)
    assert status == "SUCCEEDED", logs[-4000:]
    # one worker per Ray node (SPREAD over two 1-CPU nodes)
    nodes = dict(re.findall(r"rank (\d)/2 on \S+ ray node (\w+)", logs))
    assert set(nodes) == {"0", "1"} and nodes["0"] != nodes["1"], logs[-3000:]
    committed = sorted(int(p.parent.name[5:]) for p in (run_dir / "checkpoints").glob("step_*/COMMITTED"))
    assert committed[-1] == steps and 0 < committed[0] < steps, committed
    final = json.loads((run_dir / "checkpoints" / f"step_{steps:08d}" / "trainer_state.json").read_text())
    assert final["world_size"] == 2
    rank0 = (run_dir / "logs" / "ray-rank0.log").read_text()
    assert f"preempted: checkpoint committed at step {committed[0]}; exit 75" in rank0
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{committed[0]:08d}'}" in rank0
    assert "preempted (checkpoint committed); restarting" in logs
