"""What counts as the database failing, and the one place it is translated.

Availability failures (refused, reset, shutting down, too many connections,
connection lost) become ``DatabaseUnavailableError`` raised ``from`` the
original; PostgreSQL's errors about the SQL pass through unchanged.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import CircuitOpenError, DatabaseUnavailableError, WrongEventLoopError

__all__ = ["is_availability_failure", "translate_error", "wrong_loop_error"]


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
    if type(exc) is RuntimeError and _OTHER_LOOP in str(exc):
        return wrong_loop_error(database)
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


#: asyncio's words for a future awaited from another loop than its own.
_OTHER_LOOP: Final = "attached to a different loop"


def wrong_loop_error(database: DatabaseName) -> WrongEventLoopError:
    """The pool of ``database`` was used from another event loop than the one it was opened on."""
    return WrongEventLoopError(
        f"the {database} database's pool was used from another event loop than the one it "
        "was opened on: asyncio connections belong to one loop. Open the pools "
        "(start_databases, database_lifespan) in the loop that runs the calls, and use each "
        "container from that loop (one container per thread or process that runs a loop)",
        database=str(database),
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
