"""The one field checker: a table of values against a frozen dataclass of typed fields.

Configs (`cnnrnn.config`) and model arguments (`cnnrnn.models.registry`) both go through
`check_fields`, so a typo or a wrong type reads the same wherever it is made.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from cnnrnn.errors import ConfigError


def suggest(name: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(key: str, known: list[str], where: str, hint: str = "") -> ConfigError:
    hint = hint or suggest(key, known)
    return ConfigError(f"unknown key {key!r} in {where}{hint}; known keys: {', '.join(known)}")


def check_fields(cls: type, values: Mapping[str, Any], where: str,
                 skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check the names and types of `values` against the fields of the dataclass `cls`.

    Returns the values with ints widened to float where the field is a float. Fields without
    a plain default (nested tables) and the names in `skip` are left to the caller.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise unknown_key(key, sorted(fields), where)
        default = fields[key].default
        if default is dataclasses.MISSING or isinstance(value, Mapping):
            out[key] = value
            continue
        kind = type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        out[key] = value
    return out
