"""COPY through the guarded path: one :class:`CopyCall` per COPY, run like any statement.

A client's COPY goes through ``run_guarded`` (breaker, pool, command
timeout, telemetry, error translation, retry of a failure before anything
was sent); a transaction scope's through its own statement path. What those
paths see as "the query" is the ``COPY`` statement asyncpg sends, written
out by :func:`copy_statement` (without the format options): it gives the
span and metric their ``db.query.summary`` (``COPY orders``) and the pool's
reset policy its verdict (``COPY ... FROM`` may call ``nextval``).

COPY is never retried once it may have reached the server: the records (an
iterator, a file) may be partly consumed, and output partly written.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pglast.keywords import RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

from wellwon_db.client._listener import quote_identifier
from wellwon_db.pool._pool import Connection

__all__ = [
    "COPY_IN_OPTIONS",
    "COPY_OUT_OPTIONS",
    "CopyCall",
    "copy_call",
    "copy_from_query",
    "copy_from_table",
    "copy_records_to_table",
    "copy_statement",
    "copy_to_table",
]

#: asyncpg's format options of ``copy_from_table`` and ``copy_from_query``.
COPY_OUT_OPTIONS: Final = frozenset(
    {"format", "oids", "delimiter", "null", "header", "quote", "escape", "force_quote", "encoding"}
)
#: ... and of ``copy_to_table``.
COPY_IN_OPTIONS: Final = COPY_OUT_OPTIONS | {"freeze", "force_not_null", "force_null", "where"}

#: Keywords that cannot name a table or column unquoted (the others can: ``name``, ``int``).
_KEYWORDS: Final = frozenset(RESERVED_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS)
_PLAIN: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_$")

Records = Iterable[Sequence[object]] | AsyncIterable[Sequence[object]]


def _name(identifier: str) -> str:
    # Written bare when PostgreSQL reads it back unchanged, so the summary says
    # ``COPY orders`` as a query naming the table would; quoted otherwise.
    if (
        identifier
        and identifier[0] not in "0123456789$"
        and set(identifier) <= _PLAIN
        and identifier not in _KEYWORDS
    ):
        return identifier
    return quote_identifier(identifier)


def copy_statement(
    table_name: str,
    schema_name: str | None,
    columns: Iterable[str] | None,
    direction: str,
) -> str:
    """``COPY [schema.]table [(columns)] FROM STDIN`` (or ``TO STDOUT``), every name quoted safely.

    Raises ``ValueError`` for an empty name or one holding a NUL character.
    """
    target = _name(table_name)
    if schema_name:
        target = f"{_name(schema_name)}.{target}"
    names = ", ".join(_name(column) for column in columns or ())
    if names:
        target = f"{target} ({names})"
    return f"COPY {target} {direction}"


@dataclass(frozen=True, slots=True)
class CopyCall:
    """One COPY: the asyncpg method, its arguments, and the statement the paths see.

    Truth value: whether the statement carries bind arguments (only
    ``copy_from_query`` with ``args``); without them, telemetry records the
    statement's text with its literals masked.
    """

    method: str
    statement: str
    arguments: tuple[Any, ...]
    options: Mapping[str, Any]
    bound: bool = False

    def __bool__(self) -> bool:
        return self.bound


def copy_call(c: Connection, q: str, a: CopyCall, t: float | None) -> Awaitable[str]:
    """Run ``a`` on ``c`` (the statement path's call; ``q`` is ``a.statement``)."""
    method = getattr(c, a.method)
    result: Awaitable[str] = method(*a.arguments, timeout=t, **a.options)
    return result


def _checked(options: Mapping[str, Any], allowed: frozenset[str], method: str) -> dict[str, Any]:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"{method}() got unknown COPY options {', '.join(unknown)}; "
            f"known: {', '.join(sorted(allowed))}"
        )
    return {name: value for name, value in options.items() if value is not None}


def copy_records_to_table(
    table_name: str,
    records: Records,
    columns: Sequence[str] | None,
    schema_name: str | None,
    where: str | None,
) -> CopyCall:
    """The COPY of ``records`` (tuples, or an async iterable of them) into a table."""
    options: dict[str, Any] = {"records": records, "columns": columns, "schema_name": schema_name}
    if where is not None:
        options["where"] = where
    return CopyCall(
        "copy_records_to_table",
        copy_statement(table_name, schema_name, columns, "FROM STDIN"),
        (table_name,),
        options,
    )


def copy_to_table(
    table_name: str,
    source: Any,
    columns: Sequence[str] | None,
    schema_name: str | None,
    options: Mapping[str, Any],
) -> CopyCall:
    """The COPY of ``source`` (a path, a file, an async iterable of bytes) into a table."""
    return CopyCall(
        "copy_to_table",
        copy_statement(table_name, schema_name, columns, "FROM STDIN"),
        (table_name,),
        {
            "source": source,
            "columns": columns,
            "schema_name": schema_name,
            **_checked(options, COPY_IN_OPTIONS, "copy_to_table"),
        },
    )


def copy_from_table(
    table_name: str,
    output: Any,
    columns: Sequence[str] | None,
    schema_name: str | None,
    options: Mapping[str, Any],
) -> CopyCall:
    """The COPY of a table to ``output`` (a path, a file, an async function taking bytes)."""
    return CopyCall(
        "copy_from_table",
        copy_statement(table_name, schema_name, columns, "TO STDOUT"),
        (table_name,),
        {
            "output": output,
            "columns": columns,
            "schema_name": schema_name,
            **_checked(options, COPY_OUT_OPTIONS, "copy_from_table"),
        },
    )


def copy_from_query(
    query: str, args: tuple[Any, ...], output: Any, options: Mapping[str, Any]
) -> CopyCall:
    """The COPY of ``query``'s rows to ``output``."""
    return CopyCall(
        "copy_from_query",
        f"COPY ({query}) TO STDOUT",
        (query, *args),
        {"output": output, **_checked(options, COPY_OUT_OPTIONS, "copy_from_query")},
        bound=bool(args),
    )
