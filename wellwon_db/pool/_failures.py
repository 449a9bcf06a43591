"""What counts as the database failing, and the one place it is translated.

Availability failures (refused, reset, shutting down, too many connections,
connection lost) become ``DatabaseUnavailableError`` raised ``from`` the
original; PostgreSQL's errors about the SQL pass through unchanged.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import CircuitOpenError, DatabaseUnavailableError

__all__ = ["is_availability_failure", "translate_error"]


#: Errors that mean the database (not the SQL) failed: refused, reset,
#: shutting down, too many connections, connection lost mid-statement.
_UNAVAILABLE: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionDoesNotExistError,
    # Raised before any I/O when a connection's protocol is in a state it
    # cannot leave, e.g. the server terminated it while idle and asyncpg has
    # not yet seen the end of the stream.
    asyncpg.InternalClientError,
)


def translate_error(
    exc: BaseException,
    database: DatabaseName,
    where: str,
    *,
    may_have_run: bool = True,
    during_commit: bool = False,
) -> BaseException:
    """Map a connection-level failure to ``DatabaseUnavailableError``; others unchanged.

    ``TimeoutError`` (a command timeout) and PostgreSQL errors about the SQL
    itself are returned as they are. ``database`` is the database's name. The
    caller raises the result ``from exc``.
    """
    if isinstance(exc, TimeoutError) or not isinstance(exc, _UNAVAILABLE):
        return exc
    if isinstance(exc, asyncpg.InternalClientError):
        may_have_run = False
    return DatabaseUnavailableError(
        f"the {database} database is unavailable ({where}): "
        f"{type(exc).__name__}: {_safe_message(exc)}",
        database=str(database),
        may_have_run=may_have_run,
        during_commit=during_commit,
    )


def is_availability_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database (not the SQL) failed: what a breaker counts.

    Unavailable errors, timeouts, and untranslated connection-level errors
    count; errors of the SQL and cancellation do not. (The client does not
    report a pool timeout to the breaker at all: see ``record_outcome``.)
    """
    if isinstance(exc, DatabaseUnavailableError | TimeoutError):
        return not isinstance(exc, CircuitOpenError)
    return isinstance(exc, _UNAVAILABLE)


def _safe_message(exc: BaseException) -> str:
    # asyncpg's connection errors carry host/port, never the password; be sure.
    return str(exc).replace("\n", " ")[:300] or "no detail"
