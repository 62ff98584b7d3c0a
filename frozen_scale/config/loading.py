"""The whole run config (`FrozenConfig`), and reading, checking and writing it: YAML with dotted
overrides, dicts to dataclasses with every key and type checked."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from frozen_scale.config.errors import ConfigError, NotFoundError
from frozen_scale.config.extensions import registered_sections
from frozen_scale.config.launcher import LauncherConfig
from frozen_scale.config.sections import (CheckpointConfig, DataConfig, DebugConfig, DeepSpeedSection, EvalConfig,
                                          ModelConfig, TrainConfig)
from frozen_scale.secrets import redact


@dataclass
class FrozenConfig:
    """A whole run: the library's sections, and those registered by packages above it
    (`config.extensions`), read as attributes too (`cfg.world`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    """Cluster submission settings, read by `launchers/`."""
    debug: DebugConfig = field(default_factory=DebugConfig)
    """Test hooks (fault injection, sample-key logs); off by default."""
    extensions: dict = field(default_factory=dict, metadata={"extensions": True})
    """The registered sections' values by name (every registered section, defaults if not given)."""

    def __getattr__(self, name: str):
        extensions = self.__dict__.get("extensions")
        if extensions is not None and name in extensions:
            return extensions[name]
        raise AttributeError(f"the run config has no section '{name}'")

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or str(Path(self.train.run_dir) / "checkpoints")


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with checking


def _nearest(key: str, options) -> str:
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(options))}"


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=where + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where} must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} ({value!r})")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _frozen_config(data: dict) -> FrozenConfig:
    """The whole config: the library's sections, then every registered one (from `data` or its
    defaults)."""
    added = registered_sections()
    core = {k: v for k, v in data.items() if k not in added}
    if "extensions" in core:
        raise ConfigError(f"unknown config key 'extensions'{_nearest('extensions', _section_names())}")
    extensions = {name: _coerce(data.get(name, {}), cls, name) for name, cls in added.items()}
    cfg = from_dict(FrozenConfig, core, names=_section_names())
    cfg.extensions = extensions
    return cfg


def _section_names() -> set[str]:
    return {f.name for f in dataclasses.fields(FrozenConfig) if f.name != "extensions"} | set(registered_sections())


def from_dict(cls, data: dict, prefix: str = "", names: set[str] | None = None):
    """Build dataclass `cls` from a plain dict, checking keys and types (`FrozenConfig`: with
    the registered sections)."""
    if cls is FrozenConfig and names is None:
        return _frozen_config(data)
    hints = typing.get_type_hints(cls)
    names = names or {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_nearest(key, names)}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err


def to_dict(cfg) -> dict:
    """A dataclass as a plain dict; a `FrozenConfig`'s registered sections sit at the top level
    beside the library's, as in its file."""
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, FrozenConfig):
        out.pop("extensions")
        out.update({name: dataclasses.asdict(section) for name, section in cfg.extensions.items()})
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of `base` with `over` laid on top: nested mappings merge key by key, anything else
    in `over` replaces what `base` holds."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def safe_yaml(text: str, where: str):
    """YAML without aliases: a few hundred bytes of nested aliases expand to billions of nodes
    (every later walk of the config would take minutes), and a run config has no use for them.
    The check reads the event stream, which stays as long as the text."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise ConfigError(f"{where}: line {mark.line + 1}: YAML aliases (*{event.anchor}) are not accepted "
                                  "in a config; write the value out")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        value = safe_yaml(raw, f"override '{dotted}'") if raw != "" else ""
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FrozenConfig:
    """Read YAML (or start from defaults), apply dotted overrides, build and validate."""
    data: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise NotFoundError(f"config file not found: {path}") from None
        data = safe_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    apply_overrides(data, list(overrides or []))
    return from_dict(FrozenConfig, data)


def dump_config(cfg: FrozenConfig) -> str:
    """The resolved config as YAML: `load_config` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def redacted_dict(cfg) -> dict:
    """The config as a dict for files and logs: secret-looking values and URL passwords masked."""
    return redact(to_dict(cfg))


def save_config(cfg: FrozenConfig, path: str | Path) -> None:
    """The resolved config as YAML, secret-looking values masked; an identical file is left as it
    is (a re-run changes nothing)."""
    path, text = Path(path), yaml.safe_dump(redacted_dict(cfg), sort_keys=False)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
