"""Lending connections and taking them back: the per-call path of a pool.

:class:`Leases` carries out the decisions of the slot machine
(``_slots.py``): it awaits the connects, checks, resets and closes those
decisions call for, and keeps the lease counters. Queued callers are
``_waiting.py``'s, the command-timeout watch ``_watchdog.py``'s. The pool
(``_pool.py``) owns a ``Leases`` and drives its lifecycle.

The API the client layer uses, in the order of a call::

    holder = leases.lease_nowait() or await leases.lease(started)
    leases.watch(holder, started)          # a single statement, no timeout= given
    ... await holder.connection.fetch(...) ...
    if not leases.release_nowait(holder, effect):
        await leases.finish_release(holder, effect)
    # a cancelled caller: leases.release_in_background(holder, effect)

``lease_nowait``/``release_nowait`` are the common case without an await:
an idle connection out and back unchanged. Everything that needs I/O (a
connection to open or check, a waiter's turn, a reset, a close) is in the
awaitable counterparts. A connection used for more than one statement (a
transaction, a raw ``acquire()``, see ``_raw.py``) is lent with
:meth:`lend`, which gives it asyncpg's own command timeout for the lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import asyncpg

from wellwon_db.config._policies import PoolConfig
from wellwon_db.errors import DatabaseUnavailableError
from wellwon_db.pool import _fork, _watchdog
from wellwon_db.pool._connector import Connection, Connector, close_or_terminate, holder_of
from wellwon_db.pool._pressure import PressureWatch
from wellwon_db.pool._session import SessionEffect
from wellwon_db.pool._slots import Holder, Slots, Stage, Waiter
from wellwon_db.pool._waiting import AsyncWaiter, WaitQueue
from wellwon_db.telemetry._telemetry import PoolTelemetry

__all__ = ["Leases"]

logger = logging.getLogger("wellwon_db.pool")

_monotonic = time.monotonic
_current_task = asyncio.current_task
# Members as module constants: reading one off its enum costs 130-210 ns on 3.11.
_OPENING = Stage.OPENING
_IDLE = Stage.IDLE
_LEASED = Stage.LEASED
_RETURNING = Stage.RETURNING
_GONE = Stage.GONE
_DISCARD = SessionEffect.DISCARD
_NONE = SessionEffect.NONE
_SEQUENCES = SessionEffect.SEQUENCES
_BROKEN = SessionEffect.BROKEN


class Leases:
    """Acquire and release for one pool; see the module docs for the call sequence.

    ``refused`` builds the error for a pool not serving (not open, closed,
    offline, forked); ``below_min`` is called when the pool fell below
    ``min_size``, ``connected`` after every successful connect (both hooks
    of the pool's refill).
    """

    #: Watch the single statement about to run (see ``_watchdog.watch``).
    watch = staticmethod(_watchdog.watch)
    #: Whether a caught ``CancelledError`` was the watchdog's (``_watchdog.timed_out``).
    timed_out = staticmethod(_watchdog.timed_out)

    def __init__(
        self,
        name: str,
        config: PoolConfig,
        connector: Connector,
        telemetry: PoolTelemetry,
        *,
        refused: Callable[[], Exception],
        below_min: Callable[[], None],
        connected: Callable[[], None],
    ) -> None:
        self.slots: Slots[Connection] = Slots(config.max_size, config.min_size)
        self.waiters = WaitQueue(name, config, self.slots)
        #: True while calls may take connections: the one check of the per-call path.
        self.serving = False
        #: The fork generation the pool opened in; another one means a forked child.
        self.generation = _fork.generation
        self.telemetry = telemetry
        self._name = name
        self._config = config
        self._connector = connector
        self._refused = refused
        self._below_min = below_min
        self._connected = connected
        self._pressure = PressureWatch(
            name, config, telemetry, counts=lambda: (self.leased, self.slots.waiting)
        )
        self._drain: asyncio.Future[None] | None = None
        #: Background releases and closes still running.
        self.releasing: set[asyncio.Task[None]] = set()
        self.leased = 0
        self.acquired = 0
        self.resets = 0
        self.validations_failed = 0

    # -- acquire -------------------------------------------------------------

    def lease_nowait(self) -> Holder[Connection] | None:
        """An idle connection that needs no check, leased to the caller; else ``None``.

        No await. ``None`` means: call :meth:`lease`. Raises the pool's
        refusal (``PoolClosedError``, ``DatabaseUnavailableError``) when the
        pool is not serving.
        """
        if not self.serving or self.generation != _fork.generation:
            raise self._refused()
        idle = self.slots.idle
        if not idle:
            return None
        holder = idle[-1]
        now = _monotonic()
        if self._needs_check(holder, now):
            return None  # lease() checks it
        self.slots.lease_idle(now)
        self._begin(holder, now, now)
        return holder

    async def lease(self, started: float, timeout: float | None = None) -> Holder[Connection]:
        """A connection for the caller: idle, newly opened, or after queueing for one.

        ``started`` (``time.monotonic()``) is when the caller began; it
        waits at most ``timeout`` seconds from then (default: the pool's
        acquire timeout), else ``PoolTimeoutError``. ``DatabaseUnavailableError``
        when no live connection can be had, the pool's refusal when it is
        not serving.
        """
        if not self.serving or self.generation != _fork.generation:
            raise self._refused()
        if timeout is None:
            timeout = self._config.timeout
        # Idle, else a free slot, else a turn: inline (one coroutine frame),
        # since above the pool size every call comes here.
        now = _monotonic()
        holder = self.slots.acquire(now)
        if holder is None:
            waiter = self.waiters.enter(started + timeout)
            # Queued: an episode of pressure may begin without any lease event.
            self._pressure.update(now, self.leased, self.slots.waiting)
            try:
                await waiter.future
            except asyncio.CancelledError:
                self._withdraw(waiter)
                raise
            holder = waiter.grant
            if holder is None:
                raise self._turn_failed(waiter, started, timeout)
            # A connection handed over was given back good a moment ago: no check.
        elif holder.stage is _LEASED and self._needs_check(holder, now):
            holder = await self._checked(holder, started, timeout)
        if holder.stage is _OPENING:
            holder = await self.open_in(holder)
        now = _monotonic()
        self._begin(holder, started, now)
        return holder

    async def _obtain(self, started: float, timeout: float) -> Holder[Connection]:
        """What :meth:`lease` does before the check: idle, a new connection, or a turn."""
        holder = self.slots.acquire(_monotonic())
        if holder is None:
            waiter = self.waiters.enter(started + timeout)
            try:
                await waiter.future
            except asyncio.CancelledError:
                self._withdraw(waiter)
                raise
            holder = waiter.grant
            if holder is None:
                raise self._turn_failed(waiter, started, timeout)
        if holder.stage is _OPENING:
            holder = await self.open_in(holder)
        return holder

    def _withdraw(self, waiter: AsyncWaiter) -> None:
        """A queued caller was cancelled: what it was handed meanwhile goes on."""
        grant = self.slots.withdraw(waiter)
        if grant is not None:
            self._after(self.slots.pass_on(grant, _monotonic()))

    def _turn_failed(self, waiter: AsyncWaiter, started: float, timeout: float) -> Exception:
        """Why a queued caller got nothing: the pool closed, it was failed (its database is
        down), or its own deadline passed."""
        if self.slots.closing or not self.serving:
            return self._refused()
        if waiter.error is not None:
            return waiter.error
        return self.waiters.timeout_error(waiter, started, timeout)

    async def open_in(self, holder: Holder[Connection]) -> Holder[Connection]:
        """Open a connection in ``holder``'s reserved slot; the slot is freed on failure.

        The holder is then ``LEASED`` to the caller (give it back with
        :meth:`put_back`). Raises what connecting raises, or the pool's
        refusal when it closed meanwhile.
        """
        started = _monotonic()
        try:
            connection = await self._connector.connect()
        except BaseException:
            self._after(self.slots.open_failed(holder))
            raise
        now = _monotonic()
        if not self.slots.opened(holder, connection, now) or self.generation != _fork.generation:
            connection.terminate()  # the pool closed (or this is a forked child) meanwhile
            self._after(self.slots.drop(holder))
            raise self._refused()
        connection.holder = holder  # type: ignore[attr-defined]
        connection.add_termination_listener(self._on_terminated)
        self.telemetry.connection_created(now - started)
        self._connected()
        return holder

    def _needs_check(self, holder: Holder[Connection], now: float) -> bool:
        """Whether an idle connection must go through :meth:`_checked` before use."""
        config = self._config
        connection = holder.connection
        assert connection is not None
        return bool(
            (config.validation_idle and now - holder.idle_since > config.validation_idle)
            or (config.max_lifetime and now - holder.born > config.max_lifetime)
            or connection.is_closed()
        )

    def _expired(self, holder: Holder[Connection], now: float) -> bool:
        """Older than ``max_lifetime`` (never, when it is 0)."""
        lifetime = self._config.max_lifetime
        return bool(lifetime) and now - holder.born > lifetime

    async def _checked(
        self, holder: Holder[Connection], started: float, timeout: float
    ) -> Holder[Connection]:
        """``holder``, or a live replacement when it is dead, expired or fails its ping.

        A connection idle longer than ``validation_idle`` is pinged
        (HikariCP's rule). Dead ones are terminated, never closed politely:
        on a silent link a polite close would wait out its timeout. Whatever
        happens (failure, timeout, cancellation), the slot in hand is passed
        on exactly once.
        """
        validation = self._config.validation_idle
        for _ in range(self._config.max_size + 2):
            connection = cast("Connection", holder.connection)
            now = _monotonic()
            if connection.is_closed():
                pass  # dead: replaced below
            elif self._expired(holder, now):
                self.retire(holder)  # keeps its slot until closed: get another
                self._still_in_time(started, timeout, None)
                holder = await self._obtain(started, timeout)
                continue
            elif validation and now - holder.idle_since > validation:
                try:
                    usable = await self._connector.ping(connection)
                except BaseException:
                    self.drop(holder)  # cancelled mid-ping: the ping may still be in flight
                    raise
                if usable:
                    holder.idle_since = _monotonic()
                    return holder
            else:
                return holder
            self.validations_failed += 1
            connection.terminate()
            self._still_in_time(started, timeout, holder)
            if self.slots.idle:  # another idle one: take it, free the dead one's slot
                self.drop(holder)
                holder = cast("Holder[Connection]", self.slots.lease_idle(_monotonic()))
            else:  # open a replacement in the same slot, without queueing again
                holder = await self.open_in(self.slots.replace(holder))
        self.drop(holder)
        raise self._no_live_connection_error()

    def _still_in_time(
        self, started: float, timeout: float, holder: Holder[Connection] | None
    ) -> None:
        """Raise (dropping ``holder``) when the pool stopped serving or the caller's time is up."""
        if self.serving and _monotonic() - started < timeout:
            return
        if holder is not None:
            self.drop(holder)
        raise self._refused() if not self.serving else self._no_live_connection_error()

    def _no_live_connection_error(self) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"the {self._name} database at {self._connector.address}: pooled connections are "
            "dead and no live one could be had in time",
            database=self._name,
            may_have_run=False,
        )

    # -- lease bookkeeping -------------------------------------------------------

    def _begin(self, holder: Holder[Connection], started: float, now: float) -> None:
        holder.owner = _current_task()
        holder.leased_at = now
        holder.uses += 1
        self.acquired += 1
        self.leased += 1
        if self._config.lease_metrics:
            self.telemetry.connection_acquired(now - started)
        pressure = self._pressure
        # Only when an episode may start, go on or end.
        if self.slots.waiting or self.leased >= pressure.threshold or pressure.since is not None:
            pressure.update(now, self.leased, self.slots.waiting)

    def _end(self, holder: Holder[Connection], now: float) -> None:
        if self._config.lease_metrics:
            self.telemetry.connection_released(now - holder.leased_at)
        holder.owner = None
        self.leased -= 1
        pressure = self._pressure
        # A release can only end an episode (the next lease notes one going on).
        if (
            pressure.since is not None
            and not self.slots.waiting
            and self.leased < (pressure.threshold)
        ):
            pressure.update(now, self.leased, 0)

    def timeout_error(self) -> TimeoutError:
        """The error of a statement the watchdog cancelled (see :attr:`timed_out`)."""
        return _watchdog.timeout_error(self._name, self._config.command_timeout)

    def cancel_overdue(self, now: float) -> int:
        """Cancel watched statements past the command timeout; how many. (The watchdog.)"""
        return _watchdog.cancel_overdue(self.slots.holders, now, self._config.command_timeout)

    # -- release -------------------------------------------------------------

    def release_nowait(self, holder: Holder[Connection], effect: SessionEffect) -> bool:
        """End the lease; return the connection at once when that needs no I/O.

        ``False`` means it still needs a reset, a close or a terminate:
        finish with :meth:`finish_release`. Raises asyncpg's ``InterfaceError``
        when the lease already ended (a double release).
        """
        # The statement is over: the watchdog must not cancel what follows.
        holder.watch_since = 0.0
        if holder.stage is not _LEASED:
            return self._not_leased(holder)
        now = _monotonic()
        self._end(holder, now)
        connection = holder.connection
        assert connection is not None
        if holder.timed:
            self._connector.driver_timeout(connection, False)
            holder.timed = False
        config = self._config
        if effect is _SEQUENCES and config.reset != "always":
            # Sequence state is discarded lazily, before a statement that reads
            # it (see clear_sequences): an INSERT pays no reset round trip.
            holder.stale_sequences = True
            effect = _NONE
        if (
            effect
            or config.reset == "always"
            or connection.is_in_transaction()
            or connection.is_closed()
            or (config.max_queries and holder.uses >= config.max_queries)
            or (config.max_lifetime and now - holder.born > config.max_lifetime)
        ):
            self.slots.begin_return(holder)
            return False
        if self.slots.put_back(holder, now) is None and self._drain is not None:
            self._check_drained()
        return True

    def _not_leased(self, holder: Holder[Connection]) -> bool:
        if holder.stage is _GONE:  # the pool closed or abandoned it meanwhile
            if holder.connection is not None:
                holder.connection.terminate()
            return True
        raise asyncpg.InterfaceError(
            "this connection was already released to the pool; release it once"
        )

    async def release(self, holder: Holder[Connection], effect: SessionEffect) -> None:
        """Release ``holder``: :meth:`release_nowait`, then :meth:`finish_release` if needed."""
        if not self.release_nowait(holder, effect):
            await self.finish_release(holder, effect)

    async def finish_release(
        self, holder: Holder[Connection], effect: SessionEffect, *, settle: bool = False
    ) -> None:
        """The rest of a release that :meth:`release_nowait` could not do without I/O.

        A connection older than ``max_lifetime``, used ``max_queries`` times,
        or one that a statement made unfit for reuse, is closed instead; the
        pool opens a new one when needed. A ``BROKEN`` connection, or one
        that fails its reset, is terminated. ``settle`` (a cancelled
        caller's connection) pings it first, which waits out a statement
        cancellation still in progress; one that fails is terminated.
        """
        if holder.stage is not _RETURNING:
            return  # the pool closed or abandoned it meanwhile
        connection = cast("Connection", holder.connection)
        config = self._config
        try:
            if effect is _BROKEN or connection.is_closed():
                self.drop(holder)
                return
            if (
                effect is _DISCARD
                or (config.max_queries and holder.uses >= config.max_queries)
                or self._expired(holder, _monotonic())
            ):
                self.retire(holder)
                return
            if effect or config.reset == "always" or connection.is_in_transaction():
                self.resets += 1
                # As asyncpg's pool: statements, cursors and transactions made
                # during the lease stop working (and leftover listeners are
                # warned of) before the session is reset.
                connection._on_release()  # type: ignore[attr-defined]
                await self._connector.reset(connection)
                holder.stale_sequences = False  # the reset discards sequences too
            elif settle and not await self._connector.ping(connection):
                self.drop(holder)
                return
        except asyncio.CancelledError:
            self.drop(holder)
            raise
        except Exception as exc:
            # The session's state is unknown (reset failed, or the connection
            # is busy cancelling a statement): never hand it out again.
            logger.debug("discarding a %s connection: %r", self._name, exc)
            self.drop(holder)
            return
        if holder.stage is _RETURNING:
            self.put_back(holder)
        else:  # the pool closed while it was being reset
            connection.terminate()

    def release_in_background(self, holder: Holder[Connection], effect: SessionEffect) -> None:
        """:meth:`release` in a background task, for a cancelled caller.

        A statement cancelled mid-flight makes asyncpg wait for the server to
        confirm the cancellation before the connection can be reused; on a
        silent network that is bounded only by the connect timeout. The
        cancelled caller must not wait for it, so the release (and the
        clean-up or discard it decides) finishes on its own.
        """
        holder.watch_since = 0.0  # the caller is gone: nothing left to time out
        if holder.stage is not _LEASED:
            self._not_leased(holder)
            return
        self._end(holder, _monotonic())
        if holder.timed:
            self._connector.driver_timeout(cast("Connection", holder.connection), False)
            holder.timed = False
        self.slots.begin_return(holder)
        self._spawn(self.finish_release(holder, effect, settle=True), "release")

    def _spawn(self, work: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"wellwon_db-{what}-{self._name}")
        self.releasing.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self.releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("background release failed: %r", task.exception())

    def put_back(self, holder: Holder[Connection]) -> None:
        """A good connection back: to the first waiter, else onto the idle stack."""
        if self.slots.put_back(holder, _monotonic()) is None and self._drain is not None:
            self._check_drained()

    def drop(self, holder: Holder[Connection]) -> None:
        """Terminate ``holder``'s connection (no I/O awaited) and free its slot, once."""
        if holder.connection is not None:
            holder.connection.terminate()
        self._after(self.slots.drop(holder))

    def retire(self, holder: Holder[Connection]) -> None:
        """Close ``holder``'s connection politely in the background; its slot stays counted.

        The server never sees more than ``max_size`` of our connections.
        """
        self.slots.retire(holder)
        self._spawn(self._close_in_slot(holder), "close")

    async def _close_in_slot(self, holder: Holder[Connection]) -> None:
        try:
            await close_or_terminate(
                cast("Connection", holder.connection), self._config.command_timeout
            )
        finally:
            self._after(self.slots.closed(holder))

    def _after(self, served: Waiter[Connection] | None) -> None:
        """After a slot was freed: refill below ``min_size``, or note the drain."""
        if served is not None:
            return  # a waiter took the slot (and was woken)
        if self._drain is not None:
            self._check_drained()
        elif self.serving and self.slots.count < self.slots.min_size:
            self._below_min()

    def _on_terminated(self, connection: Any) -> None:
        """asyncpg's termination listener: an idle connection that died leaves at once.

        A leased one is noticed when it comes back.
        """
        holder = holder_of(connection)
        if holder is not None and holder.stage is _IDLE:
            self._after(self.slots.drop(holder))

    # -- connection-level API (raw use) ------------------------------------------

    async def clear_sequences(self, holder: Holder[Connection]) -> None:
        """``DISCARD SEQUENCES`` on ``holder``'s session when it holds an earlier borrower's
        sequence state: before a statement reading ``lastval()``/``currval()``, or raw use."""
        if holder.stale_sequences:
            await cast("Connection", holder.connection).execute("DISCARD SEQUENCES")
            holder.stale_sequences = False

    def lend(self, holder: Holder[Connection]) -> Connection:
        """``holder``'s connection for arbitrary use: asyncpg's own command timeout on.

        Statements the pool does not watch (anything run on a connection
        lent raw, a transaction's) are timed by asyncpg until the release.
        """
        connection = cast("Connection", holder.connection)
        if not holder.timed:
            self._connector.driver_timeout(connection, True)
            holder.timed = True
        return connection

    # -- the pool's end ------------------------------------------------------------

    async def wait_drained(self, deadline: float) -> bool:
        """Wait until every slot is idle or free; ``False`` at ``deadline`` (monotonic)."""
        if self.slots.drained:
            return True
        self._drain = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(max(deadline - _monotonic(), 0.0)):
                await self._drain
        except TimeoutError:
            return False
        finally:
            self._drain = None
        return True

    def _check_drained(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done() and self.slots.drained:
            drain.set_result(None)

    def fail_waiters(self, error: Callable[[], Exception]) -> int:
        """Fail the callers queued now with ``error()``; how many. The pool keeps serving."""
        return self.waiters.fail_all(error)

    def stop(self) -> None:
        """Stop serving: queued callers get the pool's refusal at once, not at their timeout."""
        self.serving = False
        self.waiters.stop()
        self._pressure.stop()

    def straggler_names(self, now: float) -> list[str]:
        """``"<task name> (held 1.2s)"`` for every connection still lent, for the close log."""
        names = []
        for holder in self.slots.busy():
            owner = holder.owner
            name = owner.get_name() if isinstance(owner, asyncio.Task) else "unknown task"
            names.append(f"{name} (held {now - holder.leased_at:.1f}s)")
        return names

    def finish(self) -> None:
        """Every connection still tracked is terminated; every slot is free."""
        for task in self.releasing:  # the pool is gone: nothing left for them to do
            task.cancel()
        for holder in self.slots.finish():
            if holder.connection is not None:
                holder.connection.terminate()
