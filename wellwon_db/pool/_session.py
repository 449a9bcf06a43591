"""Which statements leave session state behind: the "smart" reset policy.

asyncpg's default pool reset sends ``pg_advisory_unlock_all(); CLOSE ALL;
UNLISTEN *; RESET ALL`` on every release: a round trip per query that costs
about 40% of ``SELECT 1`` throughput. Under the ``smart`` policy a released
connection is reset only when something may have changed its session:

* a statement whose text changes session state (``SET``, ``RESET``,
  ``LISTEN``, ``DECLARE``, ``DO``, ``CALL``, temporary tables, session
  advisory locks, ``set_config``), seen by :func:`session_effect`;
* a connection handed out raw by ``acquire()``: anything may have been done;
* an open transaction, which asyncpg rolls back on every release anyway.

Statements that invalidate asyncpg's own prepared statements (``PREPARE``,
``DEALLOCATE``, ``DISCARD``) close the connection instead of resetting it.

What text cannot show, a server function that sets session state
internally, needs ``PG_[<DB>_]POOL_RESET=always``.
"""

from __future__ import annotations

import functools
import re
from enum import IntEnum

__all__ = ["SessionEffect", "session_effect"]


class SessionEffect(IntEnum):
    """What must happen to a connection after a statement ran on it."""

    NONE = 0
    RESET = 1
    #: Close it: its session invalidated asyncpg's prepared statements.
    DISCARD = 2
    #: Terminate it at once, no I/O: the link failed or a statement may be in flight.
    BROKEN = 3


# Statement starts: the beginning of the text or after ';', past blanks and comments.
_START = r"(?:^|;)(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
_RESET_STATEMENTS = re.compile(
    _START
    + r"(?:SET|RESET|LISTEN|DECLARE|DO|CALL|LOAD"
    + r"|CREATE\s+(?:OR\s+REPLACE\s+)?(?:GLOBAL\s+|LOCAL\s+)?TEMP(?:ORARY)?)\b",
    re.IGNORECASE | re.DOTALL,
)
_RESET_ANYWHERE = re.compile(
    r"\b(?:set_config|pg_(?:try_)?advisory_lock(?:_shared)?|dblink_connect(?:_u)?)\s*\("
    r"|\bINTO\s+(?:LOCAL\s+|GLOBAL\s+)?TEMP(?:ORARY)?\b",
    re.IGNORECASE,
)
_DISCARD_STATEMENTS = re.compile(
    _START + r"(?:PREPARE|DEALLOCATE|DISCARD)\b", re.IGNORECASE | re.DOTALL
)


@functools.lru_cache(maxsize=4096)
def session_effect(query: str) -> SessionEffect:
    """What ``query`` may leave behind in the session. Cached per text.

    Errs towards ``RESET``: a word in a string literal may cost a needless
    reset, never a leak.
    """
    if _DISCARD_STATEMENTS.search(query):
        return SessionEffect.DISCARD
    if _RESET_STATEMENTS.search(query) or _RESET_ANYWHERE.search(query):
        return SessionEffect.RESET
    return SessionEffect.NONE
