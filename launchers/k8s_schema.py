"""Check a manifest against a CustomResourceDefinition: `submit --launcher k8s --crd FILE`.

    kubectl get crd rayjobs.ray.io -o yaml > rayjob-crd.yaml

The API server checks a custom resource against the CRD's openAPIV3Schema, and with strict field
validation rejects fields the schema does not declare. JSON Schema says the same once converted:
every object schema that lists `properties` gets `additionalProperties: false` (unless it says
`x-kubernetes-preserve-unknown-fields: true`), `x-kubernetes-int-or-string` becomes "integer or
string", `nullable` admits null, and the other `x-kubernetes-*` keys (list and map semantics the
API server applies on merges, CEL rules) are dropped.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import SchemaError

_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_MAX_MESSAGE = 300


class CRDError(ValueError):
    """The CRD file cannot be used: unreadable, not a CRD of the expected kind, no such version."""


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


def crd_validator(path: str | Path, kind: str, group: str, version: str) -> Draft7Validator:
    """A validator of `kind` (group/version) from the CRD in `path`."""
    try:
        crd = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as err:
        raise CRDError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise CRDError(f"{path} is not a CustomResourceDefinition")
    spec = crd.get("spec") or {}
    defines = ((spec.get("names") or {}).get("kind"), spec.get("group"))
    if defines != (kind, group):
        raise CRDError(f"{path} defines {defines[0]} ({defines[1]}), not {kind} ({group})")
    found = [v for v in spec.get("versions") or [] if v.get("name") == version]
    schema = ((found[0].get("schema") or {}).get("openAPIV3Schema")) if found else None
    if not schema:
        raise CRDError(f"{path} has no openAPIV3Schema for version {version}")
    converted = to_json_schema(schema)
    try:
        Draft7Validator.check_schema(converted)
    except SchemaError as err:
        raise CRDError(f"{path}: the schema is not valid: {err.message}") from None
    return Draft7Validator(converted)


def errors(validator: Draft7Validator, doc: dict) -> list[str]:
    """Every violation as one line, 'path.to.field: message', in document order."""
    found = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    lines = []
    for err in found:
        message = " ".join(err.message.split())
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "..."
        lines.append(f"{'.'.join(map(str, err.absolute_path)) or '<root>'}: {message}")
    return lines
