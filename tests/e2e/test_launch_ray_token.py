"""`frozen-scale submit --launcher ray` against a Ray cluster started with token authentication
(`ray start --head` under RAY_AUTH_MODE=token, its token in the file RAY_AUTH_TOKEN_PATH names):
without the token, or with a wrong one, submit says in one line what to set and exits 2; with
the token in RAY_AUTH_TOKEN, the tiny config runs as a job to a committed checkpoint.

`submit` runs as a child process each time, as a user runs it: Ray's client reads RAY_AUTH_MODE
and the token once per process."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.dist_util import REPO, free_port

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _session_pids(leader: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == leader:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop_session(leader: subprocess.Popen, grace: float = 5.0) -> None:
    """End the processes `ray start --block` left in its session (it, GCS, raylet, dashboard,
    workers), each by pid: SIGTERM, then SIGKILL to those still there after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in _session_pids(leader.pid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline:
            leader.poll()  # reap it once it has exited
            if not _session_pids(leader.pid):
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def token_ray_head():
    """A one-node Ray cluster (1 CPU, the dashboard on loopback) that accepts only its token.
    Everything lies in a short temporary folder, HOME included (Ray's socket paths are long)."""
    home = Path(tempfile.mkdtemp(prefix="rtok", dir="/tmp"))
    token = secrets.token_hex(32)
    token_file = home / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    dashboard = free_port()
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    log = open(home / "head.log", "wb")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={free_port()}",
         f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
         "--num-cpus=1", "--include-dashboard=true", f"--temp-dir={home / 'ray'}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 180
        while _status(f"{address}/api/version") != 401:  # up, and refusing requests without the token
            assert head.poll() is None, (home / "head.log").read_text()[-4000:]
            assert time.time() < deadline, (home / "head.log").read_text()[-4000:]
            time.sleep(1)
        yield address, token
    finally:
        _stop_session(head)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _submit(config: Path, address: str, env_extra: dict, *over: str, timeout: float = 120):
    """`frozen-scale submit` as a child process, with no Ray token settings but `env_extra`; HOME
    is an empty folder, so Ray's default token file (~/.ray/auth_token) is not there either."""
    home = Path(tempfile.mkdtemp(prefix="rsub", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), **env_extra)
    try:
        return subprocess.run(
            [sys.executable, "-m", "frozen_scale.app.cli", "submit", str(config), "--launcher", "ray",
             "--address", address, f"launcher.shared_mounts=[{config.parent}]", *over],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("env_extra, says", [
    ({}, "requires token authentication and was sent no token"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "refused the token it was sent"),
])
def test_submit_without_the_token_says_what_to_set(token_ray_head, tiny_run_config, env_extra, says):
    address, _ = token_ray_head
    done = _submit(tiny_run_config, address, env_extra)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"frozen-scale submit: the Ray cluster at {address} {says}: "), line
    for name in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"):
        assert name in line, line


@pytest.mark.slow
def test_submit_with_the_token_runs_the_job(token_ray_head, tiny_run_config):
    """The token in RAY_AUTH_TOKEN: the job is accepted and trains the tiny config to a committed
    checkpoint on the cluster (one worker, CPU)."""
    address, token = token_ray_head
    run_dir = tiny_run_config.parent / "run"
    over = ["--wait", "launcher.nodes=1", "launcher.gpus_per_node=1", "launcher.request_gpus=false",
            f"launcher.python={sys.executable}", "launcher.env={DS_ACCELERATOR: cpu, OMP_NUM_THREADS: '1'}",
            f"launcher.workdir={REPO}", "launcher.max_requeues=0", "train.steps=2"]
    done = _submit(tiny_run_config, address, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, *over, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "SUCCEEDED" in done.stderr.splitlines()[-1], done.stderr[-4000:]
    assert (run_dir / "checkpoints" / "step_00000002" / "COMMITTED").exists(), done.stderr[-4000:]
