"""Kubernetes' own types as openAPI v3 schemas, read from the official Python client's models.

Each model class (`kubernetes.client.V1PodTemplateSpec`, ...) declares its fields in
`openapi_types` (python attribute -> type: 'str', 'int', 'bool', 'float', 'datetime', 'object',
'List[V1Container]', 'Dict[str, str]'; older clients spell these 'list[...]' and 'dict(str, ...)')
and `attribute_map` (python attribute -> JSON key); the pydantic field of each attribute says
whether it is required. `openapi_schema` walks a model through them into the openAPI v3 shape a
CRD embeds: an object with its properties, `required`, unknown keys refused once converted
(launchers.k8s_schema), nested models inlined. A field the client types 'object' (a port given by
number or name, a free-form field) is left open, as the client declares it.

`complete_crd` fills our RayJob schema (tests/data/rayjob_v1.yaml): every node marked
`x-frozen-scale-ref: V1Something` becomes that type's schema, so the CRD document is complete.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import kubernetes.client
import yaml

REF = "x-frozen-scale-ref"
RAYJOB_SCHEMA = Path(__file__).parents[1] / "data" / "rayjob_v1.yaml"

_PRIMITIVES = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
    "bytes": {"type": "string", "format": "byte"},
    "object": {},
}
_LIST = re.compile(r"^(?:List|list)\[(.+)\]$")
_DICT = re.compile(r"^(?:Dict\[str, (.+)\]|dict\(str, (.+)\))$")


def _type_schema(type_name: str, seen: tuple[str, ...]) -> dict:
    if type_name in _PRIMITIVES:
        return dict(_PRIMITIVES[type_name])
    if match := _LIST.match(type_name):
        return {"type": "array", "items": _type_schema(match[1], seen)}
    if match := _DICT.match(type_name):
        return {"type": "object", "additionalProperties": _type_schema(match[1] or match[2], seen)}
    return _model_schema(type_name, seen)


def _required(model) -> list[str]:
    """The JSON keys of the fields a model cannot be built without (pydantic fields with no
    default; a field's JSON key is its serialization alias, e.g. V1LifecycleHandler's `exec`)."""
    fields = getattr(model, "model_fields", None)
    if fields is None:
        raise TypeError(f"kubernetes.client.{model.__name__} is not a pydantic model; "
                        "these tests read kubernetes>=37 models")
    required = {field.serialization_alias or name for name, field in fields.items() if field.is_required()}
    keys = list(model.attribute_map.values())
    assert required <= set(keys), (model.__name__, required - set(keys))
    return [key for key in keys if key in required]


def _model_schema(name: str, seen: tuple[str, ...] = ()) -> dict:
    if name in seen:
        raise ValueError(f"recursive type {' -> '.join((*seen, name))}")
    model = getattr(kubernetes.client, name)
    keys = model.attribute_map
    schema = {"type": "object", "properties": {
        keys[attr]: _type_schema(type_name, (*seen, name)) for attr, type_name in model.openapi_types.items()}}
    required = _required(model)
    if required:
        schema["required"] = required
    return schema


@functools.lru_cache(maxsize=None)
def _cached_schema(name: str) -> dict:
    return _model_schema(name)


def openapi_schema(name: str) -> dict:
    """The openAPI v3 schema of `kubernetes.client.<name>` (a fresh copy: callers may edit it)."""
    return copy.deepcopy(_cached_schema(name))


def resolve_refs(node):
    """`node` with every `{x-frozen-scale-ref: V1Type, ...}` replaced by V1Type's schema (the
    node's own `description` kept)."""
    if isinstance(node, list):
        return [resolve_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    if REF in node:
        schema = openapi_schema(node[REF])
        if "description" in node:
            schema["description"] = node["description"]
        return schema
    return {key: resolve_refs(value) for key, value in node.items()}


def count_refs(node) -> int:
    if isinstance(node, list):
        return sum(count_refs(item) for item in node)
    if not isinstance(node, dict):
        return 0
    return (REF in node) + sum(count_refs(value) for value in node.values())


def complete_crd(out: Path, source: Path = RAYJOB_SCHEMA) -> Path:
    """Our RayJob CRD with Kubernetes' types filled in, written to `out`."""
    crd = resolve_refs(yaml.safe_load(source.read_text()))
    assert count_refs(crd) == 0
    out.write_text(yaml.dump(crd, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))
    return out
