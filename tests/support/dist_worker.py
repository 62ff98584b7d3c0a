"""Run under torchrun by the tests: build the real Trainer, do one forward/backward on a fixed
global batch split over the ranks, write loss, prefix gradients and memory facts to JSON."""

from __future__ import annotations

import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402

from frozen_scale.config import load_config  # noqa: E402
from frozen_scale.data import prompts  # noqa: E402
from frozen_scale.data.loader import to_tensor, word_targets  # noqa: E402
from frozen_scale.world import scenes# noqa: E402

GLOBAL_BATCH = 4

_gathered_max = [0]
_Gathered = deepspeed.zero.GatheredParameters


class CountingGathered(_Gathered):
    """Records the most parameter elements materialised by one gather (instrumentation)."""

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        plist = params if isinstance(params, (list, tuple)) else [params]
        n = sum(getattr(p, "ds_numel", p.numel()) for p in plist if p is not None)
        _gathered_max[0] = max(_gathered_max[0], n)


def fixed_batch(tokenizer, k, image_size, rank, world_size, words=False):
    drawn = [scenes.make_scene(123, "eval", i) for i in range(GLOBAL_BATCH)]
    per = GLOBAL_BATCH // world_size
    mine = drawn[rank * per:(rank + 1) * per]
    enc = [prompts.encode([prompts.Image(), prompts.Text("caption :"), prompts.Text(scenes.caption(s), target=True)],
                          tokenizer, k) for s in mine]
    # pad to the global max length so every configuration sees identical tensors
    width = max(len(prompts.encode([prompts.Image(), prompts.Text("caption :"),
                                    prompts.Text(scenes.caption(s), target=True)], tokenizer, k).input_ids)
                for s in drawn)
    batch = prompts.pad_batch(enc, tokenizer.pad_token_id)
    pad = width - batch["input_ids"].shape[1]
    if pad:
        batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, pad), value=tokenizer.pad_token_id)
        batch["labels"] = torch.nn.functional.pad(batch["labels"], (0, pad), value=prompts.IGNORE)
        batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, pad), value=0)
    batch["pixel_values"] = torch.stack([to_tensor(scenes.render(s, image_size), [0.5] * 3, [0.5] * 3) for s in mine])
    if words:
        batch["prefix_targets"] = word_targets(tokenizer, [scenes.caption(s) for s in mine], k)
    return batch


def main():
    config_path, out_path = sys.argv[1], sys.argv[2]
    overrides = sys.argv[3:]
    deepspeed.zero.GatheredParameters = CountingGathered
    from frozen_scale.distributed import engine as dist_engine

    dist_engine.deepspeed.zero.GatheredParameters = CountingGathered
    from frozen_scale.train.trainer import Trainer

    cfg = load_config(config_path, overrides)
    trainer = Trainer(cfg)
    gathered_during_load = _gathered_max[0]
    model = trainer.engine.module
    batch = fixed_batch(trainer.tokenizer, cfg.model.prefix_length, cfg.model.vision.image_size,
                        trainer.rank, trainer.world_size, words=cfg.model.prefix_kind == "words")
    loss = trainer.engine(**batch)
    trainer.engine.backward(loss)
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            g = dist_engine.full_grad(p)
            grads[name] = g.flatten().tolist() if g is not None else None
    mean_loss = dist_engine.all_reduce_sum(float(loss)) / trainer.world_size
    lm_total = sum(getattr(p, "ds_numel", p.numel()) for p in model.lm.parameters())
    opt_ids = dist_engine.optimizer_param_ids(trainer.optimizer)
    result = {
        "rank": trainer.rank, "world_size": trainer.world_size, "stage": cfg.deepspeed.stage,
        "loss": mean_loss, "grads": grads,
        "lm_total_numel": lm_total, "lm_local_numel": trainer.lm_local_numel,
        "max_gathered_numel_during_load": gathered_during_load,
        "lm_params_in_optimizer": sum(id(p) in opt_ids for p in model.lm.parameters()),
    }
    with open(f"{out_path}.rank{trainer.rank}.json", "w") as fh:
        json.dump(result, fh)
    dist_engine.shutdown()


if __name__ == "__main__":
    main()
