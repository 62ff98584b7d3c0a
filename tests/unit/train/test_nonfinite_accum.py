"""A non-finite loss inside a gradient-accumulation window discards the whole window: the next
optimizer step equals one taken as if the bad window had never happened (weights, Adam moments,
lr schedule), at every ZeRO stage."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.unit.train.test_core_train import adam_state, make_cfg


def _micro_batches(trainer, n):
    stream = trainer._data(None, trainer.cfg.train.seed)
    return list(itertools.islice(stream, n))


def _poisoned(batch):
    bad = dict(batch)
    bad["pixel_values"] = torch.full_like(batch["pixel_values"], float("nan"))
    return bad


def _trainable(trainer):
    return {n: p.detach().float().clone() for n, p in trainer.engine.module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16"), (2, "bf16")])
def test_nan_on_second_micro_batch_discards_the_window(tmp_path, tiny_lm_dir, tiny_shards, stage, precision):
    from frozen_scale.train.trainer import Trainer

    def trainer(name):
        (tmp_path / name).mkdir()
        cfg = make_cfg(tmp_path / name, tiny_lm_dir, tiny_shards,
                       train={"grad_accum": 2, "micro_batch_size": 2, "steps": 8, "warmup_steps": 3,
                              "precision": precision, "lr": 1e-2},
                       data={"num_workers": 0}, deepspeed={"stage": stage})
        return Trainer(cfg)

    with_bad = trainer("with_bad")
    b = _micro_batches(with_bad, 6)
    assert with_bad.train_step(iter(b[0:2]))
    assert not with_bad.train_step(iter([b[2], _poisoned(b[3])]))  # the NaN is on the 2nd micro-batch
    assert with_bad.nonfinite_total == 1
    assert with_bad.train_step(iter(b[4:6]))

    clean = trainer("clean")
    assert clean.train_step(iter(b[0:2]))
    assert clean.train_step(iter(b[4:6]))

    for name, value in _trainable(clean).items():
        got = _trainable(with_bad)[name]
        assert torch.isfinite(got).all(), name
        assert torch.allclose(got, value, rtol=0, atol=1e-6), f"{name}: max diff {(got - value).abs().max()}"
    moments_bad, moments_clean = adam_state(with_bad.optimizer), adam_state(clean.optimizer)
    assert moments_bad.keys() == moments_clean.keys() and moments_clean
    for key, value in moments_clean.items():
        assert torch.allclose(moments_bad[key].float(), value.float(), rtol=0, atol=1e-6), key
    assert with_bad.engine.get_lr() == clean.engine.get_lr()
    assert with_bad.engine.lr_scheduler.last_epoch == clean.engine.lr_scheduler.last_epoch == 2
