"""``db.query.summary``: a low-cardinality summary of a query, from PostgreSQL's parse tree.

Following the OpenTelemetry database conventions: the operations and their
targets in the order the query gives them, ``{operation} {target} ...``
(``SELECT dc_customs``, ``INSERT shipping_details SELECT orders``,
``SELECT SELECT orders customers`` for a subquery in ``FROM``), at most 255
characters, never cut inside a name. No literal, parameter or other dynamic
part ever appears. Targets are written as the query writes them
(``"Orders"``, ``Public.accounts``); operations in upper case, as the parse
tree names them (a tree does not keep the keywords' spelling). A ``WITH``
query lists its common table expressions first, as written. Text the
parser cannot read has no summary: nothing is guessed from it.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Final

from pglast.parser import ParseError, parse_sql_json

__all__ = ["MAX_SUMMARY", "query_summary"]

MAX_SUMMARY: Final = 255

#: Statements whose operation the tree names exactly.
_OPERATIONS: Final = {
    "SelectStmt": "SELECT",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CopyStmt": "COPY",
    "CallStmt": "CALL",
    "DoStmt": "DO",
    "VariableSetStmt": "SET",
    "VariableShowStmt": "SHOW",
    "TruncateStmt": "TRUNCATE",
    "ListenStmt": "LISTEN",
    "NotifyStmt": "NOTIFY",
    "ExplainStmt": "EXPLAIN",
}
_TRANSACTION_KINDS: Final = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "BEGIN",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}
_FIRST_WORD: Final = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL)


@functools.lru_cache(maxsize=4096)
def query_summary(query: str) -> str:
    """The summary of ``query`` (cached per text); ``""`` when nothing can be said."""
    try:
        tree = json.loads(parse_sql_json(query))
    except (ParseError, ValueError, RecursionError):
        return ""
    parts: list[str] = []
    encoded = query.encode()  # the tree's locations are byte offsets
    for raw in tree.get("stmts", ()):
        stmt = raw["stmt"]
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len") or len(encoded) - start
        _walk(stmt, parts, encoded[start : start + length].decode(errors="replace"), encoded)
    return _truncate(parts)


class _Operation(str):
    """An operation put on the walk's stack to be emitted after a WITH clause."""

    __slots__ = ()


def _walk(stmt: dict[str, Any], parts: list[str], text: str, query: bytes) -> None:
    """Operations and targets of one top-level statement, in the order they appear.

    The tree's keys follow the grammar's field order, which follows the text
    closely enough for a summary (target list, then FROM, then WHERE); a
    WITH clause, last in the tree, is walked first.
    """
    stack: list[Any] = [stmt]
    while stack:
        item = stack.pop()
        if type(item) is _Operation:
            parts.append(item)
            continue
        if type(item) is list:
            stack.extend(reversed(item))
            continue
        if type(item) is not dict:
            continue
        if "relname" in item:  # a RangeVar, wrapped as a node or as a typed field
            parts.append(_name(item, query))
            continue
        children: list[Any] = []
        for key, value in item.items():
            operation = _operation(key, value, text)
            if operation is not None:
                if key == "CallStmt":
                    parts.extend((operation, _function_name(value)))
                    continue
                if type(value) is dict and value.get("withClause"):
                    rest = {k: v for k, v in value.items() if k != "withClause"}
                    children.extend((value["withClause"], _Operation(operation), rest))
                    continue
                parts.append(operation)
            if type(value) is dict or type(value) is list:
                children.append(value)
        stack.extend(reversed(children))


def _operation(key: str, node: Any, text: str) -> str | None:
    if not key[:1].isupper():
        return None  # a field (selectStmt), not a node type
    if key == "SelectStmt" and node.get("valuesLists"):
        return None  # VALUES: data, not an operation
    if key == "TransactionStmt":
        return _TRANSACTION_KINDS.get(node.get("kind", ""), "TRANSACTION")
    operation = _OPERATIONS.get(key)
    if operation is not None:
        return operation
    if key.endswith("Stmt") and text:
        # A utility statement (CREATE, ALTER, GRANT, ...): its own first word.
        match = _FIRST_WORD.match(text)
        return match.group(1).upper() if match else None
    return None


def _name(range_var: dict[str, Any], query: bytes) -> str:
    """The relation as the query writes it; from the tree when its location is unknown."""
    location = range_var.get("location")
    if isinstance(location, int) and location >= 0:
        written = _WRITTEN_NAME.match(query[location : location + 1024].decode(errors="ignore"))
        if written:
            return ".".join(_IDENT_PART.findall(written.group(0)))
    parts = [range_var.get("schemaname"), range_var.get("relname")]
    return ".".join(_identifier(str(part)) for part in parts if part)


_IDENT: Final = r'(?:"(?:[^"]|"")*"|[^\W\d][\w$]*)'
_WRITTEN_NAME: Final = re.compile(_IDENT + r"(?:\s*\.\s*" + _IDENT + r")*")
_IDENT_PART: Final = re.compile(_IDENT)


def _identifier(name: str) -> str:
    """A name as SQL would need it written: quoted unless plain lowercase."""
    return name if _PLAIN.match(name) else '"' + name.replace('"', '""') + '"'


_PLAIN: Final = re.compile(r"^[a-z_][a-z0-9_$]*$")


def _function_name(call: dict[str, Any]) -> str:
    names = call.get("funccall", {}).get("funcname", [])
    return ".".join(str(part.get("String", {}).get("sval", "")) for part in names)


def _truncate(parts: list[str]) -> str:
    summary = ""
    for part in parts:
        candidate = f"{summary} {part}" if summary else part
        if len(candidate) > MAX_SUMMARY:
            break
        summary = candidate
    return summary
