"""``db.query.text`` of a query sent without parameters: every literal replaced by ``?``.

Literals are found by PostgreSQL's own lexer (through pglast): strings of
every kind (``'...'``, ``E'...'``, ``$tag$...$tag$``), numbers, bit and hex
strings; comments are dropped. Parameterised text (``$1``) is recorded as
it is, as the OpenTelemetry conventions say: its literals are the
application's choice.
Text the lexer cannot read is not recorded (``None``).
"""

from __future__ import annotations

import functools
from typing import Final

from pglast.parser import ParseError, scan

__all__ = ["sanitize"]

_LITERALS: Final = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENTS: Final = frozenset({"C_COMMENT", "SQL_COMMENT"})


@functools.lru_cache(maxsize=4096)
def sanitize(query: str) -> str | None:
    """``query`` with each literal replaced by ``?``; ``None`` when it cannot be lexed."""
    try:
        tokens = scan(query)
    except (ParseError, ValueError):
        return None
    # Token offsets count characters (inclusive end). Comments can hold
    # anything, so they go too.
    pieces: list[str] = []
    position = 0
    for token in tokens:
        pieces.append(query[position : token.start])
        if token.name in _COMMENTS:
            pieces.append(" ")
        elif token.name in _LITERALS:
            pieces.append("?")
        else:
            pieces.append(query[token.start : token.end + 1])
        position = token.end + 1
    return "".join(pieces).strip()
