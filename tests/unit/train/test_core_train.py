"""The frozen LM stays frozen; the optimizer holds the prefix only; save/resume restores state;
several LM architectures train."""

from __future__ import annotations

import pytest
import torch
import yaml

from frozen_scale.config import load_config
from frozen_scale.model.lm import load_lm
from tests.support.core_fixtures import save_tiny_lm, tiny_config_dict


def make_cfg(tmp_path, lm_dir, shards, **sections):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(lm_dir, shards, tmp_path / "run", **sections)))
    return load_config(path)


def adam_state(optimizer):
    inner = getattr(optimizer, "optimizer", optimizer)
    return {(i, k): v.clone() for i, st in enumerate(inner.state.values()) for k, v in st.items() if torch.is_tensor(v)}


def test_lm_bit_identical_after_training_and_optimizer_holds_prefix_only(tmp_path, tiny_lm_dir, tiny_shards):
    from frozen_scale.distributed.engine import optimizer_param_ids, optimizer_state_bytes
    from frozen_scale.train.trainer import Trainer

    cfg = make_cfg(tmp_path, tiny_lm_dir, tiny_shards, train={"steps": 3, "lr": 1e-2})
    trainer = Trainer(cfg)
    model = trainer.engine.module
    prefix_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainer.fit() == 0
    reference = load_lm(str(tiny_lm_dir))
    for (name, p), (_, q) in zip(model.lm.named_parameters(), reference.named_parameters()):
        assert torch.equal(p.detach(), q.detach()), f"LM parameter {name} changed"
    assert not model.lm.training  # eval mode all along: no dropout in the frozen LM
    assert all(not p.requires_grad for p in model.lm.parameters())
    # the prefix did train
    assert any(not torch.equal(p, model.get_parameter(n)) for n, p in prefix_before.items())
    # the optimizer: exactly the trainable parameters, Adam's two moments each, nothing for the LM
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    assert trainer.param_counts["trainable"] == n_trainable
    assert trainer.param_counts["lm_trainable"] == 0
    held = optimizer_param_ids(trainer.optimizer)
    lm_ids = {id(p) for p in model.lm.parameters()}
    assert not held & lm_ids
    inner_numel = sum(p.numel() for g in getattr(trainer.optimizer, "optimizer", trainer.optimizer).param_groups
                      for p in g["params"])
    # ZeRO-2 flattens them into one partition, padded to an alignment of a few elements
    assert n_trainable <= inner_numel < n_trainable + 16
    assert optimizer_state_bytes(trainer.optimizer) == 2 * 4 * inner_numel  # exp_avg + exp_avg_sq, fp32


def test_save_then_resume_restores_step_weights_optimizer_scheduler(tmp_path, tiny_lm_dir, tiny_shards):
    from frozen_scale.train.checkpoint import committed_steps
    from frozen_scale.train.trainer import Trainer

    cfg = make_cfg(tmp_path, tiny_lm_dir, tiny_shards, train={"steps": 4, "warmup_steps": 2},
                   checkpoint={"every": 2, "keep_last": 3})
    first = Trainer(cfg)
    assert first.fit() == 0
    assert committed_steps(cfg.checkpoint_dir) == [2, 4]
    weights = {n: p.detach().clone() for n, p in first.engine.module.named_parameters() if p.requires_grad}
    moments = adam_state(first.optimizer)
    sched = first.engine.lr_scheduler.state_dict()

    cfg2 = make_cfg(tmp_path, tiny_lm_dir, tiny_shards, train={"steps": 6, "warmup_steps": 2, "resume": "auto"},
                    checkpoint={"every": 2, "keep_last": 3})
    second = Trainer(cfg2)
    assert second.checkpoints.resume_url.endswith("step_00000004")
    state = second.checkpoints.load()
    step, samples, stream = state.step, state.samples, state.stream
    assert step == 4 and samples == 4 * cfg2.train.micro_batch_size
    assert stream.batches == 4
    for n, p in second.engine.module.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), weights[n]), n
    restored = adam_state(second.optimizer)
    assert restored.keys() == moments.keys() and moments
    for key in moments:
        assert torch.equal(restored[key], moments[key]), key
    assert second.engine.lr_scheduler.state_dict()["last_epoch"] == sched["last_epoch"]
    assert second.engine.get_lr() == first.engine.get_lr()


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "opt"])
def test_other_lm_architectures_train_a_step(arch, tmp_path, tiny_shards):
    from frozen_scale.train.trainer import Trainer

    lm_dir = save_tiny_lm(tmp_path / f"lm_{arch}", arch=arch)
    cfg = make_cfg(tmp_path, lm_dir, tiny_shards, train={"steps": 1, "log_every": 1},
                   checkpoint={"every": 0})
    trainer = Trainer(cfg)
    assert trainer.fit() == 0
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert trainer.param_counts["lm_trainable"] == 0


def test_bf16_with_gradient_accumulation_and_no_loader_workers(tmp_path, tiny_lm_dir, tiny_shards):
    from frozen_scale.train.metrics import read_metrics
    from frozen_scale.train.trainer import Trainer

    cfg = make_cfg(tmp_path, tiny_lm_dir, tiny_shards, train={"steps": 2, "precision": "bf16", "grad_accum": 2,
                                                             "log_every": 1}, data={"num_workers": 0},
                   checkpoint={"every": 0})
    trainer = Trainer(cfg)
    assert trainer.fit() == 0
    assert next(trainer.engine.module.prefix.parameters()).dtype == torch.bfloat16
    last = read_metrics(str(tmp_path / "run"))[-1]
    assert last["step"] == 2 and last["samples"] == 2 * 2 * cfg.train.micro_batch_size
    assert torch.isfinite(torch.tensor(last["loss"]))


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (0, "bf16"), (1, "fp32"), (2, "fp32"), (3, "bf16")])
def test_world_size_change_restores_the_optimizer_state(tmp_path, tiny_lm_dir, tiny_shards, stage, precision):
    """The world-size path of a resume (its checkpoint marked as made on 2 ranks) restores what
    optimizer.safetensors holds (fp32 master weights, Adam moments, Adam's step count) into this
    stage's partitions: the state equals the checkpoint's, and the next step is the one an exact
    resume takes from the same batch."""
    import json

    from frozen_scale.distributed.engine import adam_step_count, full_optimizer_state
    from frozen_scale.train.checkpoint import read_optimizer_state
    from frozen_scale.train.trainer import Trainer
    from tests.support.core_fixtures import rewrite_checkpoint_file

    sections = dict(train={"steps": 5, "lr": 1e-2, "warmup_steps": 1, "precision": precision},
                    deepspeed={"stage": stage}, data={"num_workers": 0}, checkpoint={"every": 3, "keep_last": 3})
    assert Trainer(make_cfg(tmp_path, tiny_lm_dir, tiny_shards, **sections)).fit() == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000003"
    saved, saved_step = read_optimizer_state(ckpt / "optimizer.safetensors")
    resume = dict(sections, train={**sections["train"], "resume": str(ckpt)})
    exact = Trainer(make_cfg(tmp_path, tiny_lm_dir, tiny_shards, **resume))
    exact.checkpoints.load()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    rewrite_checkpoint_file(ckpt, "trainer_state.json", json.dumps({**state, "world_size": 2}))
    moved = Trainer(make_cfg(tmp_path, tiny_lm_dir, tiny_shards, **resume))
    assert moved.checkpoints.world_size_changed
    moved.checkpoints.load()

    def held(trainer):
        trainable = [(n, p) for n, p in trainer.engine.module.named_parameters() if p.requires_grad]
        return full_optimizer_state(trainer.optimizer, trainable)

    assert adam_step_count(moved.optimizer) == saved_step == adam_step_count(exact.optimizer)
    restored = held(moved)
    assert restored.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(restored[key], value), key
    batch = next(iter(exact._data(None, 123)))
    for trainer in (exact, moved):
        trainer.engine.train()
        assert trainer.train_step(iter([batch]))
    after_exact, after_moved = held(exact), held(moved)
    for key, value in after_exact.items():
        assert torch.equal(after_moved[key], value), key
    assert moved.engine.get_lr() == exact.engine.get_lr()


@pytest.mark.parametrize("stage", [0, 2])
def test_the_lm_trains_at_its_own_lr_beside_the_prefix(tmp_path, tiny_lm_dir, tiny_shards, stage):
    """model.train_lm with train.lm_lr: the LM's parameters in groups of that lr under the same
    schedule, the prefix's at train.lr; one step moves the LM by lm_lr and the prefix by lr (Adam's
    first step is lr * sign(gradient) for every element with a gradient)."""
    from frozen_scale.train.trainer import Trainer

    cfg = make_cfg(tmp_path, tiny_lm_dir, tiny_shards, model={"train_lm": True},
                   train={"steps": 1, "lr": 1e-2, "lm_lr": 1e-4, "warmup_steps": 0, "min_lr_ratio": 1.0,
                          "grad_clip": 0.0}, deepspeed={"stage": stage})
    trainer = Trainer(cfg)
    model = trainer.engine.module
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert sorted({g["lr"] for g in inner.param_groups}) == [1e-4, 1e-2]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert trainer.fit() == 0
    steps = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    lm_moves = [v for n, v in steps.items() if n.startswith("lm.") and v > 0]
    prefix_moves = [v for n, v in steps.items() if not n.startswith("lm.") and v > 0]
    assert lm_moves and prefix_moves
    assert max(lm_moves) == pytest.approx(1e-4, rel=1e-3) and max(prefix_moves) == pytest.approx(1e-2, rel=1e-3)
