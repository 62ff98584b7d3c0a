"""torchrun / deepspeed over a host list: render one command per node and run them.

Node i runs on `launcher.hosts[i]` (the first host is the master). Local hosts (localhost,
127.0.0.1, this machine's name) run as child processes; others through `ssh HOST`, in
`launcher.workdir`, after `launcher.setup`. Per-node output goes to `{log_dir}/node{i}.out`,
torchrun's per-rank files under `{log_dir}/ranks/node{i}/`.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
import zlib
from pathlib import Path

from frozen_scale.config import ConfigError, FrozenConfig

from launchers.commands import NodeSpec, node_command, train_args

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_local(host: str) -> bool:
    return host in LOCAL_NAMES or host in {socket.gethostname(), socket.gethostname().split(".")[0]}


def hosts_for(cfg: FrozenConfig) -> list[str]:
    lc = cfg.launcher
    if lc.hosts:
        return list(lc.hosts)
    if lc.nodes == 1:
        return ["localhost"]
    raise ConfigError(f"launcher.hosts must list {lc.nodes} hosts (launcher.nodes={lc.nodes})")


def port_for(run_id: str) -> int:
    """The rendezvous port of a launch whose launcher.master_port is 0: from its run id, so two
    launches sharing a first host do not meet (20000-59999)."""
    return 20000 + zlib.crc32(run_id.encode()) % 40000


def render_node_commands(cfg: FrozenConfig, config_path: str, overrides: list[str], log_dir: str,
                         run_id: str | None = None) -> list[tuple[str, list[str]]]:
    """[(host, argv)] one per node; node 0's host is the rendezvous/master address. `run_id` (the
    rendezvous id; default: fresh for every launch) also gives the port when master_port is 0."""
    hosts = hosts_for(cfg)
    master = "127.0.0.1" if is_local(hosts[0]) and all(is_local(h) for h in hosts) else hosts[0]
    run_id = run_id or f"frozen-scale-{uuid.uuid4().hex[:12]}"
    port = cfg.launcher.master_port or port_for(run_id)
    out = []
    for rank, host in enumerate(hosts):
        spec = NodeSpec(nnodes=str(len(hosts)), node_rank=str(rank), master_addr=master,
                        master_port=str(port), rdzv_id=run_id,
                        log_dir=f"{log_dir}/ranks/node{rank}")
        out.append((host, node_command(cfg.launcher, spec, train_args(config_path, overrides))))
    return out


def _remote(cfg: FrozenConfig, host: str, argv: list[str], workdir: str) -> list[str]:
    lc = cfg.launcher
    lines = [f"cd {shlex.quote(workdir)}", *lc.setup]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in lc.env.items()]
    lines.append(shlex.join(argv))
    # -tt: the remote command has a terminal, so when this launcher is interrupted (or its ssh
    # ends) the remote node supervisor gets HUP and stops its trainers (launchers.node).
    # launcher.env_from_host travels by name in ssh's environment requests (the server must
    # AcceptEnv them), never in this argv.
    send = [opt for name in lc.env_from_host for opt in ("-o", f"SendEnv={name}")]
    return ["ssh", "-tt", "-o", "BatchMode=yes", *send, "--", host, " && ".join(lines)]


def full_command(cfg: FrozenConfig, host: str, argv: list[str], workdir: str) -> list[str]:
    """What runs for a node: its command here, or through ssh on another host."""
    return argv if is_local(host) else _remote(cfg, host, argv, workdir)


def run_nodes(cfg: FrozenConfig, commands: list[tuple[str, list[str]]], workdir: str, log_dir: str,
              timeout: float | None = None) -> int:
    """Start every node, wait for all; if one fails the others are stopped. Returns the worst rc."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{k: str(v) for k, v in cfg.launcher.env.items()})
    procs = []
    for rank, (host, argv) in enumerate(commands):
        full = full_command(cfg, host, argv, workdir)
        log = open(Path(log_dir) / f"node{rank}.out", "ab")
        print(f"node {rank} on {host}: {shlex.join(full)}", flush=True)
        procs.append(subprocess.Popen(full, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    deadline = None if timeout is None else time.time() + timeout
    codes: dict[int, int] = {}
    timed_out = False
    try:
        while len(codes) < len(procs):
            for rank, proc in enumerate(procs):
                if rank not in codes and proc.poll() is not None:
                    codes[rank] = proc.returncode
                    print(f"node {rank} exited {proc.returncode}", flush=True)
            if any(code != 0 for code in codes.values()):
                break
            if deadline is not None and time.time() > deadline:
                timed_out = True
                break
            time.sleep(0.5)
    finally:
        for proc in procs:  # stop whatever still runs (a failed peer, a timeout, Ctrl-C)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    if timed_out:
        return 124
    return max(codes.values(), key=abs) if codes else 1
