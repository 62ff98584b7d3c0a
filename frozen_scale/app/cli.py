"""`frozen-scale` entry point: one subcommand per job, each implemented in its own module.

    frozen-scale demo                      the embedded default, end to end
    frozen-scale pretrain-lm CONFIG        step 1 on the built-in world: a tiny LM learns the text
    frozen-scale train CONFIG [k=v ...]    prefix training (launch under torchrun/deepspeed for >1 rank)
    frozen-scale export RUN                trained prefix -> safetensors + config + LM reference
    frozen-scale eval RUN --task ...       captioning, VQA, few-shot protocols
    frozen-scale generate RUN --image F    caption an image, or answer a prompt (--attention: where it looked)
    frozen-scale reproduce                 the paper's ablation on the built-in world
    frozen-scale prep ...                  data_prep: corpora -> webdataset shards (Ray)
    frozen-scale submit CONFIG             cluster submission (SLURM, Ray, torchrun, k8s)
    frozen-scale plan CONFIG               per-GPU memory plan
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function taking argv); imported lazily so `--help` stays fast.
COMMANDS = {
    "demo": ("frozen_scale.app.demo", "main"),
    "pretrain-lm": ("frozen_scale.train.pretrain_lm", "main"),
    "train": ("frozen_scale.train.run", "main"),
    "export": ("frozen_scale.train.export", "main"),
    "eval": ("frozen_scale.eval.cli", "eval_main"),
    "generate": ("frozen_scale.app.generate", "main"),
    "reproduce": ("frozen_scale.app.reproduce", "main"),
    "prep": ("data_prep.cli", "main"),
    "submit": ("launchers.cli", "submit_main"),
    "plan": ("launchers.cli", "plan_main"),
}


def _usage() -> str:
    return __doc__.split("\n\n", 1)[1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: frozen-scale COMMAND [args]\n\n" + _usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        print(f"frozen-scale: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name]
    from frozen_scale.config import ConfigError

    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except ConfigError as err:
        print(f"frozen-scale {name}: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
