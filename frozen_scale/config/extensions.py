"""Top-level config sections that a package above the library adds (the built-in world adds
`world` and `lm_pretrain`): the library reads none of them, so it does not define them.

    register_section("world", WorldConfig)   # once, when the adding package is imported

A registered section is read, checked and written like the library's own; `cfg.world` returns
it. A config naming a section that no imported package registered is refused like any unknown key.
"""

from __future__ import annotations

import dataclasses

_SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> None:
    """Add the top-level section `name`, read as dataclass `cls`. Registering the same pair again
    does nothing; another class under a taken name, or a non-dataclass, is a programming error."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"section '{name}' must be a dataclass, got {cls!r}")
    held = _SECTIONS.get(name)
    if held is not None and held is not cls:
        raise ValueError(f"config section '{name}' is already registered as {held.__qualname__}")
    _SECTIONS[name] = cls


def registered_sections() -> dict[str, type]:
    """{name: dataclass} of every registered section, in registration order."""
    return dict(_SECTIONS)
