"""Kubernetes: a KubeRay `RayJob` manifest that creates a Ray cluster, runs the Ray driver on it
(the same driver `--launcher ray` submits) and tears the cluster down afterwards.

    frozen-scale submit CONFIG --launcher k8s > rayjob.yaml && kubectl apply -f rayjob.yaml

Two documents: a ConfigMap holding the resolved run config (command-line overrides applied) and
the RayJob, whose head and worker pods mount it at CONFIG_MOUNT; the driver reads it there. The
image (`launcher.container`) must hold this package and its dependencies; `train.run_dir` must be
on a volume every pod mounts (`launcher.k8s_volumes` / `launcher.shared_mounts`), checkpoints
there or on object storage (launchers.shared_storage).
"""

from __future__ import annotations

import re

import yaml

from frozen_scale.config import ConfigError, FrozenConfig, dump_config

from launchers.commands import NODE_MODULE
from launchers.ray_job import STOP_WAIT_ENV, driver_entrypoint, stop_wait_seconds

API_VERSION = "ray.io/v1"
KIND = "RayJob"
LABELS = {"app.kubernetes.io/name": "frozen-scale"}
CONFIG_MOUNT = "/etc/frozen-scale"
"""Where the ConfigMap with the run config is mounted in every pod."""
CONFIG_FILE = "config.yaml"
CONFIG_VOLUME = "run-config"


def _dns_name(name: str) -> str:
    """Kubernetes object names: lowercase alphanumerics and '-', at most 63 characters."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    if not out:
        raise ConfigError(f"launcher.job_name '{name}' gives no valid Kubernetes name")
    return out


def config_map_name(cfg: FrozenConfig) -> str:
    return f"{_dns_name(cfg.launcher.job_name)}-config"


def _volumes(cfg: FrozenConfig) -> tuple[list[dict], list[dict]]:
    """(pod volumes, container mounts): the run config's ConfigMap and launcher.k8s_volumes."""
    volumes = [{"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(cfg)}}]
    mounts = [{"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": True}]
    for i, shared in enumerate(cfg.launcher.k8s_volumes):
        name = f"shared-{i}"
        if shared.claim:
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": shared.claim}})
        else:
            volumes.append({"name": name, "hostPath": {"path": shared.host_path, "type": "Directory"}})
        mounts.append({"name": name, "mountPath": shared.mount})
    return volumes, mounts


def _pod_template(cfg: FrozenConfig, name: str, gpus: int, ports: list[tuple[str, int]],
                  trainers: bool = False) -> dict:
    """A pod of the Ray cluster. The trainers' pods stop them before Kubernetes signals the
    container: a preStop hook (`launchers.node --stop-local`) sends the stop to every trainer's
    supervisor and waits for their commit, within a termination grace of `launcher.signal_seconds`
    plus a margin (an eviction or `kubectl delete` then ends in a committed checkpoint)."""
    lc = cfg.launcher
    volumes, mounts = _volumes(cfg)
    container = _container(cfg, name, gpus, ports)
    container["volumeMounts"] = mounts
    if trainers:
        container["lifecycle"] = {"preStop": {"exec": {"command": [
            lc.python, "-m", NODE_MODULE, "--stop-local", f"--grace={lc.signal_seconds}"]}}}
    spec = {"containers": [container], "volumes": volumes,
            "terminationGracePeriodSeconds": stop_wait_seconds(cfg)}
    return {"spec": spec}


def _container(cfg: FrozenConfig, name: str, gpus: int, ports: list[tuple[str, int]]) -> dict:
    lc = cfg.launcher
    limits = {"cpu": str(lc.k8s_cpus_per_node), "memory": lc.k8s_memory_per_node}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": name,
        "image": lc.container,
        "resources": {"limits": dict(limits), "requests": dict(limits)},
        "env": [{"name": k, "value": str(v)} for k, v in lc.env.items()],
    }
    if lc.k8s_secret:  # secrets by reference: the pods read them from the Secret, nothing here holds them
        container["envFrom"] = [{"secretRef": {"name": lc.k8s_secret}}]
        container["env"] += [{"name": "RAY_AUTH_MODE", "value": "token"}]
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    return container


def render_config_map(cfg: FrozenConfig) -> dict:
    """The ConfigMap that carries the resolved run config to the pods."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name(cfg), "namespace": cfg.launcher.k8s_namespace, "labels": dict(LABELS)},
        "data": {CONFIG_FILE: dump_config(cfg)},
    }


def render_rayjob(cfg: FrozenConfig) -> dict:
    """The RayJob as a dict: a head pod (no training), `nodes` worker pods with the GPUs, all
    mounting the run config's ConfigMap."""
    lc = cfg.launcher
    if not lc.container:
        raise ConfigError("launcher.container must name the image for the k8s launcher")
    if lc.env_from_host and not lc.k8s_secret:
        raise ConfigError(f"launcher.env_from_host ({', '.join(lc.env_from_host)}) on k8s comes from a Secret: set "
                          "launcher.k8s_secret to one that holds those keys")
    gpus = lc.gpus_per_node if lc.request_gpus else 0
    log_dir = lc.log_dir or f"{cfg.train.run_dir}/logs"
    runtime_env = {"env_vars": {k: str(v) for k, v in lc.env.items()}}
    runtime_env["env_vars"].setdefault(STOP_WAIT_ENV, str(stop_wait_seconds(cfg)))
    if lc.ray_pip:
        runtime_env["pip"] = list(lc.ray_pip)
    worker_params = {}
    if not gpus:  # one training process per logical CPU slot otherwise
        worker_params["num-cpus"] = str(lc.gpus_per_node)
    spec = {
        "entrypoint": driver_entrypoint(cfg, f"{CONFIG_MOUNT}/{CONFIG_FILE}", log_dir, lc.python),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 600,
        "rayClusterSpec": {
            "rayVersion": lc.k8s_ray_version,
            "headGroupSpec": {
                # 0.0.0.0 for the other pods and the operator; with launcher.k8s_secret the
                # cluster requires Ray's token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from the Secret)
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": _pod_template(
                    cfg, "ray-head", 0, [("gcs-server", 6379), ("dashboard", 8265), ("client", 10001)]),
            },
            "workerGroupSpecs": [{
                "groupName": "trainers",
                "replicas": lc.nodes,
                "minReplicas": lc.nodes,
                "maxReplicas": lc.nodes,
                "rayStartParams": worker_params,
                "template": _pod_template(cfg, "ray-worker", gpus, [], trainers=True),
            }],
        },
    }
    if lc.k8s_secret:  # the pod that submits the job talks to the token-protected cluster too
        submitter = _container(cfg, "ray-job-submitter", 0, [])
        spec["submitterPodTemplate"] = {"spec": {"restartPolicy": "Never", "containers": [submitter]}}
    spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=True)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": _dns_name(lc.job_name), "namespace": lc.k8s_namespace, "labels": dict(LABELS)},
        "spec": spec,
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded config) as literal blocks, readable in the manifest."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render_yaml(cfg: FrozenConfig) -> str:
    """Both documents, ConfigMap first (the RayJob's pods mount it), for one `kubectl apply -f`."""
    return yaml.dump_all([render_config_map(cfg), render_rayjob(cfg)], Dumper=_BlockDumper, sort_keys=False)
