"""`frozen-scale train CONFIG [section.key=value ...]` on every rank of a launch."""

from __future__ import annotations

import argparse

from frozen_scale.config import load_config


def main(argv: list[str]) -> int:
    """Train; a mistake the user can fix (a missing model folder or shards) is raised on every
    rank alike as a `UserError`, which the command line says once."""
    parser = argparse.ArgumentParser(prog="frozen-scale train", description=__doc__)
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from frozen_scale.train.trainer import train

    return train(cfg)
