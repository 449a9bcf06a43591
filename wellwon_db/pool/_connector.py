"""Connections of one pool: how they are opened, checked, reset and closed.

:class:`Connector` holds what every connection of a pool shares (DSN,
settings, the server's address for messages) and does the I/O on single
connections; which connection to open or close is decided elsewhere
(``_slots.py``). Failures to connect are translated here, once.

Connections are opened *without* asyncpg's per-statement command timeout:
asyncpg arms a loop timer for every statement, which costs about as much as
the rest of the pool's per-call work on uvloop. Single statements run by
the clients are watched by the pool instead (a coarse watchdog that cancels
overdue ones through asyncpg's own cancellation, so the server cancels them
too); a connection lent for arbitrary use (a raw ``acquire()``, a
transaction) gets asyncpg's timeout back for the lease
(:func:`use_driver_timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final, TypeAlias
from urllib.parse import urlsplit

import asyncpg

from wellwon_db.config._credentials import ConnectParams
from wellwon_db.config._policies import PoolConfig
from wellwon_db.errors import DatabaseUnavailableError
from wellwon_db.pool._failures import translate_error

if TYPE_CHECKING:
    from wellwon_db.pool._slots import Holder

__all__ = [
    "RESET_SQL",
    "Connection",
    "Connector",
    "PooledConnection",
    "close_or_terminate",
    "use_driver_timeout",
]

logger = logging.getLogger("wellwon_db.pool")

#: What a lease hands out: an asyncpg connection owned by the pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

#: What a reset undoes: what DISCARD ALL does except deallocating prepared
#: statements and dropping their plans, which asyncpg's statement cache uses.
RESET_SQL: Final = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


if TYPE_CHECKING:
    _ConnectionBase = asyncpg.Connection[asyncpg.Record]
else:
    _ConnectionBase = asyncpg.Connection


class PooledConnection(_ConnectionBase):
    """The asyncpg connection class of our pools: its reset is :data:`RESET_SQL`.

    asyncpg's public ``Connection.reset()`` first clears asyncpg's own
    session bookkeeping (listeners, log listeners, the open-transaction
    marker) and rolls back, then runs :meth:`get_reset_query`. ``holder``
    is the pool's record of the connection (psycopg_pool keeps its state on
    the connection the same way).
    """

    __slots__ = ("holder",)

    holder: Holder[Connection] | None

    def get_reset_query(self) -> str:
        """The statements that undo a session's state."""
        return RESET_SQL


def holder_of(connection: Connection) -> Holder[Connection] | None:
    """The pool's record of ``connection``, or ``None`` for a connection not opened by a pool."""
    holder: Holder[Connection] | None = getattr(connection, "holder", None)
    return holder


def use_driver_timeout(connection: Connection, seconds: float | None) -> None:
    """Make asyncpg time every statement of ``connection`` out after ``seconds`` (``None``: off).

    asyncpg reads the default of its ``timeout`` arguments from the
    connection's configuration on every statement; this replaces that one
    field. (asyncpg keeps it in a private attribute; pinned by
    ``tests/test_pool_watchdog.py``.)
    """
    config = connection._config  # type: ignore[attr-defined]
    if config.command_timeout != seconds:
        connection._config = config._replace(command_timeout=seconds)  # type: ignore[attr-defined]


class Connector:
    """Opens, checks, resets and closes the connections of one pool."""

    def __init__(
        self, name: str, dsn: str, config: PoolConfig, params: ConnectParams | None = None
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.config = config
        #: Password (file or provider), TLS and server settings of the connections.
        self.params = params or ConnectParams(dsn)
        self.address = urlsplit(dsn).netloc.rpartition("@")[2] or "localhost"
        # asyncpg's connection configuration without and with its command timeout.
        self._configs: tuple[object, object] | None = None

    async def connect(self) -> Connection:
        """Open one connection; ``DatabaseUnavailableError`` when the server cannot be reached.

        The connection has no asyncpg command timeout (see the module docs).
        """
        config = self.config
        # Server settings, JSON codec and init hook, the same for every connection.
        prepare = config.preparation
        try:
            connection: Connection = await self.params.connect(
                timeout=config.connect_timeout,
                command_timeout=None,
                # PgBouncer in transaction mode cannot keep named prepared statements.
                statement_cache_size=0 if config.pgbouncer else config.statement_cache_size,
                server_settings={
                    **prepare.server_settings,
                    "application_name": config.application_name,
                },
                connection_class=PooledConnection,
            )
            if prepare.runs_anything:
                try:
                    await prepare(connection)
                except BaseException:
                    connection.terminate()  # half set up: never pooled
                    raise
        except BaseException as exc:
            error = self.connect_error(exc)
            if error is exc:
                raise
            raise error from exc
        return connection

    def connect_error(self, exc: BaseException) -> BaseException:
        """Translate a failure to open a connection."""
        if isinstance(exc, TimeoutError):
            return DatabaseUnavailableError(
                f"the {self.name} database at {self.address} did not answer "
                f"within the connect timeout of {self.config.connect_timeout:g}s",
                database=self.name,
                may_have_run=False,
            )
        return translate_error(
            exc,
            self.name,
            f"connecting to {self.address}",
            may_have_run=False,
            sources=self.params.sources,
        )

    def driver_timeout(self, connection: Connection, on: bool) -> None:
        """Switch asyncpg's own command timeout of ``connection`` on (raw use) or off.

        Every connection of the pool has the same configuration, so the two
        variants are made once and then only swapped: every transaction
        switches twice, and a namedtuple's ``_replace`` costs a microsecond.
        """
        config = connection._config  # type: ignore[attr-defined]
        variants = self._configs
        if variants is None or config not in variants:
            timeout = self.config.command_timeout or None
            variants = self._configs = (
                config._replace(command_timeout=None),
                config._replace(command_timeout=timeout),
            )
        connection._config = variants[on]  # type: ignore[attr-defined]

    async def ping(self, connection: Connection) -> bool:
        """One round trip within the connect timeout; ``False`` on any failure.

        ``SELECT 1``, not an empty query: asyncpg fails on the server's
        EmptyQueryResponse to a simple query. A statement cancellation still
        in progress on the connection is waited out first (within the same
        timeout), so a connection that answers is fit for reuse.
        """
        try:
            await connection.execute("SELECT 1", timeout=self.config.connect_timeout)
        except (TimeoutError, Exception):
            logger.debug("a %s connection failed its check", self.name, exc_info=True)
            return False
        return True

    async def reset(self, connection: Connection) -> None:
        """Roll back, clear asyncpg's session bookkeeping, run :data:`RESET_SQL`.

        Bounded by the command timeout (``TimeoutError``).
        """
        async with asyncio.timeout(self.config.command_timeout or None):
            if connection.is_in_transaction():
                await connection.execute("ROLLBACK")  # quietly, whoever began it
            await connection.reset()

    async def cancel_statements(self, connections: list[Connection], timeout: float) -> None:
        """Ask the server to cancel whatever each connection is running (a cancel request).

        A cancel request goes on a short-lived connection of its own with the
        backend's key, as asyncpg sends it when a statement's caller is
        cancelled; it takes no connection slot on the server, and PgBouncer
        forwards it to the server connection in use. Bounded by ``timeout``.
        """
        loop = asyncio.get_running_loop()
        sent: list[asyncio.Future[None]] = []
        for connection in connections:
            if connection.is_closed():
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            with contextlib.suppress(Exception):
                # asyncpg's own cancellation path (what a cancelled statement uses).
                connection._cancel_current_command(waiter)  # type: ignore[attr-defined]
                sent.append(waiter)
        if sent:
            await asyncio.wait(sent, timeout=timeout)

    async def terminate_on_server(self, pids: list[int], timeout: float) -> list[int]:
        """End the server backends ``pids`` if they are still there; those still alive after.

        Run once the pool's own connections are closed, on a short-lived
        connection of its own (so the server never sees more than
        ``max_size`` of ours). Backends that left by themselves are not
        touched; the others get ``pg_terminate_backend`` (allowed for
        backends of the same role), which also ends their transactions and
        releases their locks. Not for PgBouncer, whose backend ids are its own.
        """
        if not pids:
            return []
        deadline = time.monotonic() + timeout
        try:
            connection = await asyncpg.connect(
                self.dsn,
                timeout=max(min(self.config.connect_timeout, timeout), 0.1),
                statement_cache_size=0,
                server_settings={"application_name": f"{self.config.application_name} (close)"},
            )
        except Exception as exc:
            logger.warning(
                "could not check on the %s server that the closed pool's backends ended: %r",
                self.name,
                exc,
            )
            return pids
        try:
            return await _end_backends(connection, pids, self.config.application_name, deadline)
        except Exception as exc:
            logger.warning("could not end the %s pool's backends: %r", self.name, exc)
            return pids
        finally:
            connection.terminate()


# The application name as well as the pid: a pid freed meanwhile may be another client's.
_OURS: Final = "FROM pg_stat_activity WHERE pid = ANY($1::int[]) AND application_name = $2"
_TERMINATE_SQL: Final = f"SELECT count(pg_terminate_backend(pid)) {_OURS}"
_ALIVE_SQL: Final = f"SELECT array_agg(pid) {_OURS}"


async def _end_backends(
    connection: Connection, pids: list[int], name: str, deadline: float
) -> list[int]:
    """Terminate the backends among ``pids`` still there and wait (to ``deadline``) until gone."""
    remaining = max(deadline - time.monotonic(), 0.1)
    await connection.fetchval(_TERMINATE_SQL, pids, name, timeout=remaining)
    while True:
        remaining = deadline - time.monotonic()
        alive: list[int] = list(
            await connection.fetchval(_ALIVE_SQL, pids, name, timeout=max(remaining, 0.1)) or []
        )
        if not alive or remaining <= 0:
            return alive
        # The signal is asynchronous: a terminated backend leaves within milliseconds.
        await asyncio.sleep(0.01)


async def close_or_terminate(connection: Connection, timeout: float) -> None:
    """Close politely within ``timeout`` seconds; terminate when that fails or no time is left."""
    if timeout <= 0:
        connection.terminate()
        return
    try:
        await connection.close(timeout=timeout)
    except BaseException:
        connection.terminate()
        raise
