"""Config loading: typos and wrong types are named; every shipped config validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from frozen_scale.config import ConfigError, FrozenConfig, load_config, save_config
from frozen_scale.distributed.engine import ds_config

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").rglob("*.yaml"))


def test_typo_key_names_the_key_and_the_nearest_valid_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lerning_rate'"):
        load_config(path)
    path.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'model.prefix_lenght'.*did you mean 'prefix_length'"):
        load_config(None, ["model.prefix_lenght=3"])


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.steps must be an integer.*'many'"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"train.precision must be one of 'fp32', 'bf16'"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match=r"model.vision.resnet_widths must be a list"):
        load_config(None, ["model.vision.resnet_widths=32"])
    with pytest.raises(ConfigError, match=r"deepspeed.stage must be 0, 1, 2 or 3"):
        load_config(None, ["deepspeed.stage=4"])


def test_debug_hooks_are_typed_config(tmp_path):
    cfg = load_config(None, ["debug.fault=hold_after@6", "debug.log_sample_keys=true", "train.wandb.project=p"])
    assert cfg.debug.fault_at("hold_after", 6) and not cfg.debug.fault_at("hold_after", 5)
    assert cfg.debug.log_sample_keys and cfg.train.wandb.project == "p"
    assert not load_config(None).debug.fault and not load_config(None).debug.log_sample_keys
    for bad in ("hold_after", "hold_after@x", "explode@3"):
        with pytest.raises(ConfigError, match=r"debug.fault must look like <name>@<step>.*hold_after, pause_after, crash_before_commit"):
            load_config(None, [f"debug.fault={bad}"])


def test_overrides_apply_and_roundtrip(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "model.vision.kind=vit", "deepspeed.stage=3"])
    assert cfg.train.lr == 3e-4 and cfg.model.vision.kind == "vit" and cfg.deepspeed.stage == 3
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_deepspeed_json_is_derived_from_the_run_config():
    cfg = load_config(None, ["train.micro_batch_size=8", "train.grad_accum=4", "deepspeed.stage=3",
                             "train.precision=bf16", "deepspeed.extra={zero_optimization: {reduce_bucket_size: 1000}}"])
    ds = ds_config(cfg, world_size=16)
    assert ds["train_batch_size"] == 8 * 4 * 16
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["reduce_bucket_size"] == 1000
    assert ds["bf16"]["enabled"] is True
    assert ds["gradient_clipping"] == cfg.train.grad_clip


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, FrozenConfig)
    ds_config(cfg, world_size=max(1, cfg.launcher.nodes * cfg.launcher.gpus_per_node))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert "tiny-cpu.yaml" in names and "llama-7b-zero3.yaml" in names
