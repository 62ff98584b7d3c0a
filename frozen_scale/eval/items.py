"""What the task runner evaluates: items, and the sources that make them on the fly.

An `Item` is one prompt to generate from: a segment list (frozen_scale.data.prompts) ending where
the model should go on, the PIL images of its Image() slots in order, and the accepted answers.
Items come from eval shards (`eval.tasks.shard_items`) or from a registered `ItemSource`, which
makes them for a task without any files (the built-in world registers one): that is what
`frozen-scale eval` evaluates when no --shards are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from frozen_scale.config import InputError


@dataclass
class Item:
    key: str
    segments: list
    images: list
    answers: list[str]
    """Accepted answers (captioning: the reference captions)."""
    meta: dict = field(default_factory=dict)


class ItemSource(Protocol):
    """Items of a task made on the fly, from a seed: the same arguments give the same items."""

    name: str
    splits: tuple[str, ...]
    """The splits `items` takes (`frozen-scale eval --split`)."""
    default_split: str
    """The split evaluated when none is named: held-out items."""
    max_ways: int
    """The most classes a fewshot-cls episode can have."""

    def items(self, task: str, meta: dict, tokenizer, *, seed: int, split: str, n: int, shots: int, ways: int,
              image_size: int) -> list[Item]:
        """`n` items of `task`; `meta` is the export's record, `tokenizer` the LM's (its vocabulary
        may decide how a prompt is written)."""


_SOURCES: dict[str, ItemSource] = {}


def register_item_source(source: ItemSource) -> None:
    """Make `source` known by its name; the first registered is the default."""
    _SOURCES.setdefault(source.name, source)


def item_source(name: str | None = None) -> ItemSource:
    """The registered source `name` (default: the first registered)."""
    if not _SOURCES:
        raise InputError("no item source is registered to make evaluation items: give eval shards (--shards)")
    if name is None:
        return next(iter(_SOURCES.values()))
    if name not in _SOURCES:
        raise InputError(f"no item source '{name}'; registered: {', '.join(_SOURCES)}")
    return _SOURCES[name]
