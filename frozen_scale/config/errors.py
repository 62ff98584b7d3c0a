"""The errors a user can fix, said by the `frozen-scale` command in one line with exit code 2."""

from __future__ import annotations

class UserError(Exception):
    """A mistake the user can fix: a bad config value, a missing file or folder, unusable input.
    Raised where the user's input is resolved; the `frozen-scale` command says it in one line
    (once, from rank 0) and exits 2, without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration mistake: an unknown key, a wrong type or value, a missing setting."""


class NotFoundError(UserError, FileNotFoundError):
    """A file, folder, URL or checkpoint the user named does not exist."""


class InputError(UserError, ValueError):
    """Input the user named exists but cannot be used: malformed, empty, or made for another
    model."""
