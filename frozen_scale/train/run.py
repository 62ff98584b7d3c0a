"""`frozen-scale train CONFIG [section.key=value ...]` on every rank of a launch."""

from __future__ import annotations

import argparse
import os
import sys

from frozen_scale.config import load_config

EXIT_CONFIG = 2  # as for a configuration error (see frozen_scale.app.cli)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="frozen-scale train", description=__doc__)
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from frozen_scale.model.lm import ModelNotFoundError
    from frozen_scale.train.trainer import train

    try:
        return train(cfg)
    except ModelNotFoundError as err:  # raised on every rank alike; said once
        if os.environ.get("RANK", "0") == "0":
            print(f"frozen-scale train: {err}", file=sys.stderr)
        return EXIT_CONFIG
