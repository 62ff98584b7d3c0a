"""Sources that make their samples instead of reading them, and the registry of the commands
that build them (`frozen-scale prep NAME`).

A `GeneratedSource` numbers rows like any source; each row carries the function that makes its
sample (`make(row, image_size) -> (key, PIL image, caption, meta)`), a module-level function,
which Ray ships to its workers by name. The sample's image is encoded like a fetched one's; meta
goes into the sample's .json. A package above the library (the built-in world) defines the
maker and registers its prep command with `register_generator`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

KIND = "generated"


class GeneratedSource:
    """`count` rows for `make`; `params` (JSON values) are in every row and in job.json's source."""

    kind = KIND

    def __init__(self, name: str, make: Callable, count: int, params: dict):
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.name, self.make, self.count, self.params = name, make, count, dict(params)

    def describe(self) -> dict:
        return {"type": self.name, **self.params, "count": self.count}

    def rows(self) -> Iterator[dict]:
        for i in range(self.count):
            yield {"row": i, "key": None, "kind": KIND, "make": self.make, "index": i, **self.params}


@dataclass(frozen=True)
class Generator:
    """A `frozen-scale prep NAME` command: its help, its arguments and the source they build."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace], GeneratedSource]
    image_size: int = 32
    """The default --image-size of the command."""


_GENERATORS: dict[str, Generator] = {}


def register_generator(generator: Generator) -> None:
    _GENERATORS.setdefault(generator.name, generator)


def generators() -> dict[str, Generator]:
    """{name: Generator} of the registered commands, in registration order."""
    return dict(_GENERATORS)
