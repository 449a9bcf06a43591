"""One connection pool per database: lifecycle (open, start-up, housekeeping, drain, fork).

The pool owns asyncpg connections directly; handing them out and taking them
back is in ``_leases.py``.

Connection-level failures are translated into wellwon_db's errors by
``_failures.translate_error``; PostgreSQL's own errors pass through unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from wellwon_db.config._dsn import redact_dsn
from wellwon_db.config._policies import PoolConfig, TelemetryConfig
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    PoolClosedError,
)
from wellwon_db.pool import _fork
from wellwon_db.pool._leases import (
    Connection,
    ConnectionInfo,
    PooledConnection,
    PoolLeases,
    PoolState,
    Turn,
    close_or_terminate,
)
from wellwon_db.telemetry._telemetry import PoolTelemetry, register_pool, unregister_pool

__all__ = ["Connection", "DatabasePool", "PoolState"]

logger = logging.getLogger("wellwon_db.pool")


_CAPACITY_SQL: Final = """
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS in_use,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND application_name = $1) AS ours
"""


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port or 5432
    except ValueError:
        return None


class DatabasePool(PoolLeases):
    """An asyncpg pool bound to one database and its :class:`PoolConfig`.

    No I/O in the constructor: :meth:`open` connects ``min_size`` connections
    and :meth:`close` closes them. ``async with DatabasePool(...)`` does both.
    Using a pool that is not open raises :class:`PoolClosedError`.
    """

    def __init__(
        self,
        database: DatabaseName,
        dsn: str,
        config: PoolConfig,
        *,
        telemetry: TelemetryConfig | None = None,
    ) -> None:
        if config.database != database:
            raise ValueError(
                f"PoolConfig of the {config.database} database given for the {database} database"
            )
        self._database = database
        self._dsn = dsn
        self._config = config
        self._state = PoolState.NEW
        #: True while open and connected: the one check of the per-call path.
        self._serving = False
        #: Open, but the server has not answered since start-up.
        self._offline = False
        self._connector: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._refill: asyncio.Task[None] | None = None
        self._idle: collections.deque[Connection] = collections.deque()
        self._size = 0
        self._max_size = config.max_size
        self._expiry: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._connections: dict[Connection, ConnectionInfo] = {}
        self._fork_generation = _fork.generation
        self._abandoned: list[Connection] = []
        self._releasing: set[asyncio.Task[None]] = set()
        self._validation_idle = config.validation_idle
        self._leased = 0
        self._waiters: collections.deque[tuple[float, Turn]] = collections.deque()
        self._pressure_since: float | None = None
        self._pressure_warned = False
        self._pressure_timer: asyncio.TimerHandle | None = None
        self._always_reset = config.reset == "always"
        self._max_lifetime = config.max_lifetime
        self._max_uses = config.max_queries
        #: Leases at which utilisation counts as pressure (infinite when warnings are off).
        self._pressure_leases = (
            config.exhaustion_utilisation * config.max_size / 100.0
            if config.exhaustion_warn
            else float("inf")
        )
        self._lease_metrics = config.lease_metrics
        self._waiting = 0
        self._stats = {
            "acquired": 0,
            "validations_failed": 0,
            "timeouts": 0,
            "connections_opened": 0,
            "connections_retired": 0,
            "resets": 0,
        }
        parts = urlsplit(dsn)
        self._address = parts.netloc.rpartition("@")[2] or "localhost"
        self._dbname = parts.path.lstrip("/") or None
        single_host = "," not in parts.netloc
        self.telemetry = PoolTelemetry(
            str(database),
            host=parts.hostname if single_host else None,
            port=_port(parts) if single_host else None,
            namespace=self._dbname,
            pool_name=config.application_name,
            slow_query=(telemetry or TelemetryConfig()).slow_query,
        )

    # -- description ---------------------------------------------------------

    @property
    def database(self) -> DatabaseName:
        """The database this pool serves (a ``Database`` member for the built-in ones)."""
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
        return self._address

    def __repr__(self) -> str:
        return (
            f"<DatabasePool {self._database} {redact_dsn(self._dsn)} "
            f"{self._state.value} size={self._config.min_size}..{self._config.max_size}>"
        )

    # -- lifecycle -----------------------------------------------------------

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
                f"the {self._database} pool was already opened ({self._state.value}); "
                "create a new DatabasePool instead of reopening one",
                database=str(self._database),
            )
        self._state = PoolState.OPENING
        self._fork_generation = _fork.generation
        offline = False
        try:
            await self._connect_within(self._config.startup_wait)
            if self._config.capacity_check != "off" and self._state is PoolState.OPENING:
                await self._check_capacity()
        except BaseException as exc:
            self._terminate_all()
            if self._state is not PoolState.OPENING:  # close() ran meanwhile
                raise self._closed_while_opening() from exc
            if not isinstance(exc, DatabaseUnavailableError) or self._config.startup_required:
                self._state = PoolState.CLOSED
                raise
            logger.warning(
                "starting without the %s database (%s); connecting in the background",
                self._database,
                exc,
            )
            offline = True
        if self._state is not PoolState.OPENING:
            self._terminate_all()
            raise self._closed_while_opening()
        self._state = PoolState.OPEN
        self._offline = offline
        self._serving = not offline
        name = self._database
        if offline:
            self._connector = asyncio.create_task(
                self._connect_in_background(), name=f"wellwon_db-connect-{name}"
            )
        self._housekeeper = asyncio.create_task(
            self._keep_house(), name=f"wellwon_db-housekeeping-{name}"
        )
        register_pool(self)
        logger.debug("opened %r", self)

    def _closed_while_opening(self) -> PoolClosedError:
        return PoolClosedError(
            f"the {self._database} pool was closed while it was opening; "
            "nothing it opened stays open",
            database=str(self._database),
        )

    async def _check_capacity(self) -> None:
        """Compare what all workers may open with the server's free connection slots."""
        config = self._config
        if config.pgbouncer:
            return  # the server's slots are PgBouncer's to share, not ours
        if self._idle:  # one of the pool's own, so the question adds no backend
            row = await self._idle[-1].fetchrow(_CAPACITY_SQL, config.application_name)
        else:  # min_size 0: a connection of its own (outside the slots), closed after it
            connection = await self._connect(pooled=False)
            try:
                row = await connection.fetchrow(_CAPACITY_SQL, config.application_name)
            finally:
                self._forget(connection)
                with contextlib.suppress(Exception):
                    await close_or_terminate(connection, config.command_timeout)
        if row is None:
            return
        reserved = row["superuser_reserved"] + row["reserved"]
        others = row["in_use"] - row["ours"]
        available = row["max_connections"] - reserved - others
        needed = config.workers * config.max_size
        if needed <= available:
            return
        message = (
            f"the {self._database} database cannot hold this service's pools: "
            f"{config.workers} workers x max_size {config.max_size} = {needed} connections, "
            f"but the server has {available} free (max_connections {row['max_connections']}, "
            f"{reserved} reserved, {others} used by others); lower "
            f"{self._env('pool_max_size')}, set {self._env('pool_budget')}, or raise the "
            "server's max_connections"
        )
        if config.capacity_check == "refuse":
            raise ConfigurationError(message, env_var=self._env("pool_budget"))
        logger.warning(message, extra={"database": str(self._database), "needed": needed})

    async def _connect_within(self, wait: float) -> None:
        if wait <= 0:
            await self._fill()
            return
        retrying = AsyncRetrying(
            stop=stop_after_delay(wait),
            wait=wait_random_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(DatabaseUnavailableError),
            reraise=True,
        )
        await retrying(self._fill)

    async def _fill(self) -> None:
        """Open connections up to ``min_size``, concurrently; all or none."""
        missing = self._config.min_size - self._size
        if missing <= 0:
            return
        self._size += missing
        results = await asyncio.gather(
            *(self._connect() for _ in range(missing)), return_exceptions=True
        )
        opened = [r for r in results if not isinstance(r, BaseException)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for connection in opened:
                self._discard(connection)
            for _ in range(missing):
                self._free_slot()
            raise failures[0]
        self._idle.extend(opened)

    async def _connect_in_background(self) -> None:
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.1, max=self._config.reconnect_backoff_max),
            retry=retry_if_exception_type(Exception),
            before_sleep=self._log_background_failure,
        )
        await retrying(self._first_connection)
        self._offline = False
        self._serving = self._state is PoolState.OPEN
        self._connector = None
        logger.warning("the %s database answers again: pool connected", self._database)
        self._refill_soon()

    async def _first_connection(self) -> None:
        self._put_back(await self._grow())

    def _log_background_failure(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log = logger.debug if isinstance(error, DatabaseUnavailableError) else logger.warning
        log("the %s database is still not reachable: %s", self._database, error)

    async def _connect(self, *, pooled: bool = True) -> Connection:
        """Open one connection and start tracking it (its slot is counted already).

        ``pooled=False``: a connection for the pool's own questions, not
        counted in the stats.
        """
        config = self._config
        # Server settings, JSON codec and init hook, the same for every connection.
        prepare = config.preparation
        started = time.monotonic()
        try:
            connection: Connection = await asyncpg.connect(
                self._dsn,
                timeout=config.connect_timeout,
                command_timeout=config.command_timeout or None,
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
            error = self._acquire_error(exc)
            if error is exc:
                raise
            raise error from exc
        now = time.monotonic()
        self._connections[connection] = ConnectionInfo(now)
        connection.add_termination_listener(self._on_terminated)
        if pooled:
            self._stats["connections_opened"] += 1
            self.telemetry.connection_created(now - started)
        if self._state is PoolState.CLOSED or self._forked():
            self._discard(connection)  # closed meanwhile: never leak it
            raise self._not_serving_error()
        return connection

    # -- housekeeping ----------------------------------------------------------

    def _refill_soon(self) -> None:
        """Open connections up to ``min_size`` in the background (one task at a time)."""
        if self._state is not PoolState.OPEN or self._offline or self._refill is not None:
            return
        if self._size >= self._config.min_size:
            return
        self._refill = asyncio.get_running_loop().create_task(
            self._refill_to_min(), name=f"wellwon_db-refill-{self._database}"
        )

    async def _refill_to_min(self) -> None:
        try:
            while self._state is PoolState.OPEN and self._size < self._config.min_size:
                self._put_back(await self._grow())
        except Exception as exc:
            # The next release, acquire or housekeeping round tries again.
            logger.debug("could not restore the %s pool's minimum: %r", self._database, exc)
        finally:
            self._refill = None

    def _housekeeping_period(self) -> float:
        limits = [60.0]
        for limit in (self._config.max_inactive_lifetime, self._max_lifetime):
            if limit:
                limits.append(limit / 2)
        return max(min(limits), 0.05)

    async def _keep_house(self) -> None:
        """Every period: close connections idle too long or too old; keep ``min_size``."""
        period = self._housekeeping_period()
        while True:
            await asyncio.sleep(period)
            self._retire_idle(time.monotonic())
            self._refill_soon()

    def _retire_idle(self, now: float) -> None:
        """Close idle connections past ``max_inactive_lifetime`` (above ``min_size``)
        or past ``max_lifetime``, oldest idle first."""
        inactive = self._config.max_inactive_lifetime
        surplus = self._size - self._config.min_size  # slots of closing ones count until closed
        for connection in list(self._idle):  # the left end has been idle longest
            info = self._connections.get(connection)
            if info is None:
                continue
            unused = bool(inactive) and now - info.idle_since > inactive and surplus > 0
            if self._expired(info, now) or unused:
                surplus -= 1
                self._idle.remove(connection)
                self._retire(connection)

    def _terminate_all(self) -> None:
        """Terminate every connection at once (idle or not) and forget them all."""
        for connection in list(self._connections):
            self._discard(connection)
        self._idle.clear()
        self._size = 0

    # -- close -----------------------------------------------------------------

    async def close(self, timeout: float | None = None) -> None:
        """Drain, then close: stop handing out connections, wait for in-flight work.

        Work holding a connection gets ``timeout`` seconds (default: the
        ``drain_timeout`` setting) to give it back; connections still held
        then are terminated and their holders (task names) logged, so a
        shutdown never hangs on a leaked connection. In a process forked after
        the pool opened, the inherited connections belong to the parent: they
        are abandoned without a word to the server. Closing a closed pool
        does nothing; a second ``close()`` during the drain waits for the
        first; closing an opening one makes its :meth:`open` fail.
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
        self._serving = False
        self._state = PoolState.CLOSING
        self._fail_waiters()
        if self._forked():
            self._abandon()
            return
        try:
            await self._stop_tasks()
            if opening:
                return  # open() sees the state and closes what it opened
            if self._releasing and timeout > 0:
                # Releases of cancelled callers still settling: let them finish.
                await asyncio.wait(set(self._releasing), timeout=timeout)
            if not await self._wait_drained(deadline):
                self._log_stragglers(timeout)
            await self._close_idle(max(deadline - time.monotonic(), 0.0))
        finally:
            for task in self._releasing:  # the pool is gone: nothing left for them to do
                task.cancel()
            self._terminate_all()
            if self._pressure_timer is not None:
                self._pressure_timer.cancel()
                self._pressure_timer = None
            self._state = PoolState.CLOSED
            if not self._closed.done():
                self._closed.set_result(None)
            unregister_pool(self)
            logger.debug("closed %r", self)

    def _fail_waiters(self) -> None:
        """Queued callers learn at once, not at their timeout."""
        while self._waiters:
            turn = self._waiters.popleft()[1]
            if not turn.done():
                turn.set_exception(self._closed_error())
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._connector, self._housekeeper, self._refill) if t is not None]
        self._connector = self._housekeeper = self._refill = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # raises only if *we* are cancelled

    async def _wait_drained(self, deadline: float) -> bool:
        """Wait until every slot is idle or gone; ``False`` at the deadline."""
        if len(self._idle) >= self._size:
            return True
        self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await self._drained
        except TimeoutError:
            return False
        finally:
            self._drained = None
        return True

    async def _close_idle(self, timeout: float) -> None:
        idle = list(self._idle)
        self._idle.clear()
        for connection in idle:
            self._forget(connection)
        await asyncio.gather(
            *(close_or_terminate(c, timeout) for c in idle), return_exceptions=True
        )

    def _log_stragglers(self, timeout: float) -> None:
        now = time.monotonic()
        holders = [
            f"{info.holder.get_name() if info.holder else 'unknown task'} "
            f"(held {now - info.leased_at:.1f}s)"
            for info in self._connections.values()
            if info.leased_at is not None
        ]
        if not holders and not self._releasing:
            return  # timed out with nothing in use (a drain timeout of 0)
        logger.warning(
            "the %s pool did not drain within %.1fs: %d connections still in use were "
            "terminated; held by: %s",
            self._database,
            timeout,
            len(holders),
            ", ".join(holders) or "unknown",
            extra={"database": str(self._database), "holders": holders},
        )

    def _forked(self) -> bool:
        return self._fork_generation != _fork.generation

    @property
    def opened_in_this_process(self) -> bool:
        """False in a process forked after the pool opened: its connections are the parent's."""
        return not self._forked()

    def _abandon(self) -> None:
        """Drop a parent's connections in a forked child without touching them."""
        logger.warning(
            "the %s pool was opened in a parent process; abandoning it in this forked child "
            "(its connections belong to the parent)",
            self._database,
        )
        # Never closed here: closing would end the parent's sessions. Kept
        # referenced so that garbage collection does not close them either.
        self._abandoned.extend(self._connections)
        self._connections.clear()
        self._idle.clear()
        self._size = 0
        self._connector = self._housekeeper = self._refill = None
        self._releasing.clear()
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

    def get_stats(self) -> dict[str, Any]:
        """A snapshot with stable keys, for telemetry and health.

        ``size``/``idle``/``in_use``/``waiting``/``reserved`` are current counts
        (``reserved``: slots not idle, i.e. in use, being opened or being
        handed back); ``acquired``, ``timeouts``, ``connections_opened``,
        ``connections_retired`` and ``resets`` count since open.
        """
        # Connections the server or the network closed count as gone at once.
        size = sum(not c.is_closed() for c in self._connections)
        idle = sum(not c.is_closed() for c in self._idle)
        return {
            "database": str(self._database),
            "state": self._state.value,
            "min_size": self._config.min_size,
            "max_size": self._config.max_size,
            "size": size,
            "idle": idle,
            "in_use": size - idle,
            "waiting": self._waiting,
            "reserved": self._size - idle,
            **self._stats,
        }
