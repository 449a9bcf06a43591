"""Leases: handing connections out and taking them back, for :class:`DatabasePool`.

The pool owns its asyncpg connections directly (no ``asyncpg.Pool``
underneath): idle connections wait in a LIFO stack, callers that find none
queue FIFO, and a connection given back goes straight to the first waiter.
``_size`` counts every connection slot in use: open connections plus those
being opened, never above ``max_size``. A slot freed by a discarded
connection passes to the first waiter, who opens a new connection in it.

A lease begins when a caller gets a connection (validated when it sat idle
too long) and ends when it comes back: reset when its session was changed,
closed when too old or untrustworthy, released in the background when the
caller was cancelled. The common case, an idle connection out and back
unchanged, involves no await and no allocation besides the caller's own.
The pool's lifecycle (open, housekeeping, drain, fork) lives in ``_pool.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, TypeAlias, cast

import asyncpg

from wellwon_db.config._credentials import ConnectParams
from wellwon_db.config._policies import PoolConfig
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import DatabaseUnavailableError, PoolClosedError, PoolTimeoutError
from wellwon_db.pool import _fork
from wellwon_db.pool._failures import translate_error
from wellwon_db.pool._raw import RawConnection
from wellwon_db.pool._session import SessionEffect
from wellwon_db.telemetry._telemetry import PoolTelemetry

__all__ = [
    "RESET_SQL",
    "Connection",
    "ConnectionInfo",
    "PoolLeases",
    "PoolState",
    "PooledConnection",
    "Turn",
    "close_or_terminate",
]

logger = logging.getLogger("wellwon_db.pool")

#: What a lease hands out: an asyncpg connection owned by the pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

#: A waiter's turn: resolved with a connection, or with ``None`` for a free
#: slot in which the waiter opens a connection itself.
Turn: TypeAlias = "asyncio.Future[Connection | None]"

_monotonic = time.monotonic


#: Python 3.11's ``asyncio.current_task()`` is a Python function reading this
#: dict (kept by the C task implementation); reading it directly saves a
#: frame per lease. 3.12 made ``current_task`` C code: ``None`` there.
_TASKS: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = (
    getattr(asyncio.tasks, "_current_tasks", None) if sys.version_info < (3, 12) else None
)
_running_loop = asyncio.events._get_running_loop


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


if TYPE_CHECKING:
    _ConnectionBase = asyncpg.Connection[asyncpg.Record]
else:
    _ConnectionBase = asyncpg.Connection


class PooledConnection(_ConnectionBase):
    """The asyncpg connection class of our pools: its reset is :data:`RESET_SQL`.

    asyncpg's public ``Connection.reset()`` first clears asyncpg's own
    session bookkeeping (listeners, log listeners, the open-transaction
    marker) and rolls back, then runs :meth:`get_reset_query`.
    """

    __slots__ = ()

    def get_reset_query(self) -> str:
        """The statements that undo a session's state."""
        return RESET_SQL


class _TurnTimeout(Exception):
    """A waiter's acquire timeout expired."""


class ConnectionInfo:
    """What the pool remembers of one open connection."""

    __slots__ = ("born", "holder", "idle_since", "leased_at", "uses")

    def __init__(self, born: float) -> None:
        self.born = born
        self.idle_since = born
        self.leased_at: float | None = None
        self.holder: asyncio.Task[Any] | None = None
        self.uses = 0


class PoolLeases:
    """Acquire and release for :class:`~wellwon_db.pool._pool.DatabasePool` (its base class).

    The pool's constructor sets every attribute declared here; ``_connect``
    (open one connection) is the pool's.
    """

    _database: DatabaseName
    _config: PoolConfig
    _state: PoolState
    _serving: bool
    _offline: bool
    _fork_generation: int
    _idle: collections.deque[Connection]
    _connections: dict[Connection, ConnectionInfo]
    _size: int
    _max_size: int
    _waiters: collections.deque[tuple[float, Turn]]
    _expiry: asyncio.TimerHandle | None
    _drained: asyncio.Future[None] | None
    _releasing: set[asyncio.Task[None]]
    _validation_idle: float
    _leased: int
    _pressure_since: float | None
    _pressure_warned: bool
    _always_reset: bool
    _max_lifetime: float
    _max_uses: int
    _pressure_leases: float
    _pressure_timer: asyncio.TimerHandle | None
    _lease_metrics: bool
    _waiting: int
    _stats: dict[str, int]
    _address: str
    _connect_params: ConnectParams
    telemetry: PoolTelemetry

    async def _connect(self, *, pooled: bool = True) -> Connection:
        raise NotImplementedError  # DatabasePool's

    def _refill_soon(self) -> None:
        raise NotImplementedError  # DatabasePool's

    # -- errors --------------------------------------------------------------

    def _forked_error(self) -> PoolClosedError:
        return PoolClosedError(
            f"the {self._database} pool was opened before this process was forked; its "
            "connections belong to the parent and cannot be used here. Open pools after "
            "forking (in each worker's start-up or lifespan, not at import time or with "
            "gunicorn --preload), or call stop_databases() then start_databases() in the child",
            database=str(self._database),
        )

    def _env(self, field: str) -> str:
        """The setting that controls ``field``, as named in messages (its env variable)."""
        return self._config.setting_names.get(field, field)

    def _closed_error(self) -> PoolClosedError:
        if self._state is PoolState.NEW or self._state is PoolState.OPENING:
            what = "has not been opened yet; start the container's resources first"
        else:
            what = "is closed; get a new client after starting the container again"
        return PoolClosedError(
            f"the {self._database} database pool {what} (wellwon_db.start_databases(container))",
            database=str(self._database),
        )

    def _not_serving_error(self) -> Exception:
        if self._fork_generation != _fork.generation:
            return self._forked_error()
        if self._state is PoolState.OPEN and self._offline:
            return DatabaseUnavailableError(
                f"the {self._database} database at {self._address} has not answered "
                "since start-up; connecting in the background",
                database=str(self._database),
                may_have_run=False,
            )
        return self._closed_error()

    # -- acquire -------------------------------------------------------------

    async def acquire_connection(self) -> Connection:
        """Take a connection; hand it back with :meth:`release_connection`.

        Raises ``PoolTimeoutError`` after the acquire timeout,
        ``DatabaseUnavailableError`` when a new connection cannot be made,
        ``PoolClosedError`` when the pool is not open.
        """
        connection = self.take_idle()
        if connection is not None:
            return connection
        return await self.acquire_slow(_monotonic())

    def take_idle(self) -> Connection | None:
        """The common case of :meth:`acquire_connection`, with no await: an idle
        connection that needs no check, leased to the caller; else ``None``.

        Raises like :meth:`acquire_connection` when the pool is not serving.
        """
        if not self._serving or self._fork_generation != _fork.generation:
            raise self._not_serving_error()
        idle = self._idle
        if not idle:
            return None
        connection = idle[-1]
        info = self._connections[connection]
        now = _monotonic()
        if self._needs_check(connection, info, now):
            return None  # the slow path checks it
        idle.pop()
        self._begin_lease(info, now, now)
        return connection

    async def acquire_slow(self, started: float) -> Connection:
        """:meth:`acquire_connection` when :meth:`take_idle` found nothing to hand out.

        ``started`` (``time.monotonic()``) is when the caller began waiting.
        """
        if not self._serving or self._fork_generation != _fork.generation:
            raise self._not_serving_error()
        if self._idle:
            connection = self._idle.pop()
        elif self._size < self._max_size:
            connection = await self._grow()
        else:
            connection = await self._wait_turn(self._config.timeout)
        info = self._connections[connection]
        now = _monotonic()
        if self._needs_check(connection, info, now):
            connection = await self._checked(connection, started)
            info = self._connections[connection]
            now = _monotonic()
        self._begin_lease(info, started, now)
        return connection

    def _needs_check(self, connection: Connection, info: ConnectionInfo, now: float) -> bool:
        """Whether an idle ``connection`` must go through :meth:`_checked` before use."""
        return bool(
            (self._validation_idle and now - info.idle_since > self._validation_idle)
            or self._expired(info, now)
            or connection.is_closed()
        )

    def _expired(self, info: ConnectionInfo, now: float) -> bool:
        """Older than ``max_lifetime`` (never, when it is 0)."""
        return bool(self._max_lifetime) and now - info.born > self._max_lifetime

    async def _grow(self) -> Connection:
        """Reserve a new slot (before any await) and open a connection in it."""
        self._size += 1
        return await self._open_in_slot()

    async def _open_in_slot(self) -> Connection:
        """Open a connection in a slot already counted in ``_size``; free it on failure."""
        try:
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    async def _wait_turn(self, timeout: float) -> Connection:
        """Queue (FIFO) until a connection or a free slot is handed to us.

        Raises ``PoolTimeoutError`` after ``timeout`` seconds. A waiter that
        times out or is cancelled after being handed something passes it on,
        so nothing handed out is ever lost. All waiters share one timer:
        their deadlines come in queue order.
        """
        loop = asyncio.get_running_loop()
        turn: Turn = loop.create_future()
        self._waiters.append((loop.time() + timeout, turn))
        if self._expiry is None:
            self._arm_expiry(loop)
        self._waiting += 1
        self._watch_pressure(_monotonic())
        try:
            handed = await turn
        except _TurnTimeout:
            self._stats["timeouts"] += 1
            waiters = self._waiting
            raise PoolTimeoutError(
                f"no connection to the {self._database} database within {timeout:g}s: "
                f"all {self._config.max_size} connections in use, {waiters} tasks waiting "
                f"(raise {self._env('pool_max_size')} or {self._env('pool_timeout_sec')}, "
                "or hold connections for shorter)",
                database=str(self._database),
                max_size=self._config.max_size,
                waiters=waiters,
                timeout=timeout,
            ) from None
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._pass_on(turn.result())  # handed something, then cancelled
            else:
                turn.cancel()  # the queue skips it
            raise
        finally:
            self._waiting -= 1
            self._watch_pressure(_monotonic())
        if handed is None:
            return await self._open_in_slot()
        return handed

    def _arm_expiry(self, loop: asyncio.AbstractEventLoop) -> None:
        self._expiry = loop.call_at(self._waiters[0][0], self._expire_waiters, loop)

    def _expire_waiters(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the waiters whose deadline passed; re-arm for the next one."""
        self._expiry = None
        waiters = self._waiters
        now = loop.time()
        while waiters and waiters[0][0] <= now:
            _, turn = waiters.popleft()
            if not turn.done():
                turn.set_exception(_TurnTimeout())
        while waiters and waiters[0][1].done():
            waiters.popleft()
        if waiters:
            self._arm_expiry(loop)

    def _next_waiter(self) -> Turn | None:
        waiters = self._waiters
        while waiters:
            turn = waiters.popleft()[1]
            if not turn.done():
                return turn
        return None

    def _pass_on(self, handed: Connection | None) -> None:
        if handed is None:
            self._free_slot()
        else:
            self._put_back(handed)

    def _put_back(self, connection: Connection) -> None:
        """A usable connection is free: to the first waiter, else to the idle stack."""
        if self._waiters:
            turn = self._next_waiter()
            if turn is not None:
                turn.set_result(connection)
                return
        self._idle.append(connection)
        if self._drained is not None:
            self._check_drained()

    def _free_slot(self) -> None:
        """A slot is free (its connection is gone): to the first waiter, else uncount it.

        After close every slot is already uncounted: nothing to do.
        """
        if self._state is PoolState.CLOSED:
            return
        if self._waiters and self._state is PoolState.OPEN:
            turn = self._next_waiter()
            if turn is not None:
                turn.set_result(None)  # it opens a connection in this slot
                return
        self._size -= 1
        if self._drained is not None:
            self._check_drained()
        elif self._size < self._config.min_size:
            self._refill_soon()

    def _check_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done() and len(self._idle) >= self._size:
            drained.set_result(None)

    def _acquire_error(self, exc: BaseException) -> BaseException:
        """Translate a failure to open a connection."""
        if isinstance(exc, TimeoutError):
            return DatabaseUnavailableError(
                f"the {self._database} database at {self._address} did not answer "
                f"within the connect timeout of {self._config.connect_timeout:g}s",
                database=str(self._database),
                may_have_run=False,
            )
        return translate_error(
            exc,
            self._database,
            f"connecting to {self._address}",
            may_have_run=False,
            sources=self._connect_params.sources,
        )

    # -- validation ------------------------------------------------------------

    async def _checked(self, connection: Connection, started: float) -> Connection:
        """``connection``, or a live replacement when it is dead, expired or fails its ping.

        A connection idle for longer than ``validation_idle`` is pinged
        (HikariCP's rule). Dead ones are terminated, never closed politely:
        on a silent link a polite close would wait out its timeout. The slot
        in hand moves to the replacement; whatever happens (failure, timeout,
        cancellation) it is handed back exactly once.
        """
        for _ in range(self._config.max_size + 2):
            info = self._connections[connection]
            now = _monotonic()
            if connection.is_closed():
                usable = False
            elif self._expired(info, now):
                self._retire(connection)
                connection = await self._next_connection(started, have_slot=False)
                continue
            elif self._validation_idle and now - info.idle_since > self._validation_idle:
                try:
                    usable = await self._ping(connection)
                except BaseException:
                    # Cancelled mid-ping: the ping may still be in flight.
                    self._discard(connection)
                    self._free_slot()
                    raise
            else:
                return connection
            if usable:
                info.idle_since = _monotonic()
                return connection
            self._stats["validations_failed"] += 1
            self._discard(connection)
            connection = await self._next_connection(started, have_slot=True)
        self._discard(connection)
        self._free_slot()
        raise self._no_live_connection_error()

    def _no_live_connection_error(self) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"the {self._database} database at {self._address}: pooled connections are "
            "dead and no live one could be had in time",
            database=str(self._database),
            may_have_run=False,
        )

    async def _next_connection(self, started: float, *, have_slot: bool) -> Connection:
        """Another connection after a dead or expired one: an idle one, or a new one.

        ``have_slot``: the discarded connection's slot is in hand (freed here
        unless a new connection is opened in it).
        """
        remaining = self._config.timeout - (_monotonic() - started)
        if self._state is not PoolState.OPEN or remaining <= 0:
            if have_slot:
                self._free_slot()
            if self._state is not PoolState.OPEN:
                raise self._not_serving_error()
            raise self._no_live_connection_error()
        if self._idle:
            connection = self._idle.pop()  # it brings its own slot
            if have_slot:
                self._free_slot()
            return connection
        if have_slot:
            return await self._open_in_slot()
        if self._size < self._max_size:
            return await self._grow()
        return await self._wait_turn(remaining)

    async def _ping(self, connection: Connection) -> bool:
        """One round trip within the connect timeout; ``False`` on any failure.

        ``SELECT 1``, not an empty query: asyncpg fails on the server's
        EmptyQueryResponse to a simple query.
        """
        try:
            await connection.execute("SELECT 1", timeout=self._config.connect_timeout)
        except (TimeoutError, Exception):
            logger.debug("a %s connection failed its check", self._database, exc_info=True)
            return False
        return True

    # -- lease bookkeeping ---------------------------------------------------

    def _begin_lease(self, info: ConnectionInfo, started: float, now: float) -> None:
        info.leased_at = now
        tasks = _TASKS
        if tasks is not None:
            info.holder = tasks.get(_running_loop())  # type: ignore[arg-type]
        else:
            info.holder = asyncio.current_task()
        info.uses += 1
        self._stats["acquired"] += 1
        self._leased += 1
        if self._lease_metrics:
            self.telemetry.connection_acquired(now - started)
        self._watch_pressure(now)

    def _end_lease(self, info: ConnectionInfo | None, now: float) -> None:
        if info is not None and info.leased_at is not None:
            if self._lease_metrics:
                self.telemetry.connection_released(now - info.leased_at)
            info.leased_at = None
            info.holder = None
            self._leased -= 1
            self._watch_pressure(now)

    def _watch_pressure(self, now: float) -> None:
        """Warn once per episode of waiters or high utilisation lasting ``exhaustion_warn``."""
        if not self._waiting and self._leased < self._pressure_leases:
            if self._pressure_since is None:
                return  # the common case: no episode, none starting
            pressed = False
        else:
            pressed = bool(self._config.exhaustion_warn)
        config = self._config
        if not pressed:
            if self._pressure_since is not None:
                if self._pressure_warned:
                    logger.info("the %s pool is no longer under pressure", self._database)
                self._pressure_since = None
                self._pressure_warned = False
                if self._pressure_timer is not None:
                    self._pressure_timer.cancel()
                    self._pressure_timer = None
            return
        if self._pressure_since is None:
            self._pressure_since = now
            # A stuck pool has no lease events: a timer ends the episode's wait.
            self._arm_pressure_timer(config.exhaustion_warn)
        elif not self._pressure_warned and now - self._pressure_since >= config.exhaustion_warn:
            self._pressure_warned = True
            self.telemetry.pool_exhausted()
            logger.warning(
                "the %s pool has been under pressure for %.1fs: %d of %d connections in use, "
                "%d tasks waiting (raise %s, or hold connections for shorter)",
                self._database,
                now - self._pressure_since,
                self._leased,
                config.max_size,
                self._waiting,
                self._env("pool_max_size"),
                extra={
                    "database": str(self._database),
                    "in_use": self._leased,
                    "max_size": config.max_size,
                    "waiting": self._waiting,
                },
            )

    def _arm_pressure_timer(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover (leases happen on a loop)
            return
        if self._pressure_timer is not None:
            self._pressure_timer.cancel()
        self._pressure_timer = loop.call_later(delay, self._pressure_timer_fired)

    def _pressure_timer_fired(self) -> None:
        self._pressure_timer = None
        since = self._pressure_since
        if since is None or self._pressure_warned:
            return
        remaining = since + self._config.exhaustion_warn - _monotonic()
        if remaining > 0:  # the loop may run a timer up to its clock resolution early
            self._arm_pressure_timer(remaining)
        else:
            self._watch_pressure(_monotonic())

    # -- release -------------------------------------------------------------

    def give_back(self, connection: Connection, effect: SessionEffect) -> bool:
        """End the lease; return ``connection`` at once when that needs no I/O.

        ``False`` means the connection still needs a reset, a close or a
        terminate: finish with :meth:`finish_release`.
        """
        info = self._connections.get(connection)
        if info is not None and info.leased_at is None:
            raise asyncpg.InterfaceError(
                "this connection was already released to the pool; release it once"
            )
        now = _monotonic()
        self._end_lease(info, now)
        if (
            effect
            or info is None
            or self._always_reset
            or connection.is_in_transaction()
            or connection.is_closed()
            or (self._max_uses and info.uses >= self._max_uses)
            or self._expired(info, now)
        ):
            return False
        info.idle_since = now
        self._put_back(connection)
        return True

    async def finish_release(
        self, connection: Connection, effect: SessionEffect, *, settle: bool = False
    ) -> None:
        """The rest of a release :meth:`give_back` could not do without I/O.

        A connection older than ``max_lifetime``, used ``max_queries`` times,
        or one that a statement made unfit for reuse, is closed instead; the
        pool opens a new one when needed. A ``BROKEN`` connection, or one
        that fails its reset, is terminated. ``settle`` (a cancelled
        caller's connection) pings it first, which waits out a statement
        cancellation still in progress; one that fails is terminated.
        """
        info = self._connections.get(connection)
        if info is None:  # not ours any more (the pool closed or was abandoned)
            with contextlib.suppress(Exception):
                connection.terminate()
            return
        try:
            if effect is SessionEffect.BROKEN or connection.is_closed():
                self._drop(connection)
                return
            if (
                effect is SessionEffect.DISCARD
                or (self._max_uses and info.uses >= self._max_uses)
                or self._expired(info, _monotonic())
            ):
                self._retire(connection)
                return
            if effect or self._always_reset or connection.is_in_transaction():
                self._stats["resets"] += 1
                # As asyncpg's pool: statements, cursors and transactions
                # made during the lease stop working (and leftover listeners
                # are warned of) before the session is reset.
                connection._on_release()  # type: ignore[attr-defined]
                await self._reset(connection)
            elif settle and not await self._ping(connection):
                self._drop(connection)
                return
        except asyncio.CancelledError:
            self._drop(connection)
            raise
        except Exception as exc:
            # The session's state is unknown (reset failed, or the connection
            # is busy cancelling a statement): never hand it out again.
            logger.debug("discarding a %s connection: %r", self._database, exc)
            self._drop(connection)
            return
        info.idle_since = _monotonic()
        self._put_back(connection)

    async def release_connection(
        self, connection: Connection, effect: SessionEffect = SessionEffect.NONE
    ) -> None:
        """Return ``connection``, first undoing what ``effect`` says it left behind.

        See :meth:`finish_release` for when it is closed instead. While the
        pool drains, connections still come back to it.
        """
        if not self.give_back(connection, effect):
            await self.finish_release(connection, effect)

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
        self._end_lease(self._connections.get(connection), _monotonic())
        task = asyncio.get_running_loop().create_task(
            self.finish_release(connection, effect, settle=True),
            name=f"wellwon_db-release-{self._database}",
        )
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("background release failed: %r", task.exception())

    def _drop(self, connection: Connection) -> None:
        """Terminate a connection we hold and free its slot (once)."""
        if connection in self._connections:
            self._discard(connection)
            self._free_slot()

    def _discard(self, connection: Connection) -> None:
        """Terminate ``connection`` at once and stop tracking it; its slot stays counted."""
        if self._connections.pop(connection, None) is not None:
            self._stats["connections_retired"] += 1
        with contextlib.suppress(Exception):
            connection.terminate()

    def _forget(self, connection: Connection) -> None:
        self._connections.pop(connection, None)

    def _retire(self, connection: Connection) -> None:
        """Stop using ``connection`` and close it politely in the background.

        Its slot stays counted until it is closed, so the server never sees
        more than ``max_size`` of our connections.
        """
        self._stats["connections_retired"] += 1
        self._forget(connection)
        self._close_soon(connection)

    def _close_soon(self, connection: Connection) -> None:
        """Close a connection the pool no longer tracks, politely, in the background."""
        task = asyncio.get_running_loop().create_task(
            self._close_in_slot(connection),
            name=f"wellwon_db-close-{self._database}",
        )
        self._releasing.add(task)
        task.add_done_callback(self._released)

    async def _reset(self, connection: Connection) -> None:
        """Roll back, clear asyncpg's session bookkeeping, run :data:`RESET_SQL`."""
        async with asyncio.timeout(self._config.command_timeout):
            if connection.is_in_transaction():
                await connection.execute("ROLLBACK")  # quietly, whoever began it
            await connection.reset()

    # -- raw leases ----------------------------------------------------------

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A raw connection for the block; fully reset when it comes back.

        The connection is asyncpg's; anything may be done with it, so its
        session is always reset on release. Using it after the block raises
        asyncpg's ``InterfaceError``.
        """
        connection = await self.acquire_connection()
        async with self.lease(connection) as lent:
            yield lent

    def _on_terminated(self, connection: Any) -> None:
        """asyncpg termination listener: an idle connection that died leaves the pool.

        A leased one is noticed when it comes back.
        """
        try:
            self._idle.remove(connection)
        except ValueError:
            return
        if self._connections.pop(connection, None) is not None:
            self._stats["connections_retired"] += 1
        self._free_slot()

    @asynccontextmanager
    async def lease(self, connection: Connection) -> AsyncIterator[Connection]:
        """Lend ``connection`` for the block; release it (fully reset) when the block ends.

        The block gets a :class:`RawConnection` that refuses use after the
        block. A cancelled block releases in the background, so cancellation
        is never held up by a connection that is still settling.
        """
        lent = RawConnection(connection)
        try:
            yield cast("Connection", lent)
        except asyncio.CancelledError:
            lent.detach()
            self.release_soon(connection, SessionEffect.RESET)
            raise
        except BaseException:
            lent.detach()
            await self.release_connection(connection, SessionEffect.RESET)
            raise
        lent.detach()
        await self.release_connection(connection, SessionEffect.RESET)

    async def _close_in_slot(self, connection: Connection) -> None:
        try:
            await close_or_terminate(connection, self._config.command_timeout)
        finally:
            self._free_slot()


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
