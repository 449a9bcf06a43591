"""One asyncpg pool per database: lifecycle (open, start-up, drain, fork), stats.

Handing connections out and taking them back is in ``_leases.py``.

Connection-level failures are translated into wellwon_db's errors by
``_failures.translate_error``; PostgreSQL's own errors pass through unchanged.
"""

from __future__ import annotations

import asyncio
import collections
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

from wellwon_db import _fork
from wellwon_db._breaker import CircuitBreaker
from wellwon_db._config import PoolConfig, TelemetryConfig
from wellwon_db._database import Database
from wellwon_db._dsn import redact_dsn
from wellwon_db._failures import translate_error
from wellwon_db._leases import Connection, ConnectionInfo, PoolLeases, PoolState
from wellwon_db._retry import RetryConfig, RetryPolicy
from wellwon_db._telemetry import (
    PoolTelemetry,
    record_breaker_transition,
    register_pool,
    unregister_pool,
)
from wellwon_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    PoolClosedError,
)

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


async def _keep_session(connection: object) -> None:
    """asyncpg ``reset`` hook: the lease already reset what needed it."""


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
        database: Database,
        dsn: str,
        config: PoolConfig,
        *,
        breaker: CircuitBreaker | None = None,
        retry: RetryConfig | None = None,
        telemetry: TelemetryConfig | None = None,
    ) -> None:
        if config.database is not database:
            raise ValueError(
                f"PoolConfig of the {config.database.value} database given for "
                f"the {database.value} database"
            )
        self._database = database
        self._dsn = dsn
        self._config = config
        self._state = PoolState.NEW
        # _pool hands connections out (None unless open); _home takes them
        # back, and stays set while the pool drains.
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._home: asyncpg.Pool[asyncpg.Record] | None = None
        self._connector: asyncio.Task[None] | None = None
        if breaker is None:
            breaker = CircuitBreaker(database.value)
            breaker.add_listener(record_breaker_transition)
        self.breaker = breaker
        self.retry = RetryPolicy(database.value, retry)
        self._connections: dict[int, ConnectionInfo] = {}
        self._fork_generation = _fork.generation
        self._abandoned: asyncpg.Pool[asyncpg.Record] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._validation_idle = config.validation_idle
        self._leased = 0
        self._held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pressure_since: float | None = None
        self._pressure_warned = False
        self._always_reset = config.reset == "always"
        self._max_lifetime = config.max_lifetime
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
            database.value,
            host=parts.hostname if single_host else None,
            port=_port(parts) if single_host else None,
            namespace=self._dbname,
            pool_name=config.application_name,
            slow_query=(telemetry or TelemetryConfig()).slow_query,
        )

    # -- description ---------------------------------------------------------

    @property
    def database(self) -> Database:
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
        return self._address

    def __repr__(self) -> str:
        return (
            f"<DatabasePool {self._database.value} {redact_dsn(self._dsn)} "
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
                f"the {self._database.value} pool was already opened ({self._state.value}); "
                "create a new DatabasePool instead of reopening one",
                database=self._database.value,
            )
        self._state = PoolState.OPENING
        self._fork_generation = _fork.generation
        pool: asyncpg.Pool[asyncpg.Record] | None = None
        try:
            pool = await self._connect_within(self._config.startup_wait)
        except DatabaseUnavailableError as exc:
            if self._config.startup_required or self._state is not PoolState.OPENING:
                self._state = PoolState.CLOSED
                raise
            logger.warning(
                "starting without the %s database (%s); connecting in the background",
                self._database.value,
                exc,
            )
            self._connector = asyncio.create_task(
                self._connect_in_background(), name=f"wellwon_db-connect-{self._database.value}"
            )
        except BaseException:
            if self._state is PoolState.OPENING:
                self._state = PoolState.CLOSED
            raise
        if pool is not None:
            try:
                if self._config.capacity_check != "off" and self._state is PoolState.OPENING:
                    await self._check_capacity(pool)
            except BaseException:
                if self._state is PoolState.OPENING:
                    self._state = PoolState.CLOSED
                pool.terminate()
                raise
            if self._state is not PoolState.OPENING:
                pool.terminate()
                raise PoolClosedError(
                    f"the {self._database.value} pool was closed while it was opening; "
                    "nothing it opened stays open",
                    database=self._database.value,
                )
            self._pool = self._home = pool
        self._state = PoolState.OPEN
        register_pool(self)
        logger.debug("opened %r", self)

    async def _check_capacity(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        """Compare what all workers may open with the server's free connection slots."""
        config = self._config
        if config.pgbouncer:
            return  # the server's slots are PgBouncer's to share, not ours
        connection = await pool.acquire(timeout=config.timeout)
        try:
            row = await connection.fetchrow(_CAPACITY_SQL, config.application_name)
        finally:
            if config.min_size == 0:
                await connection.close()  # a pool of min_size 0 starts with no connection
            else:
                await pool.release(connection)
        if row is None:
            return
        reserved = row["superuser_reserved"] + row["reserved"]
        others = row["in_use"] - row["ours"]
        available = row["max_connections"] - reserved - others
        needed = config.workers * config.max_size
        if needed <= available:
            return
        message = (
            f"the {self._database.value} database cannot hold this service's pools: "
            f"{config.workers} workers x max_size {config.max_size} = {needed} connections, "
            f"but the server has {available} free (max_connections {row['max_connections']}, "
            f"{reserved} reserved, {others} used by others); lower "
            f"{self._env('pool_max_size')}, set {self._env('pool_budget')}, or raise the "
            "server's max_connections"
        )
        if config.capacity_check == "refuse":
            raise ConfigurationError(message, env_var=self._env("pool_budget"))
        logger.warning(message, extra={"database": self._database.value, "needed": needed})

    async def _connect_within(self, wait: float) -> asyncpg.Pool[asyncpg.Record]:
        if wait <= 0:
            return await self._create_pool()
        retrying = AsyncRetrying(
            stop=stop_after_delay(wait),
            wait=wait_random_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(DatabaseUnavailableError),
            reraise=True,
        )
        return await retrying(self._create_pool)

    async def _connect_in_background(self) -> None:
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.1, max=self.breaker.config.open_sec),
            retry=retry_if_exception_type(Exception),
            before_sleep=self._log_background_failure,
        )
        pool: asyncpg.Pool[asyncpg.Record] = await retrying(self._create_pool)
        if self._state is not PoolState.OPEN:
            pool.terminate()
            return
        self._pool = self._home = pool
        logger.warning("the %s database answers again: pool connected", self._database.value)

    def _log_background_failure(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log = logger.debug if isinstance(error, DatabaseUnavailableError) else logger.warning
        log("the %s database is still not reachable: %s", self._database.value, error)

    async def _create_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        config = self._config
        try:
            return await asyncpg.create_pool(
                self._dsn,
                min_size=config.min_size,
                max_size=config.max_size,
                max_queries=config.max_queries,
                max_inactive_connection_lifetime=config.max_inactive_lifetime,
                command_timeout=config.command_timeout,
                timeout=config.connect_timeout,
                # PgBouncer in transaction mode cannot keep named prepared statements.
                statement_cache_size=0 if config.pgbouncer else config.statement_cache_size,
                server_settings={"application_name": config.application_name},
                init=self._on_connect,
                reset=_keep_session,
                connect=self._timed_connect,
            )
        except TimeoutError as exc:
            raise DatabaseUnavailableError(
                f"the {self._database.value} database at {self._address} did not answer "
                f"within the connect timeout of {config.connect_timeout:g}s",
                database=self._database.value,
                may_have_run=False,
            ) from exc
        except BaseException as exc:
            error = translate_error(
                exc, self._database, f"opening a pool to {self._address}", may_have_run=False
            )
            if error is exc:
                raise
            raise error from exc

    async def close(self, timeout: float | None = None) -> None:
        """Drain, then close: stop handing out connections, wait for in-flight work.

        Work holding a connection gets ``timeout`` seconds (default: the
        ``drain_timeout`` setting) to give it back; connections still held
        then are terminated and their holders (task names) logged, so a
        shutdown never hangs on a leaked connection. In a process forked after
        the pool opened, the inherited connections belong to the parent: they
        are abandoned without a word to the server. Closing a closed pool
        does nothing; closing an opening one makes its :meth:`open` fail.
        """
        if self._state in (PoolState.CLOSED, PoolState.CLOSING):
            return
        if timeout is None:
            timeout = self._config.drain_timeout
        deadline = time.monotonic() + timeout
        pool, self._pool = self._pool, None
        self._state = PoolState.CLOSING
        while self._waiters:  # queued callers learn at once, not at their timeout
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_exception(self._closed_error())
        if self._forked():
            self._abandon(pool)
            return
        connector, self._connector = self._connector, None
        try:
            if connector is not None:
                connector.cancel()
                await asyncio.wait([connector])  # raises only if *we* are cancelled
            if self._releasing and timeout > 0:
                # Releases of cancelled callers still settling: let them finish.
                await asyncio.wait(set(self._releasing), timeout=timeout)
            if pool is not None:
                remaining = max(deadline - time.monotonic(), 0.0)
                try:
                    await asyncio.wait_for(pool.close(), remaining)
                except TimeoutError:
                    self._log_stragglers(timeout)
                    pool.terminate()
                except BaseException:
                    pool.terminate()
                    raise
        finally:
            for task in self._releasing:  # the pool is gone: nothing left for them to do
                task.cancel()
            self._home = None
            self._state = PoolState.CLOSED
            self._connections.clear()
            unregister_pool(self)
            logger.debug("closed %r", self)

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
            self._database.value,
            timeout,
            len(holders),
            ", ".join(holders) or "unknown",
            extra={"database": self._database.value, "holders": holders},
        )

    def _forked(self) -> bool:
        return self._fork_generation != _fork.generation

    @property
    def opened_in_this_process(self) -> bool:
        """False in a process forked after the pool opened: its connections are the parent's."""
        return not self._forked()

    def _abandon(self, pool: asyncpg.Pool[asyncpg.Record] | None) -> None:
        """Drop a parent's pool in a forked child without touching its connections."""
        logger.warning(
            "the %s pool was opened in a parent process; abandoning it in this forked child "
            "(its connections belong to the parent)",
            self._database.value,
        )
        self._abandoned = pool  # never closed here: closing would end the parent's sessions
        self._home = None
        self._connector = None
        self._releasing.clear()
        self._connections.clear()
        self._state = PoolState.CLOSED
        unregister_pool(self)

    async def __aenter__(self) -> DatabasePool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- leases --------------------------------------------------------------

    async def _timed_connect(self, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        connection = await asyncpg.connect(*args, **kwargs)
        self.telemetry.connection_created(time.monotonic() - started)
        return connection

    async def _on_connect(self, connection: asyncpg.Connection[asyncpg.Record]) -> None:
        now = time.monotonic()
        self._connections[connection.get_server_pid()] = ConnectionInfo(now)
        self._stats["connections_opened"] += 1

    # -- stats ---------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """A snapshot with stable keys, for telemetry and health.

        ``size``/``idle``/``in_use``/``waiting``/``reserved`` are current counts;
        ``acquired``, ``timeouts``, ``connections_opened``,
        ``connections_retired`` and ``resets`` count since open.
        """
        pool = self._pool
        size = pool.get_size() if pool is not None else 0
        idle = pool.get_idle_size() if pool is not None else 0
        return {
            "database": self._database.value,
            "state": self._state.value,
            "min_size": self._config.min_size,
            "max_size": self._config.max_size,
            "size": size,
            "idle": idle,
            "in_use": size - idle,
            "waiting": self._waiting,
            "reserved": self._held,
            **self._stats,
        }
