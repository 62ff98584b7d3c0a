"""The trainer's JSONL metrics report MFU and the data-wait fraction, with sane values, and the
FLOP count behind MFU follows 4 N_LM per token frozen, 6 N_LM trainable; Weights & Biases
logs the same records when `train.wandb.project` is set, and says how to install it if absent."""

from __future__ import annotations

import math

import yaml

from frozen_scale.config import load_config
from tests.support.core_fixtures import tiny_config_dict


def make_cfg(tmp_path, lm_dir, shards, **sections):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(lm_dir, shards, tmp_path / "run", **sections)))
    return load_config(path)


def test_metrics_jsonl_has_mfu_and_data_wait_fraction(tmp_path, tiny_lm_dir, tiny_shards):
    from frozen_scale.train.metrics import read_metrics
    from frozen_scale.train.trainer import Trainer

    cfg = make_cfg(tmp_path, tiny_lm_dir, tiny_shards, train={"steps": 4, "log_every": 2},
                   checkpoint={"every": 0, "keep_last": 1})
    trainer = Trainer(cfg)
    assert trainer.fit() == 0
    records = read_metrics(cfg.train.run_dir)
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert math.isfinite(r["mfu"]) and 0 < r["mfu"] < 1, r["mfu"]
        assert 0 <= r["data_wait_fraction"] <= 1, r["data_wait_fraction"]
        assert r["tokens_per_s"] > 0 and r["samples_per_s"] > 0
    # MFU is achieved FLOP/s over the peak: recompute it from the logged throughput
    flops = trainer.flops
    r = records[-1]
    achieved = flops.per_token * r["tokens_per_s"] + flops.per_image * r["samples_per_s"]
    assert math.isclose(r["mfu"], achieved / flops.peak, rel_tol=1e-6)


def test_flops_per_token_frozen_4n_trainable_6n(tmp_path, tiny_lm_dir, tiny_shards):
    from frozen_scale.train.flops import FlopsCounter
    from frozen_scale.train.trainer import Trainer

    cfg = make_cfg(tmp_path, tiny_lm_dir, tiny_shards, train={"peak_tflops": 1.0})
    trainer = Trainer(cfg)
    model, counts = trainer.engine.module, trainer.param_counts
    n_lm = counts["lm"]
    n_prefix = sum(p.numel() for p in model.prefix.parameters())
    assert trainer.flops.per_token == 4 * n_lm + 6 * n_prefix
    assert trainer.flops.per_image > 0  # the trainable vision encoder: forward + backward
    assert trainer.flops.peak == 1e12  # train.peak_tflops is honoured
    cfg.model.train_lm = True
    assert FlopsCounter(model, counts, cfg).per_token == 6 * n_lm + 6 * n_prefix


class FakeWandb:
    """Stands in for the `wandb` module: records init arguments and logged records."""

    def __init__(self):
        self.init_kwargs, self.logged, self.finished = None, [], False

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def test_wandb_is_a_config_section(tmp_path, monkeypatch):
    import sys

    import pytest

    from frozen_scale.config import ConfigError, WandbConfig
    from frozen_scale.train.metrics import MetricsLogger, read_metrics

    off = MetricsLogger(str(tmp_path / "off"), True, tensorboard=False, wandb=WandbConfig())
    off.log(1, {"loss": 1.0})
    off.close()
    assert off._wandb is None and read_metrics(str(tmp_path / "off"))[0]["loss"] == 1.0

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    on = MetricsLogger(str(tmp_path / "on"), True, tensorboard=False, wandb=WandbConfig(project="p", name="r"),
                       run_config={"train": {"lr": 0.1}})
    on.log(3, {"loss": 0.5})
    on.close()
    assert fake.init_kwargs == {"project": "p", "name": "r", "dir": str(tmp_path / "on"),
                                "config": {"train": {"lr": 0.1}}}
    assert fake.logged == [(3, {"loss": 0.5})] and fake.finished
    assert read_metrics(str(tmp_path / "on"))[0]["loss"] == 0.5  # JSONL as ever
    assert MetricsLogger(str(tmp_path / "rank1"), False, wandb=WandbConfig(project="p"))._wandb is None

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match=r"train.wandb.project is set but wandb is not installed.*\[wandb\]"):
        MetricsLogger(str(tmp_path / "missing"), True, tensorboard=False, wandb=WandbConfig(project="p"))
