"""Leases: handing connections out and taking them back, for :class:`DatabasePool`.

A lease begins when a caller gets a connection (validated when it sat idle
too long) and ends when it comes back: reset when its session was changed,
retired when too old or untrustworthy, released in the background when the
caller was cancelled. Pool pressure is watched at both ends. The pool's
lifecycle (open, drain, fork) lives in ``_pool.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from wellwon_db import _fork
from wellwon_db._config import PoolConfig
from wellwon_db._database import Database
from wellwon_db._failures import translate_error
from wellwon_db._session import SessionEffect
from wellwon_db._settings import SETTINGS_CLASSES, env_var_name
from wellwon_db._telemetry import PoolTelemetry
from wellwon_db.errors import DatabaseUnavailableError, PoolClosedError, PoolTimeoutError

__all__ = ["RESET_SQL", "Connection", "ConnectionInfo", "PoolLeases", "PoolState"]

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


class _TurnTimeout(Exception):
    """A waiter's acquire timeout expired."""


def _expire(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_exception(_TurnTimeout())


class ConnectionInfo:
    """What the pool remembers of one server connection (keyed by backend pid)."""

    __slots__ = ("born", "holder", "idle_since", "leased_at")

    def __init__(self, born: float) -> None:
        self.born = born
        self.idle_since = born
        self.leased_at: float | None = None
        self.holder: asyncio.Task[Any] | None = None


class PoolLeases:
    """Acquire and release for :class:`~wellwon_db._pool.DatabasePool` (its base class).

    The pool's constructor sets every attribute declared here.
    """

    _database: Database
    _config: PoolConfig
    _state: PoolState
    _pool: asyncpg.Pool[asyncpg.Record] | None
    _home: asyncpg.Pool[asyncpg.Record] | None
    _connector: asyncio.Task[None] | None
    _connections: dict[int, ConnectionInfo]
    _fork_generation: int
    _releasing: set[asyncio.Task[None]]
    _validation_idle: float
    _leased: int
    _held: int
    _waiters: collections.deque[asyncio.Future[None]]
    _pressure_since: float | None
    _pressure_warned: bool
    _always_reset: bool
    _max_lifetime: float
    _waiting: int
    _stats: dict[str, int]
    _address: str
    telemetry: PoolTelemetry

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
        started = time.monotonic()
        if self._held >= self._config.max_size or self._waiters:
            await self._wait_turn(self._config.timeout)  # our turn: a holder is reserved
        else:
            self._held += 1  # reserved before any await, so later callers see it
        return await self._take(pool, started)

    async def _take(self, pool: asyncpg.Pool[asyncpg.Record], started: float) -> Connection:
        """Get the holder reserved in ``_held`` from asyncpg, then begin the lease.

        A holder is certainly queued in asyncpg (each one not queued is one we
        hold, one being released, or one asyncpg is reconnecting, which its
        connect timeout bounds), so asyncpg's acquire runs without a timer:
        a timed acquire costs two timers per query (acquire and release).
        """
        return await self._lease(await self._acquire_reserved(pool), started)

    async def _acquire_reserved(self, pool: asyncpg.Pool[asyncpg.Record]) -> Connection:
        """asyncpg's acquire for a reserved turn; the turn goes back if it fails."""
        try:
            return await pool.acquire()
        except BaseException as exc:
            self._give_back_turn()
            error = self._acquire_error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _wait_turn(self, timeout: float) -> None:
        """Queue (FIFO) until a holder frees up; it is reserved for us on wake-up.

        Raises ``PoolTimeoutError`` after ``timeout`` seconds. A waiter that
        times out or is cancelled after being handed a turn passes it on, so
        no turn is ever lost.
        """
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiters.append(turn)
        self._waiting += 1
        timer = loop.call_later(timeout, _expire, turn)
        try:
            await turn
        except _TurnTimeout:
            self._stats["timeouts"] += 1
            waiters = self._waiting
            raise PoolTimeoutError(
                f"no connection to the {self._database.value} database within {timeout:g}s: "
                f"all {self._config.max_size} connections in use, {waiters} tasks waiting "
                f"(raise {self._env('pool_max_size')} or {self._env('pool_timeout_sec')}, "
                "or hold connections for shorter)",
                database=self._database.value,
                max_size=self._config.max_size,
                waiters=waiters,
                timeout=timeout,
            ) from None
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._give_back_turn()  # handed a turn, then cancelled: pass it on
            raise
        finally:
            timer.cancel()
            self._waiting -= 1
            if not turn.done():
                turn.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(turn)

    def _give_back_turn(self) -> None:
        """A reserved holder is free again: hand it to the first live waiter, or unreserve."""
        waiters = self._waiters
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the reservation passes to this waiter
                return
        self._held -= 1

    def _acquire_error(self, exc: BaseException) -> BaseException:
        """Translate a failure of an acquire that had no timer of its own."""
        if isinstance(exc, TimeoutError):
            # Only asyncpg's connect timeout can fire here.
            return DatabaseUnavailableError(
                f"the {self._database.value} database at {self._address} did not answer "
                f"within the connect timeout of {self._config.connect_timeout:g}s",
                database=self._database.value,
                may_have_run=False,
            )
        if isinstance(exc, asyncpg.InterfaceError) and self._pool is None:
            return self._closed_error()
        return translate_error(exc, self._database, "acquiring a connection", may_have_run=False)

    async def _lease(self, connection: Connection, started: float) -> Connection:
        """Validate ``connection`` if it sat idle too long, then begin its lease."""
        if self._validation_idle:
            try:
                usable = await self._usable(connection)
            except BaseException:
                # Cancelled (or failed) mid-validation: the ping may still be
                # in flight, so the connection is terminated.
                self.release_soon(connection, SessionEffect.BROKEN)
                raise
            if not usable:
                # From here _replace_dead owns the connection and the turn.
                connection = await self._replace_dead(connection, started)
        self._begin_lease(connection, started)
        return connection

    def _begin_lease(self, connection: Connection, started: float) -> None:
        now = time.monotonic()
        info = self._connections.get(connection.get_server_pid())
        if info is not None:  # counted only when tracked, as _end_lease uncounts
            info.leased_at = now
            info.holder = asyncio.current_task()
            self._leased += 1
        self._stats["acquired"] += 1
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
        """Terminate ``dead`` and acquire another within what is left of the timeout.

        Dead connections are terminated, never closed politely: on a silent
        link a polite close would wait out its timeout. The caller's
        reservation moves with the connection in hand; whatever happens
        (failure, timeout, cancellation) it is handed back exactly once.
        """
        holding = dead
        for _ in range(self._config.max_size + 1):
            self._stats["validations_failed"] += 1
            # The dead connection's holder stays reserved for us: it comes back
            # disconnected and asyncpg reconnects it on the next acquire.
            try:
                await self.release_connection(holding, SessionEffect.BROKEN, keep_turn=True)
            except BaseException:
                self._give_back_turn()
                raise
            pool = self._pool
            if pool is None or time.monotonic() - started >= self._config.timeout:
                self._give_back_turn()
                break
            holding = await self._acquire_reserved(pool)  # gives the turn back if it fails
            try:
                usable = await self._usable(holding)
            except BaseException:
                self.release_soon(holding, SessionEffect.BROKEN)
                raise
            if usable:
                return holding
        else:
            # Out of attempts with one more dead connection in hand.
            await self.release_connection(holding, SessionEffect.BROKEN)
        raise DatabaseUnavailableError(
            f"the {self._database.value} database at {self._address}: pooled connections are "
            "dead and no live one could be had in time",
            database=self._database.value,
            may_have_run=False,
        )

    async def release_connection(
        self,
        connection: Connection,
        effect: SessionEffect = SessionEffect.NONE,
        *,
        keep_turn: bool = False,
    ) -> None:
        """Return ``connection``, first undoing what ``effect`` says it left behind.

        A connection older than ``max_lifetime``, or one that a statement
        made unfit for reuse, is closed instead; the pool opens a new one when
        needed. A ``BROKEN`` connection, or one that fails its reset, is
        terminated. While the pool drains, connections still go back to it.
        """
        pool = self._home
        try:
            info = self._end_lease(connection)
            if effect is SessionEffect.BROKEN:
                self._discard(connection)
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
            try:
                if pool is not None:
                    await pool.release(connection)
            finally:
                if not keep_turn:
                    self._give_back_turn()

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

    def _end_lease(self, connection: Connection) -> ConnectionInfo | None:
        info = self._connections.get(connection.get_server_pid())
        if info is not None and info.leased_at is not None:
            now = time.monotonic()
            self.telemetry.connection_released(now - info.leased_at)
            info.leased_at = None
            info.holder = None
            self._leased -= 1
            self._watch_pressure(now)
        return info

    def _expired(self, info: ConnectionInfo | None) -> bool:
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
