"""The tables a query reads, from PostgreSQL's own parse tree: what a cached result depends on.

Only a single ``SELECT`` (``WITH`` included, no ``INTO``, no data-modifying
``WITH``, no row locks) qualifies. Names are the parser's (unquoted,
case-folded as the server folds them), without the schema: invalidation
notifications carry the table's name only, so a change to any table of that
name invalidates (more than needed, never less). Common table expressions
are not tables. A query that reads through a set-returning function in
``FROM`` (whose reads the text cannot show) has no determinable tables.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Final

from pglast.parser import ParseError, parse_sql_json

__all__ = ["UNDETERMINED", "tables_read"]

#: What :func:`tables_read` gives when the tables cannot be told from the text.
UNDETERMINED: Final[frozenset[str]] = frozenset()

_OPAQUE: Final = frozenset({"RangeFunction", "RangeTableFunc", "RangeTableSample"})
_WRITES: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


@functools.lru_cache(maxsize=4096)
def tables_read(query: str) -> frozenset[str]:
    """The tables ``query`` reads, or :data:`UNDETERMINED` (empty) when it cannot be told.

    Empty for anything but one plain ``SELECT``, for text the parser cannot
    read, and for reads through a function in ``FROM``. Cached per text.
    """
    try:
        tree = json.loads(parse_sql_json(query))
    except (ParseError, ValueError, RecursionError):
        return UNDETERMINED
    statements = tree.get("stmts", ())
    if len(statements) != 1:
        return UNDETERMINED
    ((kind, select),) = statements[0]["stmt"].items()
    if kind != "SelectStmt" or select.get("intoClause") or select.get("lockingClause"):
        return UNDETERMINED
    tables: set[tuple[str, str]] = set()
    ctes: set[str] = set()
    stack: list[Any] = [select]
    while stack:
        item = stack.pop()
        if type(item) is list:
            stack.extend(item)
            continue
        if type(item) is not dict:
            continue
        for key, value in item.items():
            if key in _OPAQUE or key in _WRITES:
                return UNDETERMINED
            if key == "CommonTableExpr":
                ctes.add(value["ctename"])
            elif key == "RangeVar":
                tables.add((value.get("schemaname", ""), value["relname"]))
            elif key == "lockingClause":
                return UNDETERMINED
            if type(value) is dict or type(value) is list:
                stack.append(value)
    names = frozenset(name for schema, name in tables if schema or name not in ctes)
    return names or UNDETERMINED
