"""Which statements leave session state behind: the "smart" reset policy.

asyncpg's default pool reset sends ``pg_advisory_unlock_all(); CLOSE ALL;
UNLISTEN *; RESET ALL`` on every release: a round trip per query that costs
about 40% of ``SELECT 1`` throughput. Under the ``smart`` policy a released
connection is reset only when something may have changed its session, as
:func:`session_effect` reads it from the statement's parse tree, built by
PostgreSQL's own parser (libpg_query, through ``pglast``). Comments, quoting,
``U&""`` escapes and schema qualification therefore never hide a statement
or a function name, and a word inside a string literal or a comment is not
mistaken for one.

What each statement leaves behind, and what the pool does about it:

``SEQUENCES`` (the session's ``lastval()`` / ``currval()``)
    a call to ``nextval`` or ``setval``; ``INSERT`` and ``MERGE`` (a serial
    or identity column calls ``nextval`` implicitly), ``COPY ... FROM``,
    ``UPDATE ... SET col = DEFAULT``, ``ALTER TABLE ... ADD COLUMN`` (fills
    existing rows from the column's default).
``RESET``
    ``SET`` and ``RESET`` (session-level, including ``SET ROLE``, ``SET
    SESSION AUTHORIZATION`` and ``SET SESSION CHARACTERISTICS``), ``LISTEN``,
    ``DECLARE ... WITH HOLD``, ``DO``, ``CALL``, ``EXECUTE`` (a prepared
    statement's text is not seen), temporary relations (``CREATE TEMP ...``,
    ``SELECT ... INTO TEMP``) and anything created in the ``pg_temp`` schema,
    and calls anywhere in a statement to ``set_config``,
    ``pg_advisory_lock``, ``pg_advisory_lock_shared``,
    ``pg_try_advisory_lock`` or ``pg_try_advisory_lock_shared``.
``DISCARD`` (the connection is closed: a reset cannot undo it)
    ``PREPARE``, ``DEALLOCATE`` and ``DISCARD`` invalidate asyncpg's prepared
    statements; ``LOAD`` keeps a library loaded; ``dblink_connect`` and
    ``dblink_connect_u`` keep a connection open; ``setseed`` makes the
    session's ``random()`` predictable.

Transaction-scoped state needs nothing: ``SET LOCAL`` (except
``search_path``, under which a plain ``CREATE`` may land in ``pg_temp``),
``SET TRANSACTION``, ``SET CONSTRAINTS``, a cursor without ``WITH HOLD``,
``pg_advisory_xact_lock`` and its variants. A text the parser cannot read
(a syntax error, or syntax newer than the parser's PostgreSQL version) gets
``RESET``; a text of several statements gets the most severe effect of them.

What text cannot show, a server function or trigger that sets session state
internally, needs ``PG_[<DB>_]POOL_RESET=always``.
"""

from __future__ import annotations

import functools
import json
import re
from enum import IntEnum
from typing import Any, Final

from pglast.parser import ParseError, parse_sql_json

__all__ = ["SessionEffect", "reads_sequence_state", "session_effect", "writes_data"]


class SessionEffect(IntEnum):
    """What must happen to a connection after a statement ran on it.

    Ordered by severity: callers keep the worst effect of a lease with ``max``.
    """

    NONE = 0
    #: The session's sequence state (``lastval()``, ``currval()``) was set;
    #: a reset clears it (``DISCARD SEQUENCES`` alone would do).
    SEQUENCES = 1
    #: Session state a reset undoes.
    RESET = 2
    #: Close it: a reset cannot undo what its session now holds.
    DISCARD = 3
    #: Terminate it at once, no I/O: the link failed or a statement may be in flight.
    BROKEN = 4


_NONE, _SEQUENCES, _RESET, _DISCARD = (
    SessionEffect.NONE,
    SessionEffect.SEQUENCES,
    SessionEffect.RESET,
    SessionEffect.DISCARD,
)

#: Functions by their unqualified name, as the parser resolved it (quotes,
#: ``U&`` escapes and comments gone); a schema qualification does not matter.
_FUNCTIONS: Final[dict[str, SessionEffect]] = {
    "nextval": _SEQUENCES,
    "setval": _SEQUENCES,
    "set_config": _RESET,
    # Session-level locks outlive the transaction; the *_xact_* ones do not.
    "pg_advisory_lock": _RESET,
    "pg_advisory_lock_shared": _RESET,
    "pg_try_advisory_lock": _RESET,
    "pg_try_advisory_lock_shared": _RESET,
    "dblink_connect": _DISCARD,
    "dblink_connect_u": _DISCARD,
    "setseed": _DISCARD,
}

#: Statement (and sub-statement) node types whose mere presence decides.
_NODES: Final[dict[str, SessionEffect]] = {
    "InsertStmt": _SEQUENCES,
    "MergeStmt": _SEQUENCES,
    "SetToDefault": _SEQUENCES,
    "ListenStmt": _RESET,
    "DoStmt": _RESET,
    "CallStmt": _RESET,
    "ExecuteStmt": _RESET,
    "LoadStmt": _DISCARD,
    "PrepareStmt": _DISCARD,
    "DeallocateStmt": _DISCARD,
    "DiscardStmt": _DISCARD,
}

#: ``SET`` forms that last only until the end of the transaction.
_TRANSACTION_SETTINGS: Final = frozenset({"TRANSACTION", "TRANSACTION SNAPSHOT"})

_CURSOR_OPT_HOLD: Final = 0x0020  # parsenodes.h

#: Node types the walk looks into beyond :data:`_NODES`.
_INSPECTED: Final = ("VariableSetStmt", "DeclareCursorStmt", "CopyStmt", "AlterTableCmd")

#: Everything the walk can react to, as it appears in the parser's JSON: a
#: node type as a key, a temporary relation, an identifier that is one of
#: :data:`_FUNCTIONS`. (``pg_temp`` is looked for separately.) JSON escapes
#: every quote inside a name or a literal, and a literal is an ``A_Const``
#: node, not a ``String`` one, so text a user wrote inside a literal or a
#: comment never matches. A text without any of these needs nothing, and
#: skips decoding and walking the tree, which cost several times the parse.
_MARKERS: Final = re.compile(
    '"(?:{}|relpersistence":"t|String":{{"sval":"(?:{}))"'.format(
        "|".join((*_NODES, *_INSPECTED)), "|".join(_FUNCTIONS)
    )
)


@functools.lru_cache(maxsize=4096)
def session_effect(query: str) -> SessionEffect:
    """What ``query`` may leave behind in the session. Cached per text.

    Any text the parser cannot read gets ``RESET``.
    """
    try:
        serialized = parse_sql_json(query)
    except (ParseError, ValueError):
        # Unreadable here need not mean unreadable to the server (syntax
        # newer than the parser's), so a reset, to be safe.
        return _RESET
    in_pg_temp = "pg_temp" in serialized
    if not in_pg_temp and _MARKERS.search(serialized) is None:
        return _NONE
    try:
        tree = json.loads(serialized)
    except RecursionError:  # nesting deeper than the JSON decoder goes
        return _RESET
    return _tree_effect(tree, in_pg_temp=in_pg_temp)


def _tree_effect(tree: dict[str, Any], *, in_pg_temp: bool = True) -> SessionEffect:
    """The effect of a whole parse tree (the parser's JSON, decoded): its worst statement's.

    ``in_pg_temp=False`` skips looking for names in ``pg_temp`` (the text has none).
    """
    effect = _NONE
    for raw in tree.get("stmts", ()):
        effect = max(effect, _statement_effect(raw["stmt"], in_pg_temp))
        if effect is _DISCARD:
            break
    return effect


def _statement_effect(stmt: dict[str, Any], in_pg_temp: bool) -> SessionEffect:
    """The effect of one top-level statement: its own kind, then every node in it."""
    ((kind, node),) = stmt.items()
    if kind == "VariableSetStmt":
        # Only at the top level: nested, a SET belongs to ALTER ROLE/DATABASE/
        # FUNCTION ... SET, which does not touch this session.
        effect = _variable_set_effect(node)
    elif kind == "DeclareCursorStmt" and node.get("options", 0) & _CURSOR_OPT_HOLD:
        effect = _RESET  # a cursor without WITH HOLD closes with its transaction
    else:
        effect = _NONE
    return max(effect, _nodes_effect(stmt, in_pg_temp))


def _variable_set_effect(node: dict[str, Any]) -> SessionEffect:
    if node.get("kind") == "VAR_SET_MULTI" and node.get("name") in _TRANSACTION_SETTINGS:
        return _NONE
    if node.get("is_local") and node.get("name") != "search_path":
        return _NONE
    return _RESET


def _nodes_effect(root: dict[str, Any], in_pg_temp: bool) -> SessionEffect:
    """The most severe effect of any node under ``root`` (iterative: trees nest deep)."""
    effect = _NONE
    stack: list[Any] = [root]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if type(item) is list:
            if in_pg_temp and len(item) > 1 and _names_pg_temp(item[0]):
                # A qualified name (function, type, operator, ...) in pg_temp.
                effect = max(effect, _RESET)
            stack.extend(item)
            continue
        if type(item) is not dict:
            continue
        for key, value in item.items():
            found = _NODES.get(key)
            if found is not None:
                effect = max(effect, found)
            elif key == "FuncCall":
                name = value["funcname"][-1].get("String", {}).get("sval")
                effect = max(effect, _FUNCTIONS.get(name, _NONE))
            elif key == "relpersistence":
                # A RangeVar: a temporary relation, or one named in pg_temp.
                if value == "t" or item.get("schemaname", "").startswith("pg_temp"):
                    effect = max(effect, _RESET)
            elif (key == "CopyStmt" and value.get("is_from")) or (
                # ADD COLUMN fills the existing rows from the column's default.
                key == "AlterTableCmd" and value.get("subtype") == "AT_AddColumn"
            ):
                effect = max(effect, _SEQUENCES)
            if type(value) is dict or type(value) is list:
                push(value)
        if effect is _DISCARD:
            break
    return effect


def _names_pg_temp(element: Any) -> bool:
    """Whether a name list's first element is ``pg_temp`` (or the session's ``pg_temp_N``)."""
    if type(element) is not dict:
        return False
    string = element.get("String")
    return type(string) is dict and str(string.get("sval", "")).startswith("pg_temp")


#: Top-level statements that change no data another session could read.
_READ_KINDS: Final = frozenset(
    {
        "SelectStmt",
        "VariableShowStmt",
        "VariableSetStmt",
        "ExplainStmt",
        "DeclareCursorStmt",
        "FetchStmt",
        "ClosePortalStmt",
        "ListenStmt",
        "UnlistenStmt",
        "TransactionStmt",
    }
)
_WRITE_NODES: Final = re.compile(r'"(?:InsertStmt|UpdateStmt|DeleteStmt|MergeStmt|intoClause)"')


@functools.lru_cache(maxsize=4096)
def writes_data(query: str) -> bool:
    """Whether ``query`` may change data that other sessions read (for read-your-writes).

    Reads: SELECT (without INTO, without a data-modifying WITH), SHOW, SET,
    EXPLAIN (not of a write), cursor and transaction control. Everything else,
    and any text the parser cannot read, counts as a write. A function called
    by a SELECT is taken at its word: ``SELECT my_function_that_writes()`` is
    a read here (see docs/replicas.md). Cached per text.
    """
    try:
        serialized = parse_sql_json(query)
    except (ParseError, ValueError):
        return True
    if _WRITE_NODES.search(serialized) is not None:
        return True
    try:
        tree = json.loads(serialized)
    except RecursionError:
        return True
    return any(next(iter(raw["stmt"])) not in _READ_KINDS for raw in tree.get("stmts", ()))


#: ``lastval()`` and ``currval()`` by name in the parser's JSON (see :data:`_MARKERS`).
_READS_SEQUENCES: Final = re.compile(r'"String":\{"sval":"(?:lastval|currval)"')


@functools.lru_cache(maxsize=4096)
def reads_sequence_state(query: str) -> bool:
    """Whether ``query`` calls ``lastval()`` or ``currval()`` (any spelling). Cached per text.

    Text the parser cannot read counts as reading them. A server function
    that calls them inside is not seen (as for every smart-reset verdict).
    """
    try:
        serialized = parse_sql_json(query)
    except (ParseError, ValueError):
        return True
    return _READS_SEQUENCES.search(serialized) is not None
