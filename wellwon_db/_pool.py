"""One asyncpg pool per database: lifecycle, leases, reset policy, stats.

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
from typing import Any, Final, TypeAlias
from urllib.parse import SplitResult, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy
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
from wellwon_db._retry import RetryConfig, RetryPolicy
from wellwon_db._session import SessionEffect
from wellwon_db._settings import SETTINGS_CLASSES, env_var_name
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
    PoolTimeoutError,
)

__all__ = ["Connection", "DatabasePool", "PoolState"]

logger = logging.getLogger("wellwon_db.pool")

#: What a lease hands out: asyncpg's pooled connection proxy.
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


class PoolState(enum.Enum):
    """Lifecycle of a :class:`DatabasePool`. Moves forward only."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


#: What a reset undoes: what DISCARD ALL does except deallocating prepared
#: statements and dropping their plans, which asyncpg's statement cache uses.
RESET_SQL: Final = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


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


class _ConnectionInfo:
    """What the pool remembers of one server connection (keyed by backend pid)."""

    __slots__ = ("born", "holder", "idle_since", "leased_at")

    def __init__(self, born: float) -> None:
        self.born = born
        self.idle_since = born
        self.leased_at: float | None = None
        self.holder: asyncio.Task[Any] | None = None


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port or 5432
    except ValueError:
        return None


class DatabasePool:
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
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._connector: asyncio.Task[None] | None = None
        if breaker is None:
            breaker = CircuitBreaker(database.value)
            breaker.add_listener(record_breaker_transition)
        self.breaker = breaker
        self.retry = RetryPolicy(database.value, retry)
        self._connections: dict[int, _ConnectionInfo] = {}
        self._fork_generation = _fork.generation
        self._abandoned: asyncpg.Pool[asyncpg.Record] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._validation_idle = config.validation_idle
        self._leased = 0
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
        ``PoolClosedError`` when called twice.
        """
        if self._state is not PoolState.NEW:
            raise PoolClosedError(
                f"the {self._database.value} pool was already opened ({self._state.value}); "
                "create a new DatabasePool instead of reopening one",
                database=self._database.value,
            )
        self._state = PoolState.OPENING
        self._fork_generation = _fork.generation
        try:
            self._pool = await self._connect_within(self._config.startup_wait)
        except DatabaseUnavailableError as exc:
            if self._config.startup_required:
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
            self._state = PoolState.CLOSED
            raise
        if self._pool is not None and self._config.capacity_check != "off":
            try:
                await self._check_capacity(self._pool)
            except BaseException:
                self._state = PoolState.CLOSED
                pool, self._pool = self._pool, None
                pool.terminate()
                raise
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
        self._pool = pool
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
        does nothing.
        """
        if self._state in (PoolState.CLOSED, PoolState.CLOSING):
            return
        if timeout is None:
            timeout = self._config.drain_timeout
        pool, self._pool = self._pool, None
        self._state = PoolState.CLOSING
        if self._forked():
            self._abandon(pool)
            return
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connector
        try:
            if self._releasing:
                # Releases of cancelled callers still settling: let them finish.
                await asyncio.wait(set(self._releasing), timeout=timeout or None)
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), timeout)
                except TimeoutError:
                    self._log_stragglers(timeout)
                    pool.terminate()
                except BaseException:
                    pool.terminate()
                    raise
        finally:
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
        self._connections[connection.get_server_pid()] = _ConnectionInfo(now)
        self._stats["connections_opened"] += 1

    def _forked_error(self) -> PoolClosedError:
        return PoolClosedError(
            f"the {self._database.value} pool was opened before this process was forked; its "
            "connections belong to the parent and cannot be used here. Open pools after "
            "forking (in each worker's start-up or lifespan, not at import time or with "
            "gunicorn --preload), or call stop_databases() then start_databases() in the child",
            database=self._database.value,
        )

    def _env(self, field: str) -> str:
        return env_var_name(SETTINGS_CLASSES[self._database], field)

    def _closed_error(self) -> PoolClosedError:
        if self._state is PoolState.NEW or self._state is PoolState.OPENING:
            what = "has not been opened yet; start the container's resources first"
        else:
            what = "is closed; get a new client after starting the container again"
        return PoolClosedError(
            f"the {self._database.value} database pool {what} "
            "(wellwon_db.start_databases(container))",
            database=self._database.value,
        )

    async def acquire_connection(self) -> Connection:
        """Take a connection; hand it back with :meth:`release_connection`.

        Raises ``PoolTimeoutError`` after the acquire timeout,
        ``DatabaseUnavailableError`` when a new connection cannot be made,
        ``PoolClosedError`` when the pool is not open.
        """
        pool = self._pool
        if self._fork_generation != _fork.generation:
            raise self._forked_error()
        if pool is None:
            if self._connector is not None:
                raise DatabaseUnavailableError(
                    f"the {self._database.value} database at {self._address} has not answered "
                    "since start-up; connecting in the background",
                    database=self._database.value,
                    may_have_run=False,
                )
            raise self._closed_error()
        timeout = self._config.timeout
        self._waiting += 1
        started = time.monotonic()
        try:
            connection = await pool.acquire(timeout=timeout)
        except TimeoutError as exc:
            waiters = self._waiting
            if time.monotonic() - started < timeout * 0.99:
                # asyncpg's own connect timeout fired before ours.
                raise DatabaseUnavailableError(
                    f"the {self._database.value} database at {self._address} did not answer "
                    f"within the connect timeout of {self._config.connect_timeout:g}s",
                    database=self._database.value,
                    may_have_run=False,
                ) from exc
            self._stats["timeouts"] += 1
            raise PoolTimeoutError(
                f"no connection to the {self._database.value} database within {timeout:g}s: "
                f"all {self._config.max_size} connections in use, {waiters} tasks waiting "
                f"(raise {self._env('pool_max_size')} or {self._env('pool_timeout_sec')}, "
                "or hold connections for shorter)",
                database=self._database.value,
                max_size=self._config.max_size,
                waiters=waiters,
                timeout=timeout,
            ) from exc
        except asyncpg.InterfaceError as exc:
            if self._pool is None:
                raise self._closed_error() from exc
            raise
        except BaseException as exc:
            error = translate_error(
                exc, self._database, "acquiring a connection", may_have_run=False
            )
            if error is exc:
                raise
            raise error from exc
        finally:
            self._waiting -= 1
        if self._validation_idle:
            try:
                if not await self._usable(connection):
                    connection = await self._replace_dead(connection, started)
            except BaseException:
                # Cancelled (or failed) mid-validation: the ping may still be
                # in flight, so the connection settles in the background.
                self.release_soon(connection, SessionEffect.DISCARD)
                raise
        self._begin_lease(connection, started)
        return connection

    def _begin_lease(self, connection: Connection, started: float) -> None:
        now = time.monotonic()
        info = self._connections.get(connection.get_server_pid())
        if info is not None:
            info.leased_at = now
            info.holder = asyncio.current_task()
        self._stats["acquired"] += 1
        self._leased += 1
        self.telemetry.connection_acquired(now - started)
        self._watch_pressure(now)

    def _watch_pressure(self, now: float) -> None:
        """Warn once per episode of waiters or high utilisation lasting ``exhaustion_warn``."""
        config = self._config
        if not config.exhaustion_warn:
            return
        pressed = (
            self._waiting > 0
            or self._leased * 100.0 >= config.exhaustion_utilisation * config.max_size
        )
        if not pressed:
            if self._pressure_warned:
                logger.info("the %s pool is no longer under pressure", self._database.value)
            self._pressure_since = None
            self._pressure_warned = False
            return
        if self._pressure_since is None:
            self._pressure_since = now
        elif not self._pressure_warned and now - self._pressure_since >= config.exhaustion_warn:
            self._pressure_warned = True
            self.telemetry.pool_exhausted()
            logger.warning(
                "the %s pool has been under pressure for %.1fs: %d of %d connections in use, "
                "%d tasks waiting (raise %s, or hold connections for shorter)",
                self._database.value,
                now - self._pressure_since,
                self._leased,
                config.max_size,
                self._waiting,
                self._env("pool_max_size"),
                extra={
                    "database": self._database.value,
                    "in_use": self._leased,
                    "max_size": config.max_size,
                    "waiting": self._waiting,
                },
            )

    async def _usable(self, connection: Connection) -> bool:
        """Ping a connection idle for longer than ``validation_idle`` (HikariCP's rule)."""
        info = self._connections.get(connection.get_server_pid())
        if info is None or time.monotonic() - info.idle_since <= self._validation_idle:
            return True
        try:
            await connection.execute("", timeout=self._config.connect_timeout)
        except (TimeoutError, Exception):
            return False
        return True

    async def _replace_dead(self, dead: Connection, started: float) -> Connection:
        """Discard ``dead`` and acquire another within what is left of the timeout."""
        for _ in range(self._config.max_size + 1):
            self._stats["validations_failed"] += 1
            await self.release_connection(dead, SessionEffect.DISCARD)
            remaining = self._config.timeout - (time.monotonic() - started)
            pool = self._pool
            if remaining <= 0 or pool is None:
                break
            try:
                connection = await pool.acquire(timeout=remaining)
            except BaseException as exc:
                error = translate_error(
                    exc, self._database, "replacing a dead connection", may_have_run=False
                )
                if error is exc:
                    raise
                raise error from exc
            if await self._usable(connection):
                return connection
            dead = connection
        raise DatabaseUnavailableError(
            f"the {self._database.value} database at {self._address}: pooled connections are "
            "dead and no live one could be had in time",
            database=self._database.value,
            may_have_run=False,
        )

    async def release_connection(
        self, connection: Connection, effect: SessionEffect = SessionEffect.NONE
    ) -> None:
        """Return ``connection``, first undoing what ``effect`` says it left behind.

        A connection older than ``max_lifetime``, or one that a statement
        made unfit for reuse, is closed instead; the pool opens a new one when
        needed. A connection that fails its reset is terminated.
        """
        pool = self._pool
        try:
            info = self._end_lease(connection)
            if connection.is_closed():
                self._stats["connections_retired"] += 1
                self._forget(connection)
            elif effect is SessionEffect.DISCARD or self._expired(info):
                await self._retire(connection)
            else:
                if effect or self._always_reset or connection.is_in_transaction():
                    self._stats["resets"] += 1
                    await self._reset(connection)
                if info is not None:
                    info.idle_since = time.monotonic()
        except asyncio.CancelledError:
            self._discard(connection)
            raise
        except Exception as exc:
            # The session's state is unknown (reset failed, or the connection
            # is busy cancelling a statement): never hand it out again.
            logger.debug("discarding a %s connection: %r", self._database.value, exc)
            self._discard(connection)
        finally:
            if pool is not None:
                await pool.release(connection)

    def release_soon(
        self, connection: Connection, effect: SessionEffect = SessionEffect.NONE
    ) -> None:
        """:meth:`release_connection` in a background task, for a cancelled caller.

        A statement cancelled mid-flight makes asyncpg wait for the server to
        confirm the cancellation before the connection can be reused; on a
        silent network that is bounded only by the connect timeout. The
        cancelled caller must not wait for it, so the release (and the
        clean-up or discard it decides) finishes on its own.
        """
        task = asyncio.get_running_loop().create_task(
            self.release_connection(connection, effect),
            name=f"wellwon_db-release-{self._database.value}",
        )
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("background release failed: %r", task.exception())

    def _discard(self, connection: Connection) -> None:
        self._forget(connection)
        with contextlib.suppress(asyncpg.InterfaceError):
            connection.terminate()

    async def _reset(self, connection: Connection) -> None:
        async with asyncio.timeout(self._config.command_timeout):
            if connection.is_in_transaction():
                await connection.execute("ROLLBACK")
            await connection.execute(RESET_SQL)

    def _end_lease(self, connection: Connection) -> _ConnectionInfo | None:
        info = self._connections.get(connection.get_server_pid())
        if info is not None and info.leased_at is not None:
            now = time.monotonic()
            self.telemetry.connection_released(now - info.leased_at)
            info.leased_at = None
            info.holder = None
            self._leased -= 1
            self._watch_pressure(now)
        return info

    def _expired(self, info: _ConnectionInfo | None) -> bool:
        if not self._max_lifetime or info is None:
            return False
        return time.monotonic() - info.born > self._max_lifetime

    def _forget(self, connection: Connection) -> None:
        with contextlib.suppress(asyncpg.InterfaceError):
            self._connections.pop(connection.get_server_pid(), None)

    async def _retire(self, connection: Connection) -> None:
        self._stats["connections_retired"] += 1
        self._forget(connection)
        await connection.close(timeout=self._config.command_timeout)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A raw connection for the block; fully reset when it comes back.

        The connection is asyncpg's; anything may be done with it, so its
        session is always reset on release.
        """
        connection = await self.acquire_connection()
        async with self.lease(connection):
            yield connection

    @asynccontextmanager
    async def lease(self, connection: Connection) -> AsyncIterator[None]:
        """Release ``connection`` (fully reset) when the block ends.

        A cancelled block releases in the background, so cancellation is never
        held up by a connection that is still settling.
        """
        try:
            yield
        except asyncio.CancelledError:
            self.release_soon(connection, SessionEffect.RESET)
            raise
        except BaseException:
            await self.release_connection(connection, SessionEffect.RESET)
            raise
        await self.release_connection(connection, SessionEffect.RESET)

    # -- stats ---------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """A snapshot with stable keys, for telemetry and health.

        ``size``/``idle``/``in_use``/``waiting`` are current counts;
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
            **self._stats,
        }
