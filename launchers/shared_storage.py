"""Cluster jobs write where every node sees it: `submit` refuses a Ray or k8s job whose run folder
or checkpoints would land in one pod's or node's own filesystem.

A pod's folder disappears with the pod, and a node's is unseen by the other nodes: a resumed
job (a new pod, another node) would not find its checkpoints, and rank 0's logs and metrics
would be lost. So `train.run_dir` must lie under a shared mount (`launcher.shared_mounts`, or on
k8s a mount of `launcher.k8s_volumes`) and `checkpoint.dir` must be object storage (s3://, gs://)
or lie under one too. The run folder is written with plain file I/O (logs, metrics, Ray Train's
storage, checkpoint staging), so it cannot be object storage itself.
"""

from __future__ import annotations

import posixpath

from frozen_scale import storage
from frozen_scale.config import ConfigError, FrozenConfig


def shared_mounts(cfg: FrozenConfig, kind: str) -> list[str]:
    """The folders the config declares shared for this launcher."""
    mounts = list(cfg.launcher.shared_mounts)
    if kind == "k8s":
        mounts += [volume.mount for volume in cfg.launcher.k8s_volumes]
    return [posixpath.normpath(m) for m in mounts]


def _under(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def _fix(kind: str, object_storage: bool) -> str:
    ways = ["put it under a folder listed in launcher.shared_mounts (one every node mounts alike)"]
    if kind == "k8s":
        ways.append("mount a volume there with launcher.k8s_volumes")
    if object_storage:
        ways.append("use object storage (s3://, gs://)")
    return ", or ".join(ways)


def require_shared(cfg: FrozenConfig, kind: str, cwd: str | None) -> None:
    """Raise ConfigError (one line: what, why, the fix) unless the run folder and the checkpoints
    of a `kind` job ('ray' or 'k8s') are on shared storage. `cwd`: the folder relative paths
    mean on the cluster, where it is known (a Ray job run in launcher.workdir); None otherwise."""
    mounts = shared_mounts(cfg, kind)
    local = "a folder of each pod" if kind == "k8s" else "a folder of one machine"
    checks = [("train.run_dir", cfg.train.run_dir, False)]
    if cfg.checkpoint.dir:
        checks.append(("checkpoint.dir", cfg.checkpoint.dir, True))
    for key, value, object_storage_ok in checks:
        if storage.is_remote(value):
            if object_storage_ok:
                continue
            raise ConfigError(f"{key} '{value}' is object storage, but the run folder is written as plain files "
                              f"(logs, metrics, Ray Train's storage): {_fix(kind, False)}")
        path = storage.local_path(value)
        if not posixpath.isabs(path):
            if cwd is None:  # relative to a folder of the pod or of the uploaded working_dir
                raise ConfigError(f"{key} '{value}' is relative: in a {kind} job it is {local}, not storage "
                                  f"every node shares; give an absolute path and {_fix(kind, object_storage_ok)}")
            path = posixpath.join(cwd, path)
        if not _under(posixpath.normpath(path), mounts):
            raise ConfigError(f"{key} '{value}' is {local}, not storage every node of a {kind} job shares: "
                              f"{_fix(kind, object_storage_ok)}")
