"""`frozen-scale submit --launcher k8s`: a ConfigMap with the resolved run config and a KubeRay
RayJob that mounts it, valid against KubeRay's RayJob CRD (ray.io/v1, vendored in tests/data);
and the shared-storage rule every cluster job (k8s, ray) is held to."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from frozen_scale.app.cli import main as frozen_scale_main
from frozen_scale.config import ConfigError, load_config
from launchers import cli
from tests import kuberay_schema

IMAGE = "launcher.container=ghcr.io/org/frozen-scale:1"


def _manifest(config: Path, capsys, *over: str) -> tuple[dict, dict]:
    assert cli.submit_main([str(config), "--launcher", "k8s", "--dry-run", *over]) == 0
    config_map, rayjob = yaml.safe_load_all(capsys.readouterr().out)
    return config_map, rayjob


@pytest.fixture
def plain_config(tmp_path) -> Path:
    """A config with just a local run folder (no LM, no shards: submit only renders)."""
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({"train": {"run_dir": str(tmp_path / "run")}}))
    return path


def _shared(config: Path) -> str:
    """The tiny config's run folder lies under the config's folder: declare that shared."""
    return f"launcher.shared_mounts=[{config.parent}]"


def test_kuberay_rayjob_manifest(tiny_run_config, capsys):
    over = ["launcher.nodes=4", "launcher.gpus_per_node=8", IMAGE, "launcher.job_name=Frozen_7B run",
            "launcher.k8s_namespace=ml", _shared(tiny_run_config), "train.lr=0.01",
            "launcher.k8s_volumes=[{mount: /mnt/data, claim: datasets}, {mount: /scratch, host_path: /nfs/scratch}]"]
    config_map, doc = _manifest(tiny_run_config, capsys, *over)
    assert kuberay_schema.errors(kuberay_schema.rayjob_validator(), doc) == []
    assert kuberay_schema.errors(kuberay_schema.config_map_validator(), config_map) == []
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["metadata"] == {"name": "frozen-7b-run", "namespace": "ml",
                               "labels": {"app.kubernetes.io/name": "frozen-scale"}}
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head_pod = cluster["headGroupSpec"]["template"]["spec"]
    head = head_pod["containers"][0]
    assert head["image"] == "ghcr.io/org/frozen-scale:1"
    assert {p["containerPort"] for p in head["ports"]} == {6379, 8265, 10001}
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    worker_pod = workers["template"]["spec"]
    worker = worker_pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert worker["resources"]["requests"] == worker["resources"]["limits"]

    # the config travels in the ConfigMap, mounted in every pod; the entrypoint names the mounted file
    entry = shlex.split(spec["entrypoint"])
    assert entry[1:3] == ["-m", "launchers.ray_driver"] and "--num-workers=32" in entry
    assert str(tiny_run_config) not in spec["entrypoint"] and "train.lr=0.01" not in entry
    (key,) = config_map["data"]
    assert config_map["metadata"]["namespace"] == "ml"
    for pod, container in ((head_pod, head), (worker_pod, worker)):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        (config_volume,) = [n for n, v in volumes.items() if "configMap" in v]
        assert volumes[config_volume]["configMap"]["name"] == config_map["metadata"]["name"]
        assert entry[3] == f"{mounts[config_volume]}/{key}"
        shared = {mounts[n]: {k: v for k, v in volumes[n].items() if k != "name"} for n in mounts if n != config_volume}
        assert shared == {"/mnt/data": {"persistentVolumeClaim": {"claimName": "datasets"}},
                          "/scratch": {"hostPath": {"path": "/nfs/scratch", "type": "Directory"}}}
    shipped = Path(tiny_run_config.parent / "shipped.yaml")
    shipped.write_text(config_map["data"][key])
    assert load_config(shipped) == load_config(tiny_run_config, over)  # overrides applied, nothing lost

    with pytest.raises(ConfigError, match="launcher.container"):
        cli.submit_main([str(tiny_run_config), "--launcher", "k8s", "--dry-run", _shared(tiny_run_config)])


def test_crd_validator_rejects_unknown_fields_wrong_types_and_missing_required(plain_config, capsys):
    """The CRD check can fail: the same manifest, broken three ways, is caught each time."""
    validator = kuberay_schema.rayjob_validator()
    _, doc = _manifest(plain_config, capsys, IMAGE, _shared(plain_config))
    assert kuberay_schema.errors(validator, doc) == []

    unknown = copy.deepcopy(doc)
    unknown["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["gpus"] = 8
    assert any("gpus" in e and "Additional properties" in e for e in kuberay_schema.errors(validator, unknown))
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "4"
    assert any(e.startswith("spec.rayClusterSpec.workerGroupSpecs.0.replicas:") and "integer" in e
               for e in kuberay_schema.errors(validator, wrong_type))
    missing = copy.deepcopy(doc)
    del missing["spec"]["entrypoint"]
    assert any("'entrypoint' is a required property" in e for e in kuberay_schema.errors(validator, missing))
    bad_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"config.yaml": 3}}
    assert kuberay_schema.errors(kuberay_schema.config_map_validator(), bad_map)


@pytest.mark.parametrize("over, refused", [
    ([], "train.run_dir .* is a folder of each pod"),                        # run folder in the pod
    (["train.run_dir=runs/x", "launcher.shared_mounts=[/]"], "is relative"),   # relative: the pod's cwd
    (["train.run_dir=s3://b/run"], "object storage, but the run folder"),      # written as plain files
    (["train.run_dir=/mnt/shared/run", "launcher.shared_mounts=[/mnt/shared]", "checkpoint.dir=/ckpt"],
     "checkpoint.dir '/ckpt' is a folder of each pod"),
    (["train.run_dir=/mnt/shared/run", "launcher.shared_mounts=[/mnt/shared]", "checkpoint.dir=s3://b/ck"], None),
    (["train.run_dir=/mnt/sharedx/run", "launcher.shared_mounts=[/mnt/shared]"], "not storage every node"),
    (["train.run_dir=/mnt/v/run", "launcher.k8s_volumes=[{mount: /mnt/v, claim: rwx}]"], None),
])
def test_k8s_job_needs_shared_storage(plain_config, capsys, over, refused):
    argv = ["submit", str(plain_config), "--launcher", "k8s", "--dry-run", IMAGE, *over]
    code = frozen_scale_main(argv)
    out, err = capsys.readouterr()
    if refused is None:
        assert code == 0 and "kind: RayJob" in out, err
        return
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("frozen-scale submit: config error: ")
    assert re.search(refused, line), line
    assert "launcher.shared_mounts" in line and "launcher.k8s_volumes" in line


@pytest.mark.parametrize("value", ["[{mount: rel, claim: c}]", "[{mount: /m}]",
                                   "[{mount: /m, claim: c, host_path: /h}]"])
def test_k8s_volume_entries_are_checked(value):
    with pytest.raises(ConfigError, match="launcher.k8s_volumes: each entry needs mount"):
        load_config(None, [f"launcher.k8s_volumes={value}"])
