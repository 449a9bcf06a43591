"""One call to a database through its breaker, its pool and its retry policy.

``run_guarded`` is the per-query path of every client: breaker check (O(1),
no I/O), lease, statement, release (reset only when needed), outcome
recorded, errors translated. Only a retryable failure enters tenacity; the
attempts after it share the first one's span (one operation as the caller
sees it, as the OpenTelemetry conventions ask).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from opentelemetry.trace import Span

from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._write_tracking import record_position
from wellwon_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    PoolClosedError,
    PoolTimeoutError,
    WrongEventLoopError,
)
from wellwon_db.pool._failures import is_availability_failure
from wellwon_db.pool._failures import translate_error as _translate
from wellwon_db.pool._pool import Connection
from wellwon_db.pool._session import (
    SessionEffect,
    reads_sequence_state,
    session_effect,
    writes_data,
)
from wellwon_db.resilience._breaker import CircuitBreaker
from wellwon_db.resilience._retry import is_retryable
from wellwon_db.telemetry._telemetry import PoolTelemetry, record_refused

__all__ = ["StatementCall", "record_outcome", "run_guarded"]

_T = TypeVar("_T")
#: ``call(connection, query, args, timeout)``: the asyncpg method to run.
StatementCall = Callable[[Connection, str, Any, float | None], Awaitable[_T]]

_monotonic = time.monotonic
# Members as module constants: reading one off its enum costs 130-210 ns on 3.11.
_NONE, _BROKEN = SessionEffect.NONE, SessionEffect.BROKEN


def record_outcome(breaker: CircuitBreaker, exc: BaseException, started: float) -> None:
    """Tell ``breaker`` how a call that raised ``exc`` ended.

    A pool timeout is no verdict on the database: the application holds
    every connection (a slow database shows as slow calls and command
    timeouts, an unreachable one as connect failures). Nor is a
    configuration error: a refused login or certificate is fixed by an
    operator, and opening the breaker would hide it behind ``CircuitOpenError``.
    """
    if isinstance(
        exc,
        asyncio.CancelledError
        | PoolClosedError
        | PoolTimeoutError
        | ConfigurationError
        | WrongEventLoopError,
    ):
        breaker.record_ignored()
    elif is_availability_failure(exc):
        breaker.record_failure(_monotonic() - started)
    else:
        # The database answered (an SQL error is an answer).
        breaker.record_success(_monotonic() - started)


async def run_guarded(
    slot: PoolSlot,
    call: StatementCall[_T],
    query: str,
    args: Any,
    timeout: float | None,
    idempotent: bool,
    batch: int | None = None,
    *,
    retrying: _Retrying | None = None,
) -> _T:
    """Run one statement on ``slot``'s pool; retry only when it is safe (see ``_retry``).

    One CLIENT span per call, its attempts included; ``batch`` is the number
    of parameter sets of an ``executemany``. A call refused before reaching
    the database (pool not open, breaker open) is counted as refused, not as
    an operation. The first attempt runs in this frame (no wrapper coroutine
    on the hot path); after a retryable failure the policy runs the next ones
    (``retrying`` carries the span they share).
    """
    pool = slot.pool
    if pool is None:
        if retrying is None:
            record_refused(str(slot.database), "pool_closed")
        raise slot.no_pool_error()
    leases = pool.leases
    breaker = slot.breaker
    if retrying is None:
        telemetry = pool.telemetry
        try:
            breaker.allow()
        except BaseException:
            telemetry.refused("breaker_open")
            raise
        span = telemetry.start(query, parameterized=bool(args), batch=batch)
    else:
        telemetry, span = retrying.telemetry, retrying.span
        breaker.allow()
    started = _monotonic()
    try:
        holder = leases.lease_nowait() or await leases.lease(started)
    except BaseException as exc:
        record_outcome(breaker, exc, started)
        if retrying is not None:
            retrying.failed(exc)
            raise
        if _may_retry(slot, exc, idempotent):
            telemetry.attempt_failed(span, exc)
            return await _retry(
                slot, call, query, args, timeout, idempotent, batch, exc, started, span, telemetry
            )
        telemetry.finish(span, query, started, exc, batch=batch)
        raise
    if timeout is None:
        leases.watch(holder, started)  # the pool's watchdog times it (see _watchdog.py)
    connection = holder.connection
    assert connection is not None  # a leased holder has one
    effect = _NONE
    sent = _monotonic()
    if retrying is not None:
        retrying.sent = sent
    try:
        if span is not None:
            telemetry.waited(span, sent - started)
        effect = session_effect(query)
        if holder.stale_sequences and reads_sequence_state(query):
            await leases.clear_sequences(holder)  # an earlier borrower's lastval() goes
        result = await call(connection, query, args, timeout)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and leases.timed_out(holder):
            # The watchdog's cancellation: the statement ran past the command timeout.
            timed_out = leases.timeout_error()
            record_outcome(breaker, timed_out, started)
            if retrying is None:
                telemetry.finish(span, query, started, timed_out, sent=sent, batch=batch)
            # The server's cancellation may still be settling: release in the background.
            leases.release_in_background(holder, effect)
            raise timed_out from None
        error = _translate(exc, pool.database, "running a query")
        record_outcome(breaker, error, started)
        again = retrying is None and _may_retry(slot, error, idempotent)
        if retrying is None and not again:
            telemetry.finish(span, query, started, error, sent=sent, batch=batch)
        if isinstance(exc, asyncio.CancelledError):
            # The statement may still be in flight: don't make a cancelled caller wait.
            leases.release_in_background(holder, effect)
            raise
        if isinstance(error, DatabaseUnavailableError | WrongEventLoopError):
            effect = _BROKEN  # the connection is not to be trusted again
        await leases.release(holder, effect)
        if retrying is not None:
            retrying.failed(error)
        elif again:
            if error is not exc:
                error.__cause__ = exc  # as `raise error from exc`, should it be re-raised
            telemetry.attempt_failed(span, error)
            return await _retry(
                slot,
                call,
                query,
                args,
                timeout,
                idempotent,
                batch,
                error,
                started,
                span,
                telemetry,
            )
        if error is exc:
            raise
        raise error from exc
    # The outcome is recorded before the release, so a caller cancelled while
    # the connection goes back still frees its half-open probe.
    breaker.record_success(_monotonic() - started)
    if retrying is None:
        telemetry.finish(span, query, started, sent=sent, batch=batch)
    if slot.track_writes and writes_data(query):
        try:
            await record_position(slot, connection)
        except asyncio.CancelledError:
            leases.release_in_background(holder, effect)
            raise
        except Exception:
            effect = _BROKEN  # the statement committed; its connection did not last
    if not leases.release_nowait(holder, effect):
        await leases.finish_release(holder, effect)
    return result


def _may_retry(slot: PoolSlot, error: BaseException, idempotent: bool) -> bool:
    return (
        isinstance(error, DatabaseUnavailableError)
        and slot.retry.enabled
        and is_retryable(error, idempotent=idempotent)
    )


class _Retrying:
    """The span the attempts after the first share, and when the latest was sent."""

    __slots__ = ("sent", "span", "telemetry")

    def __init__(self, telemetry: PoolTelemetry, span: Span | None) -> None:
        self.telemetry = telemetry
        self.span = span
        self.sent: float | None = None

    def failed(self, error: BaseException) -> None:
        self.telemetry.attempt_failed(self.span, error)


async def _retry(
    slot: PoolSlot,
    call: StatementCall[_T],
    query: str,
    args: Any,
    timeout: float | None,
    idempotent: bool,
    batch: int | None,
    error: BaseException,
    started: float,
    span: Span | None,
    telemetry: PoolTelemetry,
) -> _T:
    """The attempts after a retryable first failure, per the database's retry policy.

    The operation ends here: one duration and one span for all attempts.
    """
    retrying = _Retrying(telemetry, span)
    try:
        result = await slot.retry.retry_after(
            error,
            started,
            lambda: run_guarded(
                slot, call, query, args, timeout, idempotent, batch, retrying=retrying
            ),
            functools.partial(is_retryable, idempotent=idempotent),
        )
    except BaseException as exc:
        telemetry.finish(span, query, started, exc, sent=retrying.sent, batch=batch)
        raise
    telemetry.finish(span, query, started, sent=retrying.sent, batch=batch)
    return result
