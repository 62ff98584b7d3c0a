"""`frozen-scale export RUN`: the trained prefix for inference next to the untouched LM.

Writes {out}/prefix.safetensors (vision encoder + prefix mapper), {out}/frozen_vlm.json
(model config and the LM reference: path, cheap identity, full sha256) and the tokenizer. Load it
with `FrozenVLM.from_pretrained(out)` on one machine, no DeepSpeed needed; loading refuses an LM
whose identity differs from the recorded one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from frozen_scale import storage
from frozen_scale.config import NotFoundError, load_config
from frozen_scale.train import checkpoint as ckpt


def export(run_dir: str, out_dir: str | None = None, checkpoint_url: str | None = None) -> str:
    """Export a committed checkpoint (default: the run's newest) into `out_dir` (default RUN/export).

    Written in a temporary folder beside `out_dir`, then moved in file by file (os.replace),
    frozen_vlm.json last: every rank of a multi-rank `eval`/`generate` on a run folder without an
    export may do this at once, and none reads a half-written file."""
    checkpoint_url = ckpt.require_committed(checkpoint_url) if checkpoint_url else newest_checkpoint(run_dir)
    state = storage.read_json(storage.join(checkpoint_url, ckpt.TRAINER_STATE))
    cfg_dict = state["config"]
    out = Path(out_dir or Path(run_dir) / "export")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        storage.get_file(storage.join(checkpoint_url, ckpt.WEIGHTS), str(tmp / "prefix.safetensors"))
        prefix_sha256 = ckpt.integrity.hash_file(tmp / "prefix.safetensors", sync=False)[1]
        meta = {"format": "frozen_scale.export/1", "model": cfg_dict["model"], "lm": state["lm"],
                "prefix_sha256": prefix_sha256,
                "step": state["step"], "checkpoint": checkpoint_url,
                "data": {"prompt": cfg_dict["data"]["prompt"], "max_text_len": cfg_dict["data"]["max_text_len"]}}
        from frozen_scale.model.lm import load_tokenizer

        tokenizer_src = cfg_dict["model"]["tokenizer_path"] or cfg_dict["model"]["lm_path"]
        load_tokenizer(tokenizer_src).save_pretrained(str(tmp / "tokenizer"))
        (tmp / "frozen_vlm.json").write_text(json.dumps(meta, indent=1))
        files = sorted((f for f in tmp.rglob("*") if f.is_file()), key=lambda f: f.name == "frozen_vlm.json")
        for f in files:
            target = out / f.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
    return str(out)


def newest_checkpoint(run_dir: str) -> str:
    """The newest committed checkpoint of the training run in `run_dir`."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise NotFoundError(f"no training run at {run_dir} (no config.yaml): give the run folder of "
                            "`frozen-scale train` (its train.run_dir)")
    cfg = load_config(config)
    checkpoint_url = ckpt.resolve_resume("auto", cfg.checkpoint_dir)
    if checkpoint_url is None:
        raise NotFoundError(f"no committed checkpoint under {cfg.checkpoint_dir}: train the run until it saves "
                            "one (checkpoint.every, or the end of training), or pass --checkpoint")
    return checkpoint_url


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="frozen-scale export", description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="export folder (default RUN/export)")
    parser.add_argument("--checkpoint", default=None, help="a committed checkpoint URL (default: newest)")
    args = parser.parse_args(argv)
    print(export(args.run_dir, args.out, args.checkpoint))
    return 0
