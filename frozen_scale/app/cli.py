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
    frozen-scale config [CONFIG]           every config key (type, default, doc), or a file's resolved values

`frozen-scale --version` prints the version; `frozen-scale COMMAND --help` a command's options.
A mistake the user can fix (a bad config, a missing model folder, shards, run or input file) is
said in one line, by rank 0 only in a multi-rank launch, and every rank exits 2.
"""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> (module, function taking argv); imported lazily so `--help` stays fast.
COMMANDS = {
    "demo": ("frozen_scale.world.demo", "main"),
    "pretrain-lm": ("frozen_scale.world.pretrain_lm", "main"),
    "train": ("frozen_scale.train.run", "main"),
    "export": ("frozen_scale.train.export", "main"),
    "eval": ("frozen_scale.eval.cli", "eval_main"),
    "generate": ("frozen_scale.app.generate", "main"),
    "reproduce": ("frozen_scale.world.reproduce_main", "main"),
    "prep": ("data_prep.cli", "main"),
    "submit": ("launchers.cli", "submit_main"),
    "plan": ("launchers.cli", "plan_main"),
    "config": ("frozen_scale.app.config_cmd", "main"),
}


def _usage() -> str:
    return __doc__.split("\n\n", 1)[1]


def version() -> str:
    """The installed package's version; the source tree's when run from a checkout."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("frozen-scale")
    except PackageNotFoundError:
        from frozen_scale import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: frozen-scale COMMAND [args]\n\n" + _usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"frozen-scale {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        print(f"frozen-scale: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name]
    import frozen_scale.world  # noqa: F401  (registers the built-in world's config sections, prep source, eval items)
    from frozen_scale.config import UserError

    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except UserError as err:
        return _user_error(name, err)


def _user_error(command: str, err: Exception) -> int:
    """Say a user's mistake in one line, once: every rank of a launch meets it alike (the checks
    run on every rank, or rank 0's outcome is shared), so rank 0 speaks and the others leave
    quietly with the same exit code."""
    from frozen_scale.config import ConfigError
    from frozen_scale.constants import EXIT_USER_ERROR

    if os.environ.get("RANK", "0") == "0":
        kind = "config error" if isinstance(err, ConfigError) else "error"
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"frozen-scale {command}: {kind}: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
