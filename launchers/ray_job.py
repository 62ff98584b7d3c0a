"""Ray: submit a run to a Ray cluster through the Ray Jobs API (launchers.ray_driver runs there).

The cluster is `--address` / `launcher.ray_address` / `$RAY_ADDRESS` (the dashboard URL,
http://head:8265). With `launcher.ray_working_dir` the folder is uploaded as the job's
working_dir (the config path must lie inside it); otherwise the cluster is expected to have the
code and to see the config at the same path (shared filesystem), and the job runs in
`launcher.workdir`.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from frozen_scale.config import ConfigError, FrozenConfig

UPLOAD_EXCLUDES = [".git", ".venv", "runs", "__pycache__", "*.pyc", ".pytest_cache"]


def driver_entrypoint(cfg: FrozenConfig, config_path: str, overrides: list[str], log_dir: str,
                      python: str = "python") -> str:
    lc = cfg.launcher
    argv = [python, "-m", "launchers.ray_driver", config_path, *overrides,
            f"--num-workers={lc.nodes * lc.gpus_per_node}", f"--max-failures={lc.max_requeues}",
            f"--storage={Path(cfg.train.run_dir) / 'ray'}", f"--log-dir={log_dir}",
            f"--name={lc.job_name}"]
    if lc.request_gpus:
        argv.append("--use-gpu")
    if lc.cpus_per_task:
        argv.append(f"--cpus-per-worker={lc.cpus_per_task}")
    argv += [f"--env={k}={v}" for k, v in lc.env.items()]
    return shlex.join(argv)


def runtime_env(cfg: FrozenConfig, workdir: str) -> dict:
    lc = cfg.launcher
    env_vars = {k: str(v) for k, v in lc.env.items()}
    out: dict = {}
    if lc.ray_working_dir:
        out["working_dir"] = lc.ray_working_dir
        out["excludes"] = UPLOAD_EXCLUDES
    else:
        env_vars["PYTHONPATH"] = os.pathsep.join(filter(None, [workdir, env_vars.get("PYTHONPATH")]))
    if lc.ray_pip:
        out["pip"] = list(lc.ray_pip)
    out["env_vars"] = env_vars
    return out


def job_spec(cfg: FrozenConfig, config_path: str, overrides: list[str], workdir: str) -> dict:
    """kwargs for JobSubmissionClient.submit_job."""
    lc = cfg.launcher
    log_dir = lc.log_dir or str(Path(cfg.train.run_dir) / "logs")
    if lc.ray_working_dir:  # the uploaded folder is the job's cwd: the config path is relative to it
        base = Path(lc.ray_working_dir).resolve()
        try:
            config_path = str(Path(config_path).resolve().relative_to(base))
        except ValueError as err:
            raise ConfigError(f"launcher.ray_working_dir ({base}) must contain the config {config_path}") from err
        entry = driver_entrypoint(cfg, config_path, overrides, log_dir, lc.python)
    else:
        entry = f"cd {shlex.quote(workdir)} && " + driver_entrypoint(cfg, config_path, overrides, log_dir, lc.python)
    return {"entrypoint": entry, "runtime_env": runtime_env(cfg, workdir), "metadata": {"job_name": lc.job_name}}


def submit(cfg: FrozenConfig, spec: dict, address: str) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address or cfg.launcher.ray_address or os.environ.get("RAY_ADDRESS") or None)
    return client.submit_job(**spec)


def wait(address: str, job_id: str, timeout: float = 3600, poll: float = 2.0) -> tuple[str, str]:
    """Block until the job ends; returns (status, logs)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.time() + timeout
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
        time.sleep(poll)
        status = client.get_job_status(job_id)
    return str(status.value if hasattr(status, "value") else status), client.get_job_logs(job_id)
