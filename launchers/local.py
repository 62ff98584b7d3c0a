"""Training on this machine: `frozen-scale train` on N local ranks through torchrun (gloo on CPU).

The demo and `frozen-scale reproduce` train this way; the cluster launchers run the same entry
(`launchers.commands.TRAIN_MODULE`) on every node.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from launchers.commands import NODE_MODULE, TRAIN_MODULE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_training(config_path: str | Path, nproc: int, overrides: list[str] = (), env: dict | None = None) -> int:
    """Run `frozen-scale train CONFIG [overrides]` on `nproc` local ranks; returns torchrun's exit
    code under the node supervisor (`frozen_scale.constants`: 0 finished, 75 preempted after a
    TERM or USR1, torchrun's own code otherwise)."""
    cmd = [sys.executable, "-m", NODE_MODULE, "--", sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "-m", TRAIN_MODULE, "train", str(config_path), *overrides]
    full_env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
                "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc)), **(env or {})}
    return subprocess.call(cmd, env=full_env)
