"""What counts as the database failing, and the one place it is translated.

Availability failures (refused, reset, shutting down, too many connections,
connection lost) become ``DatabaseUnavailableError`` raised ``from`` the
original; PostgreSQL's errors about the SQL pass through unchanged.

A connection the server refuses for its configuration (credentials, a
certificate that does not verify, TLS refused, a start-up parameter PgBouncer
does not know: ``config._credentials.refusal_of``) becomes
``ConfigurationError`` naming the database, the server and the variable to
fix: no retry can fix it, so it is neither retried nor counted by a breaker.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from wellwon_db.config._credentials import ConnectSources, RecentlyRefused, Refusal, refusal_of
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import (
    CircuitOpenError,
    ConfigurationError,
    DatabaseUnavailableError,
    WrongEventLoopError,
)

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
    sources: ConnectSources | None = None,
) -> BaseException:
    """Map a connection-level failure to ``DatabaseUnavailableError``; others unchanged.

    A refused connection becomes ``ConfigurationError``; ``sources`` says
    where the database's password and TLS settings come from (else the
    message names all the candidates). ``TimeoutError`` (a command timeout)
    and PostgreSQL errors about the SQL itself are returned as they are. The
    caller raises the result ``from exc``.
    """
    refusal = refusal_of(exc)
    if refusal is not None:
        return _refused(refusal, exc, sources or ConnectSources.generic(database), where)
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
    return isinstance(exc, _UNAVAILABLE) and refusal_of(exc) is None


#: OpenSSL's verification results (X509_V_ERR_*) for a CA the client does not trust.
_UNKNOWN_CA: Final = frozenset({2, 18, 19, 20, 21})
_HOST_MISMATCH: Final = frozenset({62, 64})


def _refused(
    refusal: Refusal, exc: BaseException, sources: ConnectSources, where: str
) -> ConfigurationError:
    """The ``ConfigurationError`` of a refused connection: what failed, what to fix, where."""
    database = sources.database
    variable = sources.dsn_variable
    if refusal.kind == "authentication":
        what = "refused the login"
        fix = (
            f"the password comes from {sources.password}: correct it there or the role's "
            "password on the server (or the server's pg_hba.conf)"
        )
        variable = sources.password_variable
    elif refusal.kind == "certificate":
        tls = sources.tls
        what = f"presented a TLS certificate that did not verify (sslmode={tls.sslmode})"
        code = refusal.verify_code
        if code in _UNKNOWN_CA:
            fix = (
                "it is not signed by a CA the client trusts: the CA comes from "
                f"{sources.sslrootcert}; set it to the CA that signed the server's certificate"
            )
            variable = sources.sslrootcert_variable
        elif code in _HOST_MISMATCH:
            fix = (
                f"it is not valid for the host name in {sources.dsn_variable}: connect by a "
                "name the certificate lists (verify-full checks it), or renew the certificate"
            )
        elif code == 10:
            fix = "it has expired: renew the server's certificate"
        elif code == 9:
            fix = "it is not valid yet: check the clocks, or the certificate's start date"
        elif code is None:
            what = "refused the client certificate during the TLS handshake"
            fix = "check the client certificate and key against the server's CA"
        else:
            fix = "see the detail below"
    elif refusal.kind == "tls":
        what = "refused TLS"
        fix = (
            f"turn TLS on at the server, or lower sslmode (now {sources.tls.sslmode}, from "
            f"{sources.tls.origin})"
        )
        variable = sources.sslmode_variable
    elif refusal.kind == "startup_parameter":
        what = "(PgBouncer) refused a start-up parameter"
        fix = (
            f"read-only sessions ({sources.read_only_variable}=true) send "
            "default_transaction_read_only: list it in PgBouncer's track_extra_parameters "
            f"(PgBouncer 1.20 or later), or set {sources.read_only_variable}=false and make the "
            "role read-only on the server (ALTER ROLE ... SET default_transaction_read_only = on)"
            if "default_transaction_read_only" in refusal.detail
            else f"the server is PgBouncer: set {sources.pgbouncer_variable}=true"
        )
        variable = sources.read_only_variable
    else:
        what = "could not be connected with these settings"
        fix = f"check {sources.dsn_variable} and the TLS settings"
    again = (
        f"; refused moments ago, next attempt in {exc.retry_in:.1f}s"
        if isinstance(exc, RecentlyRefused)
        else ""
    )
    return ConfigurationError(
        f"the {database} database ({where}) {what}: {fix}. "
        f"{refusal.error}: {refusal.detail.rstrip('.')}{again}. "
        "Not retried: a configuration error, not an outage",
        env_var=variable,
    )


def _safe_message(exc: BaseException) -> str:
    # asyncpg's connection errors carry host/port, never the password; be sure.
    return str(exc).replace("\n", " ")[:300] or "no detail"
