"""Launching real multi-process runs from tests (torchrun on loopback, gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict | None = None) -> dict:
    """The environment of a process a test starts: CPU DeepSpeed, one thread, this checkout first
    on the import path, then `extra`."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(extra or {})}


def torchrun(nproc: int, args: list[str], timeout: int = 300, env: dict | None = None,
             module: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run` with nproc local ranks; returns the completed process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}"]
    cmd += ["-m", module] if module else []
    cmd += args
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)  # the ranks too: they outlive torchrun otherwise
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_ranks(nproc: int, args: list[str], timeout: int = 300, env: dict | None = None,
                 module: str = "frozen_scale.app.cli") -> list[subprocess.CompletedProcess]:
    """Run `python -m module args` as nproc ranks of one job on loopback, with the environment
    torchrun gives each rank (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), but no torchrun:
    each rank's own exit code and output come back (torchrun stops the other ranks as soon as
    one exits non-zero, so their exit codes are its SIGTERM)."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        rank_env = child_env({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                              "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                              **(env or {})})
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=rank_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_tree(proc)
    return done


def kill_tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL a launcher and every process under it, as a lost node would; returns what was
    killed. torchrun starts each rank in a session of its own, so killing torchrun's process
    group alone leaves the ranks running."""
    root = psutil.Process(proc.pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"
    proc.wait()
    return procs


def check(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}")
