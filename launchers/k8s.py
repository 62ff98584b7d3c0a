"""Kubernetes: a KubeRay `RayJob` manifest that creates a Ray cluster, runs the Ray driver on it
(the same driver `--launcher ray` submits) and tears the cluster down afterwards.

    frozen-scale submit CONFIG --launcher k8s > rayjob.yaml && kubectl apply -f rayjob.yaml

The image (`launcher.container`) must hold this package and its dependencies; the run config and
`train.run_dir` must be reachable from the pods (object storage or a mounted volume).
"""

from __future__ import annotations

import re

import yaml

from frozen_scale.config import ConfigError, FrozenConfig

from launchers.ray_job import driver_entrypoint

API_VERSION = "ray.io/v1"
KIND = "RayJob"


def _dns_name(name: str) -> str:
    """Kubernetes object names: lowercase alphanumerics and '-', at most 63 characters."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    if not out:
        raise ConfigError(f"launcher.job_name '{name}' gives no valid Kubernetes name")
    return out


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
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    return container


def render_rayjob(cfg: FrozenConfig, config_path: str, overrides: list[str]) -> dict:
    """The RayJob as a dict: a head pod (no training), `nodes` worker pods with the GPUs."""
    lc = cfg.launcher
    if not lc.container:
        raise ConfigError("launcher.container must name the image for the k8s launcher")
    gpus = lc.gpus_per_node if lc.request_gpus else 0
    log_dir = lc.log_dir or f"{cfg.train.run_dir}/logs"
    runtime_env = {"env_vars": {k: str(v) for k, v in lc.env.items()}} if lc.env else {}
    if lc.ray_pip:
        runtime_env["pip"] = list(lc.ray_pip)
    worker_params = {}
    if not gpus:  # one training process per logical CPU slot otherwise
        worker_params["num-cpus"] = str(lc.gpus_per_node)
    spec = {
        "entrypoint": driver_entrypoint(cfg, config_path, overrides, log_dir, lc.python),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 600,
        "backoffLimit": 0,
        "rayClusterSpec": {
            "rayVersion": lc.k8s_ray_version,
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": {"spec": {"containers": [_container(
                    cfg, "ray-head", 0, [("gcs-server", 6379), ("dashboard", 8265), ("client", 10001)])]}},
            },
            "workerGroupSpecs": [{
                "groupName": "trainers",
                "replicas": lc.nodes,
                "minReplicas": lc.nodes,
                "maxReplicas": lc.nodes,
                "rayStartParams": worker_params,
                "template": {"spec": {"containers": [_container(cfg, "ray-worker", gpus, [])]}},
            }],
        },
    }
    if runtime_env:
        spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=True)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": _dns_name(lc.job_name), "namespace": lc.k8s_namespace,
                     "labels": {"app.kubernetes.io/name": "frozen-scale"}},
        "spec": spec,
    }


def render_yaml(cfg: FrozenConfig, config_path: str, overrides: list[str]) -> str:
    return yaml.safe_dump(render_rayjob(cfg, config_path, overrides), sort_keys=False)
