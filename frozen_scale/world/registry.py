"""What the world registers with the library, without importing more than it must: the config
sections (plain dataclasses), the `frozen-scale prep synthetic` command and the eval item source,
whose modules (numpy, PIL, torch, the tokenizer) are imported when first used, so that importing
the world costs the commands that never touch it nothing."""

from __future__ import annotations

import argparse

from data_prep.generated import Generator, register_generator
from frozen_scale.config import register_section
from frozen_scale.eval.items import register_item_source
from frozen_scale.world.config import LMPretrainConfig, WorldConfig


def _prep_arguments(parser: argparse.ArgumentParser) -> None:
    from frozen_scale.world.shards import add_prep_arguments

    add_prep_arguments(parser)


def _prep_source(args: argparse.Namespace):
    from frozen_scale.world.shards import world_source

    return world_source(seed=args.seed, split=args.split, count=args.count)


class _WorldItemsWhenUsed:
    """The world's item source (`world.items.WORLD_ITEMS`), imported at its first use."""

    name = "world"

    def __getattr__(self, attr: str):
        from frozen_scale.world.items import WORLD_ITEMS

        return getattr(WORLD_ITEMS, attr)


def register() -> None:
    register_section("world", WorldConfig)
    register_section("lm_pretrain", LMPretrainConfig)
    register_generator(Generator("synthetic", "the built-in shapes world", _prep_arguments, _prep_source))
    register_item_source(_WorldItemsWhenUsed())
