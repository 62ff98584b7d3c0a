"""`frozen-scale submit --launcher k8s`: a ConfigMap with the resolved run config and a KubeRay
RayJob that mounts it, checked against Kubernetes' own types (from the official Python client's
models, tests/support/k8s_types.py) and our schema of KubeRay's v1 RayJob (tests/data/rayjob_v1.yaml);
`--crd FILE`; and the shared-storage rule every cluster job (k8s, ray) is held to."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

from frozen_scale.app.cli import main as frozen_scale_main
from frozen_scale.config import ConfigError, load_config
from launchers import cli, k8s_schema
from tests.support import k8s_types

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


@pytest.fixture(scope="module")
def rayjob_crd(tmp_path_factory) -> Path:
    """tests/data/rayjob_v1.yaml with Kubernetes' types filled in: a complete CRD document."""
    return k8s_types.complete_crd(tmp_path_factory.mktemp("crd") / "rayjob_v1.yaml")


@pytest.fixture(scope="module")
def rayjob_validator(rayjob_crd) -> Draft7Validator:
    return k8s_schema.crd_validator(rayjob_crd, "RayJob", "ray.io", "v1")


@pytest.fixture(scope="module")
def config_map_validator() -> Draft7Validator:
    return Draft7Validator(k8s_schema.to_json_schema(k8s_types.openapi_schema("V1ConfigMap")))


def _shared(config: Path) -> str:
    """The tiny config's run folder lies under the config's folder: declare that shared."""
    return f"launcher.shared_mounts=[{config.parent}]"


def test_kuberay_rayjob_manifest(tiny_run_config, capsys, rayjob_validator, config_map_validator):
    over = ["launcher.nodes=4", "launcher.gpus_per_node=8", IMAGE, "launcher.job_name=Frozen_7B run",
            "launcher.k8s_namespace=ml", _shared(tiny_run_config), "train.lr=0.01",
            "launcher.k8s_volumes=[{mount: /mnt/data, claim: datasets}, {mount: /scratch, host_path: /nfs/scratch}]"]
    config_map, doc = _manifest(tiny_run_config, capsys, *over)
    assert k8s_schema.errors(rayjob_validator, doc) == []
    assert k8s_schema.errors(config_map_validator, config_map) == []
    assert (config_map["apiVersion"], config_map["kind"]) == ("v1", "ConfigMap")
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
    # an eviction or deletion reaches the trainers: a preStop hook stops them and waits, within
    # a grace period that covers the save; a stopped Ray job waits as long before its SIGKILL
    hook = worker["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[1:4] == ["-m", "launchers.node", "--stop-local"] and "--grace=120" in hook
    assert worker_pod["terminationGracePeriodSeconds"] == head_pod["terminationGracePeriodSeconds"] == 150
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "150"

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


def test_manifest_without_gpus_or_volumes_is_valid(plain_config, capsys, rayjob_validator, config_map_validator):
    over = [IMAGE, _shared(plain_config), "launcher.request_gpus=false", "launcher.env={NCCL_DEBUG: WARN}"]
    config_map, doc = _manifest(plain_config, capsys, *over)
    assert k8s_schema.errors(rayjob_validator, doc) == []
    assert k8s_schema.errors(config_map_validator, config_map) == []
    (workers,) = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    worker = workers["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"] and "runtimeEnvYAML" in doc["spec"]
    assert [v["name"] for v in workers["template"]["spec"]["volumes"]] == ["run-config"]


def test_schema_checks_can_fail(plain_config, capsys, rayjob_validator, config_map_validator):
    """The same manifest, broken one way at a time, is caught each time, naming the field."""
    over = [IMAGE, _shared(plain_config), "launcher.k8s_volumes=[{mount: /scratch, host_path: /nfs/scratch}]"]
    config_map, doc = _manifest(plain_config, capsys, *over)
    assert k8s_schema.errors(rayjob_validator, doc) == []

    def broken(edit) -> list[str]:
        bad = copy.deepcopy(doc)
        edit(bad["spec"], bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])
        return k8s_schema.errors(rayjob_validator, bad)

    pod = "spec.rayClusterSpec.workerGroupSpecs.0.template.spec"
    unknown = broken(lambda spec, group: group["template"]["spec"]["containers"][0].update(gpus=8))
    assert unknown == [f"{pod}.containers.0: Additional properties are not allowed ('gpus' was unexpected)"]
    wrong_type = broken(lambda spec, group: group.update(replicas="4"))
    assert wrong_type == ["spec.rayClusterSpec.workerGroupSpecs.0.replicas: '4' is not of type 'integer'"]
    missing = broken(lambda spec, group: spec.pop("entrypoint"))
    assert missing == ["spec: 'entrypoint' is a required property"]
    in_volume = broken(lambda spec, group: group["template"]["spec"]["volumes"][1]["hostPath"].update(ro=True))
    assert in_volume == [f"{pod}.volumes.1.hostPath: Additional properties are not allowed ('ro' was unexpected)"]
    unnamed = broken(lambda spec, group: group["template"]["spec"]["containers"][0].pop("name"))
    assert unnamed == [f"{pod}.containers.0: 'name' is a required property"]  # required, from the client's model

    bad_map = copy.deepcopy(config_map)
    bad_map["data"]["config.yaml"] = 3
    assert k8s_schema.errors(config_map_validator, bad_map) == ["data.config.yaml: 3 is not of type 'string'"]


def _submit_with_crd(config: Path, crd: Path, capsys, *over: str) -> tuple[int, str, str]:
    code = frozen_scale_main(["submit", str(config), "--launcher", "k8s", "--dry-run", "--crd", str(crd),
                              IMAGE, _shared(config), *over])
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_checks_against_a_crd(plain_config, rayjob_crd, capsys):
    code, out, err = _submit_with_crd(plain_config, rayjob_crd, capsys)
    assert code == 0 and "kind: RayJob" in out
    valid, warning = err.splitlines()
    assert valid == f"valid against {rayjob_crd} (RayJob ray.io/v1)"
    assert "without launcher.k8s_secret" in warning  # plain_config names no Secret: the cluster takes no token

    # a cluster whose CRD knows neither rayVersion nor shutdownAfterJobFinishes
    crd = yaml.load(rayjob_crd.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["shutdownAfterJobFinishes"]
    del spec["properties"]["rayClusterSpec"]["properties"]["rayVersion"]
    older = plain_config.parent / "older-crd.yaml"
    older.write_text(yaml.dump(crd, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    code, out, err = _submit_with_crd(plain_config, older, capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"frozen-scale submit: {older}: spec: Additional properties are not allowed "
        "('shutdownAfterJobFinishes' was unexpected)",
        f"frozen-scale submit: {older}: spec.rayClusterSpec: Additional properties are not allowed "
        "('rayVersion' was unexpected)",
    ]

    not_a_crd = plain_config.parent / "configmap.yaml"
    not_a_crd.write_text("apiVersion: v1\nkind: ConfigMap\n")
    code, out, err = _submit_with_crd(plain_config, not_a_crd, capsys)
    assert (code, out, err) == (2, "", f"frozen-scale submit: {not_a_crd} is not a CustomResourceDefinition\n")
    code, out, err = _submit_with_crd(plain_config, plain_config.parent / "missing.yaml", capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "cannot read" in err
    assert frozen_scale_main(["submit", str(plain_config), "--launcher", "slurm", "--crd", str(rayjob_crd)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "frozen-scale submit: --crd checks k8s manifests; the launcher is slurm"


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
