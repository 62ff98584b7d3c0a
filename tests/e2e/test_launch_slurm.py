"""`frozen-scale submit --launcher slurm`: the sbatch script, and a real Slurm controller + node
daemon running it: a 2-task job trains the tiny config; SIGUSR1 to the job makes the trainers
commit a checkpoint and exit 75, the script requeues the job, and the requeued run resumes."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launchers import cli

from tests.support.slurm_cluster import SlurmCluster, ensure_slurm_installed

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher_overrides(**extra) -> list[str]:
    base = {"launcher.nodes": 1, "launcher.tasks_per_node": 2, "launcher.gpus_per_node": 1,
            "launcher.request_gpus": "false", "launcher.python": sys.executable,
            "launcher.env": "{DS_ACCELERATOR: cpu, OMP_NUM_THREADS: '1'}", "launcher.workdir": str(REPO)}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_sbatch_script_dry_run(tiny_run_config, capsys):
    over = _launcher_overrides(**{"launcher.nodes": 4, "launcher.tasks_per_node": 1, "launcher.request_gpus": "true",
                                  "launcher.gpus_per_node": 8, "launcher.partition": "gpu", "launcher.account": "proj",
                                  "launcher.time": "02:00:00", "launcher.container": "nvcr.io/x/y:1",
                                  "launcher.setup": '["module load cuda", "source env/bin/activate"]'})
    assert cli.submit_main([str(tiny_run_config), "--launcher", "slurm", "--dry-run", *over, "train.lr=0.01"]) == 0
    script = capsys.readouterr().out
    for option in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--account=proj",
                   "--time=02:00:00", "--signal=USR1@120", "--requeue"):
        assert f"#SBATCH {option}\n" in script
    assert script.index("module load cuda") < script.index("srun ")
    assert "--container-image=nvcr.io/x/y:1" in script
    assert '"--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT"' in script and "--rdzv-backend=c10d" in script
    assert "--nproc-per-node=8" in script and '"--nnodes=$SLURM_NTASKS"' in script
    # trainers get the run's overrides and always resume; launcher settings stay with the submitter
    assert "train.lr=0.01 train.resume=auto" in script and "launcher.partition" not in script.split("#SBATCH")[-1]
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and "if [ $rc -eq 75 ]" in script
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    # launcher.master_port 0 (the default): the port comes from the job id
    (port_line,) = [line for line in script.splitlines() if line.startswith("export MASTER_PORT=")]
    ports = {subprocess.run(["bash", "-c", f"{port_line}; echo $MASTER_PORT"], env={"SLURM_JOB_ID": job},
                            capture_output=True, text=True, check=True).stdout.strip() for job in ("1041", "1042")}
    assert len(ports) == 2 and all(20000 <= int(p) < 60000 for p in ports), ports


def _metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "event" not in r]  # event records (start-up) are no steps


def _committed(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*/COMMITTED"))


@pytest.fixture(scope="module")
def slurm():
    ensure_slurm_installed()
    with SlurmCluster() as cluster:
        yield cluster


@pytest.mark.slow
def test_slurm_job_trains_then_preempted_job_requeues_and_resumes(slurm, tiny_run_config, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    cfg = yaml.safe_load(Path(tiny_run_config).read_text())
    run_dir = Path(cfg["train"]["run_dir"])
    # 1. a plain 2-task job of the tiny config runs to completion
    over = _launcher_overrides(**{"launcher.job_name": "tiny", "launcher.master_port": _free_port()})
    assert cli.submit_main([str(tiny_run_config), "--launcher", "slurm", *over]) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+", job)
    slurm.wait(job, {"COMPLETED"}, timeout=300)
    assert _committed(run_dir)[-1] == cfg["train"]["steps"]
    state = json.loads((run_dir / "checkpoints" / f"step_{cfg['train']['steps']:08d}" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    node_logs = sorted((run_dir / "logs").glob(f"tiny-{job}-node*.out"))
    assert len(node_logs) == 2  # one srun task per (emulated) node
    assert len(list((run_dir / "logs" / "ranks").rglob("stdout.log"))) == 2  # per-rank logs

    # 2. a longer run: SIGUSR1 mid-run -> checkpoint, exit 75, requeue, resume, complete
    steps = 400  # ~50 ms a step: the signal must land before the end on a fast machine too
    over = _launcher_overrides(**{"launcher.job_name": "preempt", "launcher.master_port": _free_port()})
    long_run = run_dir.parent / "run-preempt"
    args = [str(tiny_run_config), "--launcher", "slurm", *over, f"train.steps={steps}", "checkpoint.every=100",
            f"train.run_dir={long_run}"]
    assert cli.submit_main(args) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    deadline = time.time() + 240
    while not _metrics_steps(long_run) and time.time() < deadline:
        slurm.wait(job, {"RUNNING", "PENDING", "CONFIGURING"}, timeout=60)
        time.sleep(0.5)
    assert _metrics_steps(long_run), f"training never logged a step\n{slurm.logs()}"
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm.env, check=True)
    slurm.release_requeued(job, timeout=180)
    first = _committed(long_run)
    assert first and 0 < first[-1] < steps, first  # committed on the signal, before the end
    info = slurm.wait(job, {"COMPLETED"}, timeout=300)
    assert int(info["Restarts"]) == 1
    assert _committed(long_run)[-1] == steps
    batch_log = (long_run / "logs" / f"preempt-{job}.out").read_text()
    assert "requeueing job" in batch_log and "attempt 1" in batch_log
    rank_logs = "".join(p.read_text() for p in (long_run / "logs" / "ranks").rglob("*.log"))
    assert f"resumed from {long_run / 'checkpoints' / f'step_{first[-1]:08d}'}" in rank_logs
    # the resumed run continued from the checkpoint: no step trained (logged) twice
    logged = _metrics_steps(long_run)
    assert logged == sorted(set(logged)) and logged[-1] == steps


@pytest.mark.slow
def test_plain_scancel_of_a_job_with_loader_workers_commits_then_resubmit_resumes(slurm, tiny_run_config,
                                                                                   monkeypatch, capsys):
    """`scancel JOB` sends TERM to every process of the step (node supervisor, torchrun, trainers,
    their loader workers): the trainers commit one checkpoint and exit 75; a new submission of the
    same run resumes from it and finishes."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    cfg = yaml.safe_load(Path(tiny_run_config).read_text())
    run_dir = Path(cfg["train"]["run_dir"]).parent / "run-scancel"
    steps = 400
    args = [str(tiny_run_config), "--launcher", "slurm", *_launcher_overrides(**{"launcher.job_name": "cancel"}),
            f"train.steps={steps}", "checkpoint.every=0", "data.num_workers=2", f"train.run_dir={run_dir}"]
    assert cli.submit_main(args) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    deadline = time.time() + 240
    while len(_metrics_steps(run_dir)) < 2 and time.time() < deadline:
        slurm.wait(job, {"RUNNING", "PENDING", "CONFIGURING"}, timeout=60)
        time.sleep(0.5)
    assert _metrics_steps(run_dir), f"training never logged a step\n{slurm.logs()}"
    subprocess.run(["scancel", job], env=slurm.env, check=True)  # plain: TERM to every process
    deadline = time.time() + 120
    while slurm.job_info(job).get("JobState") not in {"CANCELLED", "COMPLETED", "FAILED"} and time.time() < deadline:
        time.sleep(0.5)
    committed = _committed(run_dir)
    rank_logs = "".join(p.read_text() for p in (run_dir / "logs" / "ranks").rglob("*.log"))
    assert len(committed) == 1 and 0 < committed[0] < steps, (committed, rank_logs[-3000:])
    assert rank_logs.count(f"preempted: checkpoint committed at step {committed[0]}") == 2, rank_logs[-3000:]
    assert "DataLoader worker" not in rank_logs, rank_logs[-3000:]

    resubmit = [*args[:-1], f"train.run_dir={run_dir}", f"train.steps={committed[0] + 4}"]
    assert cli.submit_main(resubmit) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    slurm.wait(job, {"COMPLETED"}, timeout=300)
    assert _committed(run_dir)[-1] == committed[0] + 4
