"""One call to a database through its breaker, its pool and its retry policy.

``run_guarded`` is the per-query path of every client: breaker check (O(1),
no I/O), acquire, statement, release (reset only when needed), outcome
recorded, errors translated. Only a retryable failure enters tenacity.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from wellwon_db.client._slot import PoolSlot
from wellwon_db.errors import DatabaseUnavailableError, PoolClosedError
from wellwon_db.pool._failures import is_availability_failure
from wellwon_db.pool._failures import translate_error as _translate
from wellwon_db.pool._pool import Connection
from wellwon_db.pool._session import SessionEffect, session_effect
from wellwon_db.resilience._breaker import CircuitBreaker
from wellwon_db.resilience._retry import is_retryable

__all__ = ["StatementCall", "record_outcome", "run_guarded"]

_T = TypeVar("_T")
#: ``call(connection, query, args, timeout)``: the asyncpg method to run.
StatementCall = Callable[[Connection, str, Any, float | None], Awaitable[_T]]

_monotonic = time.monotonic
# Members as module constants: reading one off its enum costs 130-210 ns on 3.11.
_NONE, _BROKEN = SessionEffect.NONE, SessionEffect.BROKEN


def record_outcome(breaker: CircuitBreaker, exc: BaseException, started: float) -> None:
    """Tell ``breaker`` how a call that raised ``exc`` ended."""
    if isinstance(exc, asyncio.CancelledError | PoolClosedError):
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
    batch: bool = False,
    *,
    first: bool = True,
) -> _T:
    """Run one statement on ``slot``'s pool; retry only when it is safe (see ``_retry``).

    Each attempt is one CLIENT span; ``batch`` marks ``executemany``. The
    first attempt runs in this frame (no wrapper coroutine on the hot path);
    after a retryable failure the policy runs the next ones (``first=False``).
    """
    pool = slot.get()
    leases = pool.leases
    telemetry = pool.telemetry
    span = telemetry.start(query, batch=batch)
    started = _monotonic()
    breaker = slot.breaker
    try:
        breaker.allow()
    except BaseException as exc:
        telemetry.finish(span, query, started, exc, batch=batch)
        raise
    try:
        holder = leases.lease_nowait() or await leases.lease(started)
    except BaseException as exc:
        record_outcome(breaker, exc, started)
        telemetry.finish(span, query, started, exc, batch=batch)
        if first and _may_retry(slot, exc, idempotent):
            return await _retry(slot, call, query, args, timeout, idempotent, batch, exc, started)
        raise
    if timeout is None:
        leases.watch(holder, started)  # the pool's watchdog times it (see _watchdog.py)
    connection = holder.connection
    assert connection is not None  # a leased holder has one
    effect = _NONE
    try:
        if span is not None:
            telemetry.waited(span, _monotonic() - started)
        effect = session_effect(query)
        result = await call(connection, query, args, timeout)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and leases.timed_out(holder):
            # The watchdog's cancellation: the statement ran past the command timeout.
            timed_out = leases.timeout_error()
            record_outcome(breaker, timed_out, started)
            telemetry.finish(span, query, started, timed_out, batch=batch)
            # The server's cancellation may still be settling: release in the background.
            leases.release_in_background(holder, effect)
            raise timed_out from None
        error = _translate(exc, pool.database, "running a query")
        record_outcome(breaker, error, started)
        telemetry.finish(span, query, started, error, batch=batch)
        if isinstance(exc, asyncio.CancelledError):
            # The statement may still be in flight: don't make a cancelled caller wait.
            leases.release_in_background(holder, effect)
            raise
        if isinstance(error, DatabaseUnavailableError):
            effect = _BROKEN  # the connection is not to be trusted again
        await leases.release(holder, effect)
        if first and _may_retry(slot, error, idempotent):
            if error is not exc:
                error.__cause__ = exc  # as `raise error from exc`, should it be re-raised
            return await _retry(
                slot, call, query, args, timeout, idempotent, batch, error, started
            )
        if error is exc:
            raise
        raise error from exc
    # The outcome is recorded before the release, so a caller cancelled while
    # the connection goes back still frees its half-open probe.
    breaker.record_success(_monotonic() - started)
    telemetry.finish(span, query, started, batch=batch)
    if not leases.release_nowait(holder, effect):
        await leases.finish_release(holder, effect)
    return result


def _may_retry(slot: PoolSlot, error: BaseException, idempotent: bool) -> bool:
    return (
        isinstance(error, DatabaseUnavailableError)
        and slot.retry.enabled
        and is_retryable(error, idempotent=idempotent)
    )


async def _retry(
    slot: PoolSlot,
    call: StatementCall[_T],
    query: str,
    args: Any,
    timeout: float | None,
    idempotent: bool,
    batch: bool,
    error: BaseException,
    started: float,
) -> _T:
    """The attempts after a retryable first failure, per the database's retry policy."""
    return await slot.retry.retry_after(
        error,
        started,
        lambda: run_guarded(slot, call, query, args, timeout, idempotent, batch, first=False),
        functools.partial(is_retryable, idempotent=idempotent),
    )
