"""Run under torchrun by tests/e2e/test_zero3_window.py: load a sharded LM under ZeRO-3 (the trainer's
path: ds_config with the LM's shape, lm_loading_context, load_lm), gather every parameter, compare
with a plain single-process load of the same folder, and write the facts to JSON per rank."""

from __future__ import annotations

import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import frozen_scale.world  # noqa: E402,F401  (registers the world's config sections, which the tests' configs hold)
from frozen_scale.config import load_config  # noqa: E402
from frozen_scale.distributed import engine as dist_engine  # noqa: E402
from frozen_scale.model import lm as lm_lib  # noqa: E402
from frozen_scale.model.shape import lm_shape  # noqa: E402


def main():
    lm_dir, out_path = sys.argv[1], sys.argv[2]
    rank, world_size = dist_engine.init_distributed()
    cfg = load_config(None, [f"model.lm_path={lm_dir}", "deepspeed.stage=3", "train.precision=fp32"])
    ds = dist_engine.ds_config(cfg, world_size, lm_shape(lm_dir))
    with dist_engine.lm_loading_context(ds):
        lm = lm_lib.load_lm(lm_dir)
    partitioned = [n for n, p in lm.named_parameters() if hasattr(p, "ds_id") and p.numel() == 0]
    plain = lm_lib.load_lm(lm_dir)  # no ZeRO-3 config alive: an ordinary whole load
    reference = dict(plain.named_parameters())
    diffs = {}
    for name, param in lm.named_parameters():
        with dist_engine.gathered([param]):
            diffs[name] = float((param.detach() - reference[name].detach()).abs().max())
    with torch.no_grad():
        ids = torch.arange(1, 9).unsqueeze(0)
        plain_logits = plain(input_ids=ids).logits
    result = {"rank": rank, "diffs": diffs, "partitioned": partitioned,
              "tied": lm.get_input_embeddings().weight is lm.get_output_embeddings().weight,
              "plain_tied": plain.get_input_embeddings().weight is plain.get_output_embeddings().weight,
              "training": lm.training, "plain_logits_finite": bool(torch.isfinite(plain_logits).all())}
    with open(f"{out_path}.rank{rank}.json", "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
