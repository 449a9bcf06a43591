"""A small YAML emitter, enough for Prometheus rule files (no PyYAML dependency)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["to_yaml"]


def to_yaml(value: Any, indent: int = 0) -> str:
    """A small YAML emitter for dicts, lists, strings, numbers and booleans.

    Strings are written as JSON strings (valid YAML double-quoted scalars),
    so no value is ever misread.
    """
    return "\n".join(_yaml_lines(value, indent)) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _yaml_lines(value: Any, indent: int) -> Iterator[str]:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                yield f"{pad}{key}:"
                yield from _yaml_lines(item, indent + 2)
            else:
                yield f"{pad}{key}: {_scalar(item) if not isinstance(item, dict | list) else '[]'}"
    elif isinstance(value, list):
        for item in value:
            lines = list(_yaml_lines(item, indent + 2))
            if isinstance(item, dict | list) and lines:
                yield f"{pad}- {lines[0].lstrip()}"
                yield from lines[1:]
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield f"{pad}{_scalar(value)}"
