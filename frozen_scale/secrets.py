"""Secrets are passed by reference (the name of an environment variable, a Kubernetes Secret),
never by value: this module says what looks like one and masks it in whatever the project writes.

A name looks secret when one of its parts (split on `_`, `-`, `.`) is SECRET, TOKEN, PASSWORD,
PASSWD, CREDENTIAL(S) or APIKEY, when it holds ACCESS_KEY, API_KEY, PRIVATE_KEY, SECRET_KEY or
AUTH_KEY, or when it is exactly `key`, `secret`, `token` or `password` (fsspec's storage options).
`image_key` or `max_new_tokens` do not. A URL's password (`scheme://user:PASSWORD@host`) is
masked too.
"""

from __future__ import annotations

import re

MASK = "***"
_PARTS = {"SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS", "APIKEY"}
_HOLDS = ("ACCESS_KEY", "API_KEY", "PRIVATE_KEY", "SECRET_KEY", "AUTH_KEY")
_EXACT = {"KEY", "SECRET", "TOKEN", "PASSWORD"}
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):(?P<password>[^/@\s]+)@")


def looks_secret(name: str) -> bool:
    upper = str(name).upper().replace("-", "_")
    if upper in _EXACT or any(hold in upper for hold in _HOLDS):
        return True
    return any(part in _PARTS for part in re.split(r"[_.]", upper))


def redact_text(text: str) -> str:
    """`text` with every URL password masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", text)


def redact(value):
    """A copy of a config-like value (dicts, lists, strings) with the values of secret-looking keys
    and URL passwords masked."""
    if isinstance(value, dict):
        return {k: (MASK if looks_secret(k) and isinstance(v, (str, int, float)) and v != "" else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value
