"""Scripted answers and recorded calls: what every fake client shares."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

__all__ = [
    "FakeCall",
    "FakeRecord",
    "Matcher",
    "Result",
    "Scripted",
    "UnscriptedQueryError",
    "rows_of",
    "value_of",
]

Result = Any
Matcher = str | re.Pattern[str]


def _normalise(query: str) -> str:
    return " ".join(query.split())


class FakeRecord:
    """A row that behaves like ``asyncpg.Record``.

    ``row["name"]`` and ``row[0]`` index, ``row[0:2]`` slices to a tuple,
    iterating and unpacking give the values, ``"name" in row`` tests the
    names, ``keys()``/``values()``/``items()``/``get()`` and ``dict(row)``
    work as on a Record.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return self._values[key]
        return tuple(self._values.values())[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values.values())

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FakeRecord):
            return self._values == other._values
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def keys(self) -> Iterator[str]:
        """The column names."""
        return iter(self._values)

    def values(self) -> Iterator[Any]:
        """The values."""
        return iter(self._values.values())

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` pairs."""
        return iter(self._values.items())

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name``, or ``default``."""
        return self._values.get(name, default)

    def __repr__(self) -> str:
        inner = " ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"<FakeRecord {inner}>"


@dataclass(frozen=True)
class FakeCall:
    """One recorded call: ``method`` is ``fetch``, ``execute``, ``begin``, ``commit``, ..."""

    method: str
    query: str = ""
    args: tuple[Any, ...] = ()
    in_transaction: bool = False


@dataclass
class _Script:
    matcher: Matcher
    result: Result
    times: int | None

    def matches(self, query: str) -> bool:
        if isinstance(self.matcher, re.Pattern):
            return self.matcher.search(query) is not None
        return _normalise(self.matcher) == _normalise(query)


class UnscriptedQueryError(AssertionError):
    """A strict fake got a query nobody scripted."""


class Scripted:
    """Mixin of the fakes: ``script()`` answers, ``calls`` records what was done."""

    _scripts: list[_Script]
    calls: list[FakeCall]
    strict: bool

    def _init_scripts(self, strict: bool) -> None:
        self._scripts = []
        self.calls = []
        self.strict = strict

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self.calls)} calls>"

    def script(self, query: Matcher, result: Result, *, times: int | None = None) -> None:
        """Answer ``query`` with ``result`` (``times`` times, or always); latest script wins.

        Raises ``ValueError`` when ``times`` is not a positive count.
        """
        if times is not None and times < 1:
            raise ValueError(f"times must be a positive count or None (always), got {times}")
        self._scripts.insert(0, _Script(query, result, times))

    @property
    def queries(self) -> list[str]:
        """The query texts run so far, in order."""
        return [call.query for call in self.calls if call.query]

    def reset(self) -> None:
        """Forget scripts and recorded calls."""
        self._scripts.clear()
        self.calls.clear()

    def _answer(self, method: str, query: str, args: tuple[Any, ...], in_tx: bool) -> Result:
        self.calls.append(FakeCall(method, query, args, in_tx))
        for script in self._scripts:
            if script.matches(query):
                if script.times is not None:
                    script.times -= 1
                    if script.times == 0:
                        self._scripts.remove(script)
                result = script.result
                if isinstance(result, type) and issubclass(result, BaseException):
                    raise result(f"scripted for {query!r}")
                if callable(result) and not isinstance(result, type):
                    result = result(*args)
                if isinstance(result, BaseException):
                    raise result
                return result
        if self.strict:
            raise UnscriptedQueryError(f"{type(self).__name__}: no script for {query!r}")
        return None


def rows_of(result: Result) -> list[asyncpg.Record]:
    """A scripted result as rows."""
    if result is None:
        return []
    if isinstance(result, Mapping):
        result = [result]
    if not isinstance(result, list):
        raise TypeError(f"a fetch needs rows (a list of dicts) scripted, got {result!r}")
    return [cast(asyncpg.Record, FakeRecord(row)) for row in result]


def value_of(result: Result, column: int) -> Any:
    """A scripted result as one value (``column`` of the first row when rows were scripted)."""
    if isinstance(result, list | Mapping):
        rows = rows_of(result)
        return rows[0][column] if rows else None
    return result
