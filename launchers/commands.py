"""The command lines every launcher shares: the training entry and the per-node process launcher.

A node runs `torchrun` (or the deepspeed launcher) which starts one training process per GPU;
arguments may be shell expressions (`$SLURM_PROCID`) when the line is rendered into a script.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from frozen_scale.config import LauncherConfig

TRAIN_MODULE = "frozen_scale.app.cli"
"""The module every launcher runs on every rank: `python -m frozen_scale.app.cli train ...`."""
NODE_MODULE = "launchers.node"
"""The per-node supervisor every launcher runs torchrun under (stop signals, exit 75)."""


def train_args(config_path: str, overrides: list[str]) -> list[str]:
    """Arguments after `-m TRAIN_MODULE`. A requeue or restart runs the same line again, so resume
    is 'auto' unless the user named a checkpoint: then the same path, which the trainer reads as
    "continue the lineage begun there" once it has committed (frozen_scale.train.lineage)."""
    given = [o for o in overrides if o.startswith("train.resume=")]
    extra = [o for o in overrides if not o.startswith("train.resume=")]
    resume = given[-1] if given and given[-1] not in ("train.resume=", "train.resume=''") else "train.resume=auto"
    return ["train", config_path, *extra, resume]


@dataclass
class NodeSpec:
    """Where this node sits in the job; strings so that they can be shell variables."""

    nnodes: str
    node_rank: str
    master_addr: str
    master_port: str
    rdzv_id: str = "frozen-scale"
    log_dir: str = ""


def node_command(launcher: LauncherConfig, node: NodeSpec, args: list[str]) -> list[str]:
    """argv for one node: the node supervisor (launchers.node) over torchrun (c10d or static
    rendezvous) or the deepspeed launcher."""
    supervisor = [launcher.python, "-m", NODE_MODULE, f"--grace={launcher.signal_seconds}", "--"]
    return supervisor + _runner_command(launcher, node, args)


def _runner_command(launcher: LauncherConfig, node: NodeSpec, args: list[str]) -> list[str]:
    if launcher.runner == "deepspeed":
        return [
            "deepspeed", f"--num_nodes={node.nnodes}", f"--num_gpus={launcher.gpus_per_node}",
            f"--node_rank={node.node_rank}", f"--master_addr={node.master_addr}",
            f"--master_port={node.master_port}", "--no_ssh", "--module", TRAIN_MODULE, *args,
        ]
    argv = [launcher.python, "-m", "torch.distributed.run", f"--nnodes={node.nnodes}",
            f"--nproc-per-node={launcher.gpus_per_node}", "--max-restarts=0"]
    if launcher.rdzv_backend == "c10d":
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={node.master_addr}:{node.master_port}",
                 f"--rdzv-id={node.rdzv_id}", f"--node-rank={node.node_rank}"]
    else:
        argv += [f"--node-rank={node.node_rank}", f"--master-addr={node.master_addr}",
                 f"--master-port={node.master_port}"]
    if node.log_dir:  # per-rank stdout/stderr files, also teed to the node's output
        argv += [f"--log-dir={node.log_dir}", "--redirects=3", "--tee=3"]
    return argv + ["-m", TRAIN_MODULE, *args]


def shell_join(argv: list[str]) -> str:
    """Quote for bash, leaving `$VAR` / `${VAR}` references expandable (inside double quotes)."""
    out = []
    for arg in argv:
        if "$" in arg and "'" not in arg and '"' not in arg and "`" not in arg:
            out.append(f'"{arg}"')
        else:
            out.append(shlex.quote(arg))
    return " ".join(out)
