"""`frozen-scale submit --launcher ray`: the Jobs API submission spec (the resolved config shipped
with the job), and a real local Ray cluster (a head and a second node) running the tiny config as
a 2-worker job submitted through the Jobs API. The k8s manifest: tests/unit/launchers/test_launch_k8s.py."""

from __future__ import annotations

import json
import re
import shlex
import socket
import sys
from pathlib import Path

import pytest
import yaml

from frozen_scale.config import ConfigError, load_config
from launchers import cli, ray_driver, ray_job

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_job_spec(tiny_run_config, capsys, tmp_path):
    shared = f"launcher.shared_mounts=[{tmp_path}]"
    over = ["launcher.nodes=4", "launcher.gpus_per_node=8", "launcher.env={DS_ACCELERATOR: cpu}", "train.lr=0.01",
            shared]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--dry-run", *over]) == 0
    shown = json.loads(capsys.readouterr().out)
    spec = shown["submit_job"]
    entry = shlex.split(spec["entrypoint"].split(" && ", 1)[1])
    assert entry[1:4] == ["-m", "launchers.ray_driver", ray_driver.SHIPPED_CONFIG]
    assert "--num-workers=32" in entry and "--use-gpu" in entry
    assert str(tiny_run_config) not in spec["entrypoint"]  # no path of the submitting machine
    assert not any(a.startswith(("launcher.", "train.")) for a in entry)  # overrides are in the config
    assert spec["runtime_env"]["env_vars"]["DS_ACCELERATOR"] == "cpu"
    # the resolved config (overrides applied) is what the job uploads, in its py_modules folder
    (shipped,) = spec["runtime_env"]["py_modules"]
    assert Path(shipped).name == ray_driver.SHIPPED_PACKAGE
    ((name, text),) = shown["uploaded_files"].items()
    assert name == f"{ray_driver.SHIPPED_PACKAGE}/{ray_driver.SHIPPED_FILE}"
    assert yaml.safe_load(text)["train"]["lr"] == 0.01
    # with the code uploaded as working_dir the job runs there (no cd); the config still goes alone
    assert cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--dry-run", shared,
                            f"launcher.ray_working_dir={REPO}"]) == 0
    spec = json.loads(capsys.readouterr().out)["submit_job"]
    assert spec["entrypoint"].startswith("python -m launchers.ray_driver ")
    assert spec["runtime_env"]["working_dir"] == str(REPO) and len(spec["runtime_env"]["py_modules"]) == 1
    # and a run folder on one node's disk is refused
    with pytest.raises(ConfigError, match="launcher.shared_mounts"):
        cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--dry-run"])


def test_driver_reads_the_config_shipped_with_the_job(tmp_path, monkeypatch):
    """What submit uploads is what the driver reads back on the cluster (its folder on the import
    path, as Ray's py_modules puts it), equal to the resolved config."""
    import importlib

    cfg = load_config(None, ["train.lr=0.02", f"train.run_dir={tmp_path}"])
    shipped = Path(ray_job.ship_config(cfg, str(tmp_path / "upload")))
    monkeypatch.syspath_prepend(str(shipped.parent))
    importlib.invalidate_caches()
    text = ray_driver.read_config(ray_driver.SHIPPED_CONFIG)
    (tmp_path / "read.yaml").write_text(text)
    assert load_config(tmp_path / "read.yaml") == cfg


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


def _trainer_pids(job_name: str) -> list[int]:
    """Training processes of this test's job (their command line names the config file each Ray
    worker writes for its trainer, `frozen-scale-{job}-rank{R}-*.yaml`), by pid."""
    marker = f"frozen-scale-{job_name}-rank".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"frozen_scale.app.cli" in argv and any(marker in arg for arg in argv):
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


    _, address = two_node_ray
    cfg = yaml.safe_load(Path(tiny_run_config).read_text())
    run_dir = Path(cfg["train"]["run_dir"])
    steps = 400  # ~50 ms a step: the signal must land before the end on a fast machine too
    job_name = f"preempt-{run_dir.parent.name}"
    over = [f"launcher.shared_mounts=[{run_dir.parent}]", f"launcher.job_name={job_name}",
            "launcher.nodes=2", "launcher.gpus_per_node=1", "launcher.request_gpus=false",
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
    pids = _trainer_pids(job_name)
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
    assert f"preempted: checkpoint committed at step {committed[0]} (" in rank0
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{committed[0]:08d}'}" in rank0
    assert "preempted (checkpoint committed); restarting" in logs


@pytest.fixture
def ray_head(tmp_path_factory, monkeypatch):
    """A real head node started as a user does, `ray start --head`, on loopback, two logical CPUs,
    with the dashboard (the Jobs API); `ray stop` afterwards. Token authentication off, whatever an
    earlier in-process Ray of the session turned on (Ray enables it when a token file exists:
    tests/e2e/test_launch_ray_token.py covers it)."""
    import os
    import subprocess
    import tempfile

    ray_bin = str(Path(sys.executable).with_name("ray"))
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    port, dash = _free_port(), _free_port()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HOME": str(home)}
    started = subprocess.run(
        [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--temp-dir={temp}", "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    try:
        yield f"http://127.0.0.1:{dash}", ray_bin, env
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_ray_job_stop_commits_and_a_resubmitted_job_resumes(ray_head, tiny_run_config, capsys):
    """`ray job stop` on a running 2-worker job (loader workers on): Ray's job supervisor sends TERM
    to the driver only; the trainers still commit one checkpoint and exit 75 (the driver's stop
    flag reaches every worker, each tells its trainer's supervisor). A new submission resumes from
    that checkpoint and finishes."""
    import subprocess
    import time

    address, ray_bin, env = ray_head
    cfg = yaml.safe_load(Path(tiny_run_config).read_text())
    run_dir = Path(cfg["train"]["run_dir"])
    job_name = f"stop-{run_dir.parent.name}"
    over = [f"launcher.shared_mounts=[{run_dir.parent}]", f"launcher.job_name={job_name}", "launcher.nodes=1",
            "launcher.gpus_per_node=2", "launcher.request_gpus=false", f"launcher.python={sys.executable}",
            "launcher.env={DS_ACCELERATOR: cpu, OMP_NUM_THREADS: '1'}", f"launcher.workdir={REPO}",
            "launcher.signal_seconds=120", "data.num_workers=2", "checkpoint.every=0"]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--address", address, *over,
                            "train.steps=100000"]) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 480
    while not (metrics.exists() and metrics.read_text().strip()):  # training, past its first steps
        assert str(client.get_job_status(job)) in ("PENDING", "RUNNING", "JobStatus.PENDING", "JobStatus.RUNNING"), \
            client.get_job_logs(job)[-4000:]
        assert time.time() < deadline, client.get_job_logs(job)[-4000:]
        time.sleep(0.5)
    stopped = subprocess.run([ray_bin, "job", "stop", "--address", address, job], env=env,
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    status, logs = ray_job.wait(address, job, timeout=300, poll=1.0)
    assert status == "STOPPED", logs[-4000:]
    committed = sorted(int(p.parent.name[5:]) for p in (run_dir / "checkpoints").glob("step_*/COMMITTED"))
    assert len(committed) == 1 and committed[0] > 0, (committed, logs[-4000:])
    step = committed[0]
    rank0 = (run_dir / "logs" / "ray-rank0.log").read_text()
    assert f"preempted: checkpoint committed at step {step} (" in rank0, rank0[-3000:]
    assert "ray training stopped (checkpoint committed)" in logs, logs[-3000:]
    # a new submission of the same run resumes from the committed checkpoint and finishes
    assert cli.submit_main([str(tiny_run_config), "--launcher", "ray", "--address", address, *over,
                            f"train.steps={step + 3}"]) == 0
    job2 = capsys.readouterr().out.strip().splitlines()[-1]
    status, logs = ray_job.wait(address, job2, timeout=480, poll=1.0)
    assert status == "SUCCEEDED", logs[-4000:]
    rank0 = (run_dir / "logs" / "ray-rank0.log").read_text()
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{step:08d}'}" in rank0, rank0[-3000:]
    assert (run_dir / "checkpoints" / f"step_{step + 3:08d}" / "COMMITTED").exists()
