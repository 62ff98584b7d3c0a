"""Typed run configuration: nested dataclasses, loaded from YAML with dotted overrides.

The package's modules: `errors` (what a user can fix), `sections` (what the library reads),
`launcher` (cluster submission), `extensions` (sections a package above the library adds, such
as the built-in world's), `loading` (the whole config, reading and writing it). Everything is importable from `frozen_scale.config`.

One file describes a run. The DeepSpeed JSON is derived from it
(`frozen_scale.distributed.engine.ds_config`), never written by hand beside it.

    cfg = load_config("configs/tiny-cpu.yaml", ["train.lr=3e-4"])

Unknown keys and wrong types raise `ConfigError` naming the key and the nearest valid one. It is
one of the `UserError`s, which the command line says in one line with exit code 2.
"""

from frozen_scale.config.errors import ConfigError, InputError, NotFoundError, UserError
from frozen_scale.config.extensions import register_section, registered_sections
from frozen_scale.config.launcher import K8sVolume, LauncherConfig
from frozen_scale.config.loading import (FrozenConfig, apply_overrides, deep_merge, dump_config, from_dict,
                                         load_config, redacted_dict, safe_yaml, save_config, to_dict)
from frozen_scale.config.sections import (DEBUG_FAULTS, CheckpointConfig, DataConfig, DebugConfig, DeepSpeedSection,
                                          EvalConfig, ModelConfig, TrainConfig, VisionConfig, WandbConfig)

__all__ = [
    "CheckpointConfig", "ConfigError", "DEBUG_FAULTS", "DataConfig", "DebugConfig", "DeepSpeedSection", "EvalConfig",
    "FrozenConfig", "InputError", "K8sVolume", "LauncherConfig", "ModelConfig", "NotFoundError",
    "TrainConfig", "UserError", "VisionConfig", "WandbConfig", "apply_overrides", "deep_merge", "dump_config",
    "from_dict", "load_config", "redacted_dict", "register_section", "registered_sections", "safe_yaml",
    "save_config", "to_dict",
]
