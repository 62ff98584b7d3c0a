"""`frozen-scale config`: the configuration reference, made from the config dataclasses.

    frozen-scale config                      every key: type, default and what it does (markdown)
    frozen-scale config CONFIG [k=v ...]     the resolved values of a file plus overrides (YAML)

docs/config.md is the first form's output (`frozen-scale config > docs/config.md`); a test fails
when it is stale. The descriptions are the fields' docstrings, read from the source with `ast`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import typing

import yaml

from frozen_scale.config import FrozenConfig, load_config, redacted_dict, registered_sections

HEADER = """# Configuration reference

Every key of a run config, by section: its type, its default and what it does. A config file
is YAML with these sections; any key can be overridden on the command line as
`section.key=value` (`train.lr=3e-4`, `launcher.env={NCCL_DEBUG: WARN}`). A key that does not
exist is refused with the nearest valid one. `frozen-scale config CONFIG [overrides]` prints the
resolved values of a file. This page is generated: `frozen-scale config > docs/config.md`.
"""


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass (an attribute docstring)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", None) or str(tp)
    return str(text).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if dataclasses.is_dataclass(value):
        return "(section)"
    return "`" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() + "`"


def reference() -> str:
    """The whole reference as markdown."""
    out = [HEADER]
    hints = typing.get_type_hints(FrozenConfig)
    for section in dataclasses.fields(FrozenConfig):
        if not section.metadata.get("extensions"):
            out += _section(section.name, hints[section.name])
    for name, cls in registered_sections().items():
        out += _section(name, cls, added_by=cls.__module__.rsplit(".", 1)[0])
    return "\n".join(out).rstrip() + "\n"


def _section(prefix: str, cls, added_by: str = "") -> list[str]:
    doc = " ".join((cls.__doc__ or "").split()) + (f" (A section added by `{added_by}`.)" if added_by else "")
    lines = [f"## `{prefix}`", "", doc, "",
             "| key | type | default | what it does |", "|---|---|---|---|"]
    docs, hints, nested = field_docs(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(tp):
            nested.append((f"{prefix}.{f.name}", tp))
            continue
        text = docs.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{prefix}.{f.name}` | {_type_name(tp).replace('|', 'or')} | {_default(f)} | {text} |")
    lines.append("")
    for name, tp in nested:
        lines += _section(name, tp)
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="frozen-scale config", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="a run config; without one, the reference of every key")
    args, overrides = parser.parse_known_args(argv)
    if args.config is None and not overrides:
        sys.stdout.write(reference())
        return 0
    cfg = load_config(args.config, overrides)
    sys.stdout.write(yaml.safe_dump(redacted_dict(cfg), sort_keys=False))
    return 0

