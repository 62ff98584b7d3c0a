"""KubeRay's RayJob CRD (tests/data/kuberay, vendored; see the README there) as a JSON Schema, and
a schema of a ConfigMap's shape, to validate the manifests `submit --launcher k8s` prints.

The API server checks a custom resource against the CRD's openAPIV3Schema, and with strict field
validation rejects fields the schema does not declare. JSON Schema says the same once converted:
every object schema that lists `properties` gets `additionalProperties: false` (unless it says
`x-kubernetes-preserve-unknown-fields: true`), `x-kubernetes-int-or-string` becomes "integer or
string", `nullable` admits null, and the other `x-kubernetes-*` keys (list and map semantics the
API server applies on merges) are dropped.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from jsonschema import Draft7Validator

CRD = Path(__file__).parent / "data" / "kuberay" / "ray.io_rayjobs.yaml"

_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")


def to_json_schema(node):
    """An openAPI v3 schema of a Kubernetes CRD as a JSON Schema (draft 7)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in _SCHEMA_MAPS:  # field name -> schema: the names are data, not keywords
            out[key] = {name: to_json_schema(schema) for name, schema in value.items()}
        else:
            out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    return out


@functools.lru_cache(maxsize=1)
def rayjob_validator() -> Draft7Validator:
    """Validator of a RayJob (ray.io/v1) against the vendored CRD."""
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = to_json_schema(version["schema"]["openAPIV3Schema"])
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"

CONFIG_MAP_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "data"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "v1"},
        "kind": {"const": "ConfigMap"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": _DNS_SUBDOMAIN},
                "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "data": {
            "type": "object",
            "propertyNames": {"pattern": r"^[-._a-zA-Z0-9]+$"},
            "additionalProperties": {"type": "string"},
        },
    },
}


def config_map_validator() -> Draft7Validator:
    return Draft7Validator(CONFIG_MAP_SCHEMA)


def errors(validator: Draft7Validator, doc: dict) -> list[str]:
    """Every violation, as 'path: message'."""
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]
