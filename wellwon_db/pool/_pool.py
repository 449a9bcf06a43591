"""One connection pool per server endpoint: its lifecycle.

:class:`DatabasePool` owns a pool's lifecycle state and, composed, the
parts that own the rest: the :class:`~._leases.Leases` that lend
connections (whose slot machine, ``_slots.py``, decides), the
:class:`~._upkeep.Upkeep` that runs the background tasks, and the
:class:`~._connector.Connector` that does the I/O on single connections.
This module opens the pool (start-up wait, or an offline start) and closes
it (drain; past the deadline, what still runs is cancelled and ended on the
server; in a forked child, abandoned). ``docs/architecture.md`` draws the whole.

Connection-level failures are translated into wellwon_db's errors by
``_failures.translate_error``; PostgreSQL's own errors pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast
from urllib.parse import SplitResult, urlsplit

from wellwon_db.config._credentials import ConnectParams
from wellwon_db.config._dsn import redact_dsn
from wellwon_db.config._policies import PoolConfig, TelemetryConfig
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import DatabaseUnavailableError, PoolClosedError
from wellwon_db.pool import _fork
from wellwon_db.pool._backoff import Backoff
from wellwon_db.pool._capacity import check_capacity
from wellwon_db.pool._connector import Connection, Connector, close_or_terminate
from wellwon_db.pool._leases import Leases
from wellwon_db.pool._raw import acquire_connection, lent, release_connection
from wellwon_db.pool._session import SessionEffect
from wellwon_db.pool._slots import TRACKED, Stage
from wellwon_db.pool._upkeep import Upkeep
from wellwon_db.telemetry._stats import PoolStats
from wellwon_db.telemetry._telemetry import PoolTelemetry, register_pool, unregister_pool

__all__ = ["Connection", "DatabasePool", "PoolState"]

logger = logging.getLogger("wellwon_db.pool")

#: Past the drain deadline: how long holders get to hand back connections
#: whose statements were just cancelled, before the rest are terminated.
_CANCEL_GRACE = 0.5


class PoolState(enum.Enum):
    """Lifecycle of a :class:`DatabasePool`. Moves forward only."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port or 5432
    except ValueError:
        return None


class DatabasePool:
    """An asyncpg pool bound to one database and its :class:`PoolConfig`.

    No I/O in the constructor: :meth:`open` connects ``min_size`` connections
    and :meth:`close` closes them. ``async with DatabasePool(...)`` does both.
    Using a pool that is not open raises :class:`PoolClosedError`. Clients
    lend connections through :attr:`leases`.
    """

    def __init__(
        self,
        database: DatabaseName,
        dsn: str,
        config: PoolConfig,
        *,
        telemetry: TelemetryConfig | None = None,
        connect: ConnectParams | None = None,
    ) -> None:
        if config.database != database:
            raise ValueError(
                f"PoolConfig of the {config.database} database given for the {database} database"
            )
        self._database = database
        self._name = str(database)
        self._dsn = dsn
        self._config = config
        self._state = PoolState.NEW
        #: Open, but the server has not answered since start-up.
        self._offline = False
        self._closed: asyncio.Future[None] | None = None
        #: A forked child keeps the parent's connections referenced, never closed.
        self._abandoned: list[Connection] = []
        parts = urlsplit(dsn)
        single_host = "," not in parts.netloc
        self.telemetry = PoolTelemetry(
            self._name,
            host=parts.hostname if single_host else None,
            port=_port(parts) if single_host else None,
            namespace=parts.path.lstrip("/") or None,
            pool_name=config.application_name,
            slow_query=(telemetry or TelemetryConfig()).slow_query,
        )
        self._connector = Connector(self._name, dsn, config, connect or ConnectParams(dsn))
        #: Lending and taking back connections: the per-call path clients use.
        self.leases = Leases(
            self._name,
            config,
            self._connector,
            self.telemetry,
            refused=self._not_serving_error,
            below_min=self._refill_soon,
            connected=self._on_connected,
        )
        self._upkeep = Upkeep(self._name, config, self.leases)

    # -- description ---------------------------------------------------------

    @property
    def database(self) -> DatabaseName:
        """The logical database this pool serves."""
        return self._database

    @property
    def config(self) -> PoolConfig:
        """The pool settings in force."""
        return self._config

    @property
    def state(self) -> PoolState:
        """Where the pool is in its lifecycle."""
        return self._state

    @property
    def address(self) -> str:
        """``host:port`` of the server (never the credentials)."""
        return self._connector.address

    @property
    def opened_in_this_process(self) -> bool:
        """False in a process forked after the pool opened: its connections are the parent's."""
        return not self._forked()

    def __repr__(self) -> str:
        return (
            f"<DatabasePool {self._name} {redact_dsn(self._dsn)} "
            f"{self._state.value} size={self._config.min_size}..{self._config.max_size}>"
        )

    # -- connections, for direct use -------------------------------------------

    async def acquire_connection(self, *, timeout: float | None = None) -> Connection:
        """Take a connection; hand it back with :meth:`release_connection`.

        Waits at most ``timeout`` seconds (default: the pool's acquire
        timeout), then ``PoolTimeoutError``; ``DatabaseUnavailableError``
        when a new connection cannot be made; ``PoolClosedError`` when the
        pool is not open. asyncpg's command timeout applies to its statements.
        """
        return await acquire_connection(self.leases, timeout)

    async def release_connection(
        self, connection: Connection, effect: SessionEffect = SessionEffect.NONE
    ) -> None:
        """Return ``connection``, first undoing what ``effect`` says it left behind.

        A connection too old, used ``max_queries`` times or unfit for reuse
        is closed instead. While the pool drains, connections still come
        back to it. A second release of one lease raises asyncpg's
        ``InterfaceError``.
        """
        await release_connection(self.leases, connection, effect)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A raw connection for the block; fully reset when it comes back.

        The connection is asyncpg's; anything may be done with it, so its
        session is always reset on release. Using it after the block raises
        asyncpg's ``InterfaceError``.
        """
        leases = self.leases
        holder = leases.lease_nowait() or await leases.lease(time.monotonic())
        async with lent(leases, holder) as connection:
            yield connection

    # -- errors ------------------------------------------------------------------

    def _not_serving_error(self) -> Exception:
        """Why calls are refused now: forked, offline, not open yet, or closed."""
        if self._forked():
            return PoolClosedError(
                f"the {self._name} pool was opened before this process was forked; its "
                "connections belong to the parent and cannot be used here. Open pools after "
                "forking (in each worker's start-up or lifespan, not at import time or with "
                "gunicorn --preload), or call stop_databases() then start_databases() in the "
                "child",
                database=self._name,
            )
        if self._state is PoolState.OPEN and self._offline:
            return DatabaseUnavailableError(
                f"the {self._name} database at {self.address} has not answered "
                "since start-up; connecting in the background",
                database=self._name,
                may_have_run=False,
            )
        if self._state is PoolState.NEW or self._state is PoolState.OPENING:
            what = "has not been opened yet; start the container's resources first"
        else:
            what = "is closed; get a new client after starting the container again"
        return PoolClosedError(
            f"the {self._name} database pool {what} (wellwon_db.start_databases(container))",
            database=self._name,
        )

    def _closed_while_opening(self) -> PoolClosedError:
        return PoolClosedError(
            f"the {self._name} pool was closed while it was opening; nothing it opened stays open",
            database=self._name,
        )

    def _forked(self) -> bool:
        return self.leases.generation != _fork.generation

    # -- open ----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect ``min_size`` connections, waiting up to ``startup_wait`` for the server.

        While the server refuses or is still starting, attempts repeat with
        backoff for ``startup_wait`` seconds. Then, if the database is
        required, ``DatabaseUnavailableError`` is raised and nothing stays
        open; if not, the pool opens empty, its calls fail fast, and it
        connects in the background as soon as the server answers.
        ``PoolClosedError`` when called twice, or when :meth:`close` was
        called while it was opening (what it had opened is closed again).
        """
        if self._state is not PoolState.NEW:
            raise PoolClosedError(
                f"the {self._name} pool was already opened ({self._state.value}); "
                "create a new DatabasePool instead of reopening one",
                database=self._name,
            )
        self._state = PoolState.OPENING
        self.leases.generation = _fork.generation
        offline = False
        try:
            await self._connect_within(self._config.startup_wait)
            if self._config.capacity_check != "off" and self._state is PoolState.OPENING:
                await self._check_capacity()
        except BaseException as exc:
            self._upkeep.drop_all()
            if self._state is not PoolState.OPENING:  # close() ran meanwhile
                raise self._closed_while_opening() from exc
            if not isinstance(exc, DatabaseUnavailableError) or self._config.startup_required:
                self._state = PoolState.CLOSED
                raise
            logger.warning(
                "starting without the %s database (%s); connecting in the background",
                self._name,
                exc,
            )
            offline = True
        if self._state is not PoolState.OPENING:
            self.leases.finish()
            raise self._closed_while_opening()
        self._state = PoolState.OPEN
        self._offline = offline
        self.leases.serving = not offline
        self._upkeep.start(offline=offline, answered=self._answered)
        register_pool(self)
        logger.debug("opened %r", self)

    async def _check_capacity(self) -> None:
        """Compare what all workers may open with the server's free connection slots."""
        config = self._config
        if config.pgbouncer:
            return  # the server's slots are PgBouncer's to share, not ours
        idle = self.leases.slots.idle
        if idle:  # one of the pool's own, so the question adds no backend
            await check_capacity(cast("Connection", idle[-1].connection), config, self._name)
            return
        # min_size 0: a connection of its own (outside the slots), closed after it.
        connection = await self._connector.connect()
        try:
            await check_capacity(connection, config, self._name)
        finally:
            with contextlib.suppress(Exception):
                await close_or_terminate(connection, config.command_timeout)

    async def _connect_within(self, wait: float) -> None:
        """Open ``min_size`` connections (all or none), retrying for ``wait`` seconds."""
        deadline = time.monotonic() + wait
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                await self._upkeep.fill(self._config.min_size)
                return
            except DatabaseUnavailableError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                await asyncio.sleep(min(backoff.next_delay(), left))

    def _answered(self) -> None:
        """The server of a pool opened offline answered: serve."""
        self._offline = False
        self.leases.serving = self._state is PoolState.OPEN

    # The Leases' hooks, bound before the Upkeep exists.
    def _refill_soon(self) -> None:
        self._upkeep.refill_soon()

    def _on_connected(self) -> None:
        self._upkeep.connected()

    # -- close -----------------------------------------------------------------

    async def check_reachable(self) -> None:
        """Open one connection to the server and close it; raise what connecting raises.

        A reachability check for a database believed down (its breaker open):
        it takes no slot and hands nothing out.
        """
        connection = await self._connector.connect()
        try:
            await connection.close(timeout=self._config.connect_timeout)
        except Exception:
            connection.terminate()

    async def close(self, timeout: float | None = None) -> None:
        """Drain, then close: stop handing out connections, wait for in-flight work.

        Work holding a connection gets ``timeout`` seconds (default: the
        ``drain_timeout`` setting) to give it back. Past that, nothing of
        the pool is left running on the server: statements still running
        are cancelled (a cancel request), holders get a moment to hand their
        connections back, the rest are terminated and their holders (task
        names) logged, and the server is asked to end any of their backends
        still there (not behind PgBouncer, whose backends are its own; it
        closes them when their client goes). So a shutdown never hangs on a
        leaked connection, nor leaves its locks held. In a process forked
        after the pool opened, the inherited connections belong to the
        parent: they are abandoned without a word to the server. Closing a
        closed pool does nothing; a second ``close()`` during the drain
        waits for the first; closing an opening one makes its :meth:`open` fail.
        """
        if self._state is PoolState.CLOSED:
            return
        if self._state is PoolState.CLOSING:
            if self._closed is not None:
                await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        if timeout is None:
            timeout = self._config.drain_timeout
        deadline = time.monotonic() + timeout
        opening = self._state is PoolState.OPENING
        self._state = PoolState.CLOSING
        leases = self.leases
        leases.stop()
        if self._forked():
            self._abandon()
            return
        stragglers: list[int] = []
        try:
            await self._upkeep.stop()
            if opening:
                return  # open() sees the state and closes what it opened
            if leases.releasing and timeout > 0:
                # Releases of cancelled callers still settling: let them finish.
                await asyncio.wait(set(leases.releasing), timeout=timeout)
            if not await leases.wait_drained(deadline):
                self._log_stragglers(timeout)
                stragglers = await self._cancel_stragglers()
            await self._close_idle(max(deadline - time.monotonic(), 0.0))
        finally:
            leases.finish()  # what is left is terminated here
            if stragglers and not self._config.pgbouncer:
                await self._end_on_server(stragglers)
            self._state = PoolState.CLOSED
            if not self._closed.done():
                self._closed.set_result(None)
            unregister_pool(self)
            logger.debug("closed %r", self)

    async def _cancel_stragglers(self) -> list[int]:
        """Past the drain deadline: cancel what still runs; the backends still busy after.

        A cancel request ends a running statement on the server (a client
        closing its socket does not: the backend notices only when it next
        talks to the client). Holders whose statement was cancelled usually
        hand their connection back at once; those still busy after a short
        grace are terminated by :meth:`close`, and their backend ids are
        returned so the server can be asked to end them.
        """
        busy = [h.connection for h in self.leases.slots.busy() if h.connection is not None]
        if not busy:
            return []
        grace = min(self._config.connect_timeout, _CANCEL_GRACE)
        await self._connector.cancel_statements(busy, grace)
        await self.leases.wait_drained(time.monotonic() + grace)
        return [
            h.connection.get_server_pid()
            for h in self.leases.slots.busy()
            if h.connection is not None
        ]

    async def _end_on_server(self, pids: list[int]) -> None:
        """Make sure the backends of terminated connections are gone, ending those still there."""
        timeout = max(self._config.connect_timeout, 1.0)
        left = await self._connector.terminate_on_server(pids, timeout)
        if left:
            logger.warning(
                "the %s server still shows %d backends of the closed pool after %.1fs: %s",
                self._name,
                len(left),
                timeout,
                left,
                extra={"database": self._name, "pids": left},
            )

    async def _close_idle(self, timeout: float) -> None:
        slots = self.leases.slots
        idle = list(slots.idle)
        for holder in idle:
            slots.retire(holder)
        results = await asyncio.gather(
            *(close_or_terminate(cast("Connection", h.connection), timeout) for h in idle),
            return_exceptions=True,
        )
        del results  # failures were terminated; the slots end either way
        for holder in idle:
            slots.closed(holder)

    def _log_stragglers(self, timeout: float) -> None:
        holders = self.leases.straggler_names(time.monotonic())
        if not holders and not self.leases.releasing:
            return  # timed out with nothing in use (a drain timeout of 0)
        logger.warning(
            "the %s pool did not drain within %.1fs: %d connections still in use are "
            "cancelled and terminated; held by: %s",
            self._name,
            timeout,
            len(holders),
            ", ".join(holders) or "unknown",
            extra={"database": self._name, "holders": holders},
        )

    def _abandon(self) -> None:
        """Drop a parent's connections in a forked child without touching them."""
        logger.warning(
            "the %s pool was opened in a parent process; abandoning it in this forked child "
            "(its connections belong to the parent)",
            self._name,
        )
        # Never closed here: closing would end the parent's sessions. Kept
        # referenced so that garbage collection does not close them either.
        for holder in self.leases.slots.abandon():
            if holder.connection is not None:
                self._abandoned.append(holder.connection)
        self._upkeep.abandon()
        self.leases.releasing.clear()
        self._state = PoolState.CLOSED
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        unregister_pool(self)

    async def __aenter__(self) -> DatabasePool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- stats ---------------------------------------------------------------

    def get_stats(self) -> PoolStats:
        """A snapshot with stable keys, for telemetry and health (see :class:`PoolStats`)."""
        leases = self.leases
        slots = leases.slots
        size = idle = 0
        for holder in slots.holders:
            # Connections the server or the network closed count as gone at once.
            if holder.stage in TRACKED and not cast("Connection", holder.connection).is_closed():
                size += 1
                idle += holder.stage is Stage.IDLE
        return {
            "database": self._name,
            "state": self._state.value,
            "min_size": self._config.min_size,
            "max_size": self._config.max_size,
            "size": size,
            "idle": idle,
            "in_use": size - idle,
            "waiting": slots.waiting,
            "reserved": slots.count - idle,
            "acquired": leases.acquired,
            "timeouts": leases.waiters.timeouts,
            "connections_opened": slots.opened_total,
            "connections_retired": slots.retired_total,
            "resets": leases.resets,
            "validations_failed": leases.validations_failed,
        }
