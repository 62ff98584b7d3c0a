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
    v = shell_var_arg
    if launcher.runner == "deepspeed":
        return [
            "deepspeed", v("--num_nodes=", node.nnodes), f"--num_gpus={launcher.gpus_per_node}",
            v("--node_rank=", node.node_rank), v("--master_addr=", node.master_addr),
            v("--master_port=", node.master_port), "--no_ssh", "--module", TRAIN_MODULE, *args,
        ]
    argv = [launcher.python, "-m", "torch.distributed.run", v("--nnodes=", node.nnodes),
            f"--nproc-per-node={launcher.gpus_per_node}", "--max-restarts=0"]
    if launcher.rdzv_backend == "c10d":
        endpoint = Shell(f"{node.master_addr}:{node.master_port}") \
            if isinstance(node.master_addr, Shell) or isinstance(node.master_port, Shell) \
            else f"{node.master_addr}:{node.master_port}"
        argv += ["--rdzv-backend=c10d", v("--rdzv-endpoint=", endpoint),
                 v("--rdzv-id=", node.rdzv_id), v("--node-rank=", node.node_rank)]
    else:
        argv += [v("--node-rank=", node.node_rank), v("--master-addr=", node.master_addr),
                 v("--master-port=", node.master_port)]
    if node.log_dir:  # per-rank stdout/stderr files, also teed to the node's output
        argv += [v("--log-dir=", node.log_dir), "--redirects=3", "--tee=3"]
    return argv + ["-m", TRAIN_MODULE, *args]


def check_one_line(what: str, value: str) -> str:
    """`value`, refused with one line when it holds a newline or another control character (it
    goes into a script or an #SBATCH line, where that would start a new command or option)."""
    from frozen_scale.config import ConfigError

    if any(ord(c) < 32 or ord(c) == 127 for c in str(value)):
        raise ConfigError(f"{what}: {value!r} holds a newline or another control character; it must be one line")
    return value


class Shell(str):
    """A word the launcher itself wrote for the shell (its `$SLURM_*` variables, any user part
    already quoted): `shell_join` leaves it as it is. Every other word is a user's value and is
    single-quoted, so `$(...)`, backticks or `$VAR` in an override never run or expand."""


def shell_var_arg(prefix: str, value: str) -> str:
    """`prefix + value`, as a Shell word when `value` is the launcher's: bare `$VAR` references
    are double-quoted whole, a word with its own quoting is kept as it is."""
    if not isinstance(value, Shell):
        return prefix + value
    text = prefix + value
    return Shell(text if "'" in text or '"' in text else f'"{text}"')


def shell_join(argv: list[str]) -> str:
    """Quote for bash: Shell words as they are, every other word single-quoted."""
    return " ".join(arg if isinstance(arg, Shell) else shlex.quote(arg) for arg in argv)
