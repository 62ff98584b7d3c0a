"""The `launcher` section: cluster submission settings, read by `launchers/`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from frozen_scale.config.errors import ConfigError
from frozen_scale.secrets import looks_secret


@dataclass
class K8sVolume:
    """k8s: a volume mounted at the same path in the head and every worker pod; its mount counts as
    shared storage (a ReadWriteMany claim, or a host path that is a network filesystem on every node)."""

    mount: str = ""
    """Absolute path inside the pods."""
    claim: str = ""
    """Name of a PersistentVolumeClaim in the job's namespace."""
    host_path: str = ""
    """A folder of the node (hostPath volume); use one or the other, claim or host_path."""

    def __post_init__(self):
        if not self.mount.startswith("/") or bool(self.claim) == bool(self.host_path):
            raise ConfigError("launcher.k8s_volumes: each entry needs mount (an absolute path) and one of "
                              f"claim or host_path, got mount={self.mount!r} claim={self.claim!r} "
                              f"host_path={self.host_path!r}")


def _check_single_lines(section) -> None:
    """Launcher values end up in shell scripts and #SBATCH lines: a newline or another control
    character in one would start a new command or option there."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, str) and any(ord(c) < 32 or ord(c) == 127 for c in item):
                raise ConfigError(f"launcher.{f.name}: {item!r} holds a newline or another control character; "
                                  "each value must be one line")


@dataclass
class LauncherConfig:
    """Cluster submission settings, read by `launchers/` (`frozen-scale submit` / `plan`)."""

    kind: Literal["local", "slurm", "ray", "torchrun", "deepspeed", "k8s"] = "local"
    """Default launcher when `frozen-scale submit` gets no --launcher."""
    nodes: int = 1
    """Machines in the job."""
    gpus_per_node: int = 1
    """Training processes per machine (one per GPU; on CPU, processes per machine)."""
    tasks_per_node: int = 1
    """slurm: srun tasks per node, each running one torchrun. Keep 1 on a real cluster; >1 only
    emulates several nodes on one machine (tests)."""
    request_gpus: bool = True
    """slurm/ray/k8s: request gpus_per_node GPUs per node (false: CPU-only processes)."""
    cpus_per_task: int = 0
    """slurm: CPUs per srun task (0: not requested)."""
    mem: str = ""
    """slurm: memory per node, e.g. '400G' ('' : cluster default)."""
    partition: str = ""
    time: str = "24:00:00"
    """Wall-clock limit (slurm --time)."""
    account: str = ""
    qos: str = ""
    job_name: str = "frozen-scale"
    signal_seconds: int = 120
    """slurm: SIGUSR1 this many seconds before the time limit (save, exit 75, requeue)."""
    max_requeues: int = 20
    """Requeues (slurm) or restarts (ray) after preemption before giving up."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run on every node before training (module load, conda activate, exports)."""
    container: str = ""
    """slurm: container image for srun --container-image (pyxis/enroot); k8s: the pod image."""
    container_mounts: list[str] = field(default_factory=list)
    """slurm: src:dst mounts for srun --container-mounts."""
    sbatch_extra: list[str] = field(default_factory=list)
    """Extra `#SBATCH` options, e.g. '--exclusive', '--constraint=h100'."""
    runner: Literal["torchrun", "deepspeed"] = "torchrun"
    """Per-node process launcher used by slurm and host-list launches."""
    hosts: list[str] = field(default_factory=list)
    """torchrun/deepspeed host-list launch: one host per node (the first is the master)."""
    master_port: int = 0
    """The rendezvous port on the first node; 0 derives it from the job (Slurm: from the job id;
    a host-list launch: from its fresh run id), so two jobs sharing a node never meet."""
    rdzv_backend: Literal["c10d", "static"] = "c10d"
    """torchrun rendezvous: c10d on the first node (elastic, default) or static master addr/rank."""
    log_dir: str = ""
    """Per-job and per-rank logs; defaults to {train.run_dir}/logs."""
    python: str = "python"
    """Interpreter on the cluster nodes."""
    workdir: str = ""
    """Directory the job runs in on the nodes ('' : the directory `submit` runs in)."""
    ray_address: str = ""
    """ray: Jobs API address of the cluster, e.g. http://head:8265 ('' : $RAY_ADDRESS / local)."""
    ray_working_dir: str = ""
    """ray: folder uploaded as the job's working_dir ('' : none; the cluster has the code)."""
    ray_pip: list[str] = field(default_factory=list)
    """ray: extra pip packages for the job's runtime_env."""
    env: dict = field(default_factory=dict)
    """Environment variables set for every training process: settings, never secrets (they are
    written into scripts and manifests); a name that looks secret is refused, see env_from_host."""
    env_from_host: list[str] = field(default_factory=list)
    """Names of environment variables (credentials, tokens) the trainers take from the environment
    the job starts in, by name only, never written to a file or an argv: Slurm exports the submitting
    shell's environment; a host-list launch passes them to ssh with SendEnv (the server must
    AcceptEnv them); Ray trainers take them from their nodes' environment (set where `ray start`
    ran); on k8s they come from `k8s_secret`. Each is checked to be set where the job starts."""
    k8s_secret: str = ""
    """k8s: a Secret in the job's namespace whose keys become every pod's environment (envFrom);
    its RAY_AUTH_TOKEN key, when given, turns on Ray's token authentication for the cluster."""
    shared_mounts: list[str] = field(default_factory=list)
    """ray/k8s: absolute folders every node sees alike (NFS, a shared volume). A ray or k8s job
    needs `train.run_dir` under one of them, and `checkpoint.dir` too unless it is object storage
    (s3://, gs://): a folder of one pod or node is lost with it and unseen by the others."""
    k8s_namespace: str = "default"
    k8s_ray_version: str = "2.40.0"
    k8s_cpus_per_node: int = 8
    k8s_memory_per_node: str = "64Gi"
    k8s_volumes: list[K8sVolume] = field(default_factory=list)
    """k8s: volumes mounted in every pod, e.g. `[{mount: /mnt/shared, claim: shared-rwx}]`; their
    mounts count as shared_mounts."""

    def __post_init__(self):
        for name in ("nodes", "gpus_per_node", "tasks_per_node"):
            if getattr(self, name) < 1:
                raise ConfigError(f"launcher.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cpus_per_task", "signal_seconds", "max_requeues"):
            if getattr(self, name) < 0:
                raise ConfigError(f"launcher.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.master_port < 65536:
            raise ConfigError(f"launcher.master_port must be a TCP port, got {self.master_port}")
        if self.hosts and len(self.hosts) != self.nodes:
            raise ConfigError(
                f"launcher.hosts lists {len(self.hosts)} hosts but launcher.nodes is {self.nodes}"
            )
        for mount in self.shared_mounts:
            if not mount.startswith("/"):
                raise ConfigError(f"launcher.shared_mounts: '{mount}' is not an absolute path")
        for key in [*self.env, *self.env_from_host]:
            if not isinstance(key, str) or not key.replace("_", "a").isalnum():
                raise ConfigError(f"launcher.env: '{key}' is not a valid environment variable name")
        for key in self.env:
            if looks_secret(key):
                raise ConfigError(f"launcher.env.{key} looks like a secret, and launcher.env is written into job "
                                  f"scripts and manifests: pass it by name with launcher.env_from_host: [{key}] "
                                  "(or launcher.k8s_secret on Kubernetes)")
        _check_single_lines(self)
