"""Ray: submit a run to a Ray cluster through the Ray Jobs API (launchers.ray_driver runs there).

The cluster is `--address` / `launcher.ray_address` / `$RAY_ADDRESS` (the dashboard URL,
http://head:8265). The resolved config (command-line overrides applied) travels with the job: it
is written to a small folder uploaded as a runtime_env `py_modules` entry, so nothing on the
cluster reads a path of the submitting machine. With `launcher.ray_working_dir` the code folder
is uploaded as the job's working_dir; otherwise the cluster is expected to have the code in
`launcher.workdir`, where the job runs.

A cluster started with token authentication (`RAY_AUTH_MODE=token`) takes the token Ray's client
finds: `RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`, with
`RAY_AUTH_MODE=token` set where `submit` runs.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from frozen_scale.config import FrozenConfig, dump_config
from launchers.ray_driver import SHIPPED_CONFIG, SHIPPED_FILE, SHIPPED_PACKAGE

TOKEN_HELP = ("set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN, in a file named by "
              "RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token")

UPLOAD_EXCLUDES = [".git", ".venv", "runs", "__pycache__", "*.pyc", ".pytest_cache"]


class RayAuthError(RuntimeError):
    """The cluster refused the submission for want of a valid token; the message is one line."""


STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"
"""Read by Ray's job supervisor (it runs with the job's runtime_env): TERM, then SIGKILL after it."""


def stop_wait_seconds(cfg: FrozenConfig) -> int:
    """How long a stopped job may take: the trainers' save grace plus the time to report it."""
    return cfg.launcher.signal_seconds + 30


def driver_entrypoint(cfg: FrozenConfig, config_ref: str, log_dir: str, python: str = "python") -> str:
    """The driver's command line; `config_ref` is where the config lies on the cluster."""
    lc = cfg.launcher
    argv = [python, "-m", "launchers.ray_driver", config_ref,
            f"--num-workers={lc.nodes * lc.gpus_per_node}", f"--max-failures={lc.max_requeues}",
            f"--storage={Path(cfg.train.run_dir) / 'ray'}", f"--log-dir={log_dir}",
            f"--name={lc.job_name}", f"--grace={lc.signal_seconds}"]
    if lc.request_gpus:
        argv.append("--use-gpu")
    if lc.cpus_per_task:
        argv.append(f"--cpus-per-worker={lc.cpus_per_task}")
    argv += [f"--env={k}={v}" for k, v in lc.env.items()]
    argv += [f"--env-from-host={name}" for name in lc.env_from_host]
    return shlex.join(argv)


def ship_config(cfg: FrozenConfig, folder: str) -> str:
    """Write the resolved config into `folder`/frozen_scale_run/; returns that folder, to upload."""
    package = Path(folder) / SHIPPED_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / SHIPPED_FILE).write_text(dump_config(cfg))
    return str(package)


def runtime_env(cfg: FrozenConfig, workdir: str, shipped: str) -> dict:
    lc = cfg.launcher
    env_vars = {k: str(v) for k, v in lc.env.items()}
    out: dict = {"py_modules": [shipped]}
    if lc.ray_working_dir:
        out["working_dir"] = lc.ray_working_dir
        out["excludes"] = UPLOAD_EXCLUDES
    else:
        env_vars["PYTHONPATH"] = os.pathsep.join(filter(None, [workdir, env_vars.get("PYTHONPATH")]))
    if lc.ray_pip:
        out["pip"] = list(lc.ray_pip)
    # `ray job stop` waits this long after its TERM before SIGKILL: the trainers' save
    env_vars.setdefault(STOP_WAIT_ENV, str(stop_wait_seconds(cfg)))
    out["env_vars"] = env_vars
    return out


def job_spec(cfg: FrozenConfig, workdir: str, shipped: str) -> dict:
    """kwargs for JobSubmissionClient.submit_job; `shipped` is the folder from ship_config."""
    lc = cfg.launcher
    log_dir = lc.log_dir or str(Path(cfg.train.run_dir) / "logs")
    entry = driver_entrypoint(cfg, SHIPPED_CONFIG, log_dir, lc.python)
    if not lc.ray_working_dir:  # the job runs where the cluster has the code
        entry = f"cd {shlex.quote(workdir)} && {entry}"
    return {"entrypoint": entry, "runtime_env": runtime_env(cfg, workdir, shipped),
            "metadata": {"job_name": lc.job_name}}


def _auth_message(address: str, err: Exception) -> str:
    text = str(err)
    if text.startswith("Authentication required"):
        what = "requires token authentication and was sent no token"
    elif text.startswith("Authentication failed"):
        what = "refused the token it was sent"
    else:
        what = f"could not be authenticated ({text.split('. ')[0].strip()})"
    return f"the Ray cluster at {address or 'the default address'} {what}: {TOKEN_HELP}"


def submit(spec: dict, address: str) -> str:
    """Submit through the Jobs API; RayAuthError when the cluster wants a token it did not get."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address or None).submit_job(**spec)
    except AuthenticationError as err:
        raise RayAuthError(_auth_message(address, err)) from None


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
