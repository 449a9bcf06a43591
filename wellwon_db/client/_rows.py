"""Rows as the caller wants them: ``record_class=`` (asyncpg) or ``model=`` (any class).

``record_class`` is asyncpg's own: a subclass of ``asyncpg.Record`` that the
driver builds each row as (no copy). ``model`` maps each row, once it is
read, to an instance of any class whose constructor takes the columns as
keyword arguments: a dataclass, an attrs class, a ``NamedTuple``; a pydantic
model (anything with ``model_validate``) is validated from the row's
mapping, so its coercions and validators apply. Mapping happens after the
call finished, outside the breaker's view: a row that does not fit its
model is the caller's error, not the database's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import asyncpg

from wellwon_db.pool._pool import Connection

__all__ = [
    "check_row_options",
    "fetch_call_for",
    "fetchrow_call_for",
    "map_row",
    "map_rows",
    "mapper",
]

_M = TypeVar("_M")
_Call = Callable[[Connection, str, Any, float | None], Awaitable[Any]]


def check_row_options(model: object, record_class: object) -> None:
    """Raise ``TypeError`` for a ``model`` that is not a class, or both options at once."""
    if model is None:
        return
    if record_class is not None:
        raise TypeError(
            "give record_class (an asyncpg.Record subclass the driver builds rows as) or "
            "model (a class each row is mapped to), not both"
        )
    if not isinstance(model, type):
        raise TypeError(
            f"model must be a class taking the columns as keyword arguments (a dataclass, a "
            f"pydantic model, ...), got {type(model).__name__}"
        )


def mapper(model: type[_M]) -> Callable[[Any], _M]:
    """A function making a ``model`` of one row (see the module docstring)."""
    validate = getattr(model, "model_validate", None)
    if callable(validate):  # pydantic v2: its coercions and validators apply

        def from_mapping(row: Any) -> _M:
            result: _M = validate(dict(row.items()))
            return result

        return from_mapping

    def construct(row: Any) -> _M:
        try:
            return model(**dict(row.items()))
        except TypeError as exc:
            columns = ", ".join(row.keys())
            raise TypeError(
                f"cannot map a row with the columns ({columns}) to {model.__qualname__}: {exc}"
            ) from exc

    return construct


def map_rows(rows: Iterable[Any], model: type[_M]) -> list[_M]:
    """Each of ``rows`` as a ``model``; ``TypeError`` naming the columns when one does not fit."""
    make = mapper(model)
    return [make(row) for row in rows]


def map_row(row: Any, model: type[_M]) -> _M | None:
    """``row`` as a ``model``, or ``None`` when there is no row."""
    return None if row is None else mapper(model)(row)


def fetch_call_for(record_class: type[asyncpg.Record]) -> _Call:
    """``connection.fetch`` building rows as ``record_class``."""

    def call(c: Connection, q: str, a: Any, t: float | None) -> Awaitable[Any]:
        return c.fetch(q, *a, timeout=t, record_class=record_class)

    return call


def fetchrow_call_for(record_class: type[asyncpg.Record]) -> _Call:
    """``connection.fetchrow`` building the row as ``record_class``."""

    def call(c: Connection, q: str, a: Any, t: float | None) -> Awaitable[Any]:
        return c.fetchrow(q, *a, timeout=t, record_class=record_class)

    return call
