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
from wellwon_db.client._write_tracking import record_position
from wellwon_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    PoolClosedError,
    PoolTimeoutError,
)
from wellwon_db.pool._failures import is_availability_failure
from wellwon_db.pool._failures import translate_error as _translate
from wellwon_db.pool._pool import Connection
from wellwon_db.pool._session import SessionEffect, session_effect, writes_data
from wellwon_db.resilience._breaker import CircuitBreaker
from wellwon_db.resilience._retry import is_retryable
from wellwon_db.telemetry._telemetry import record_refused

__all__ = ["StatementCall", "record_outcome", "run_guarded"]

_T = TypeVar("_T")
#: ``call(connection, query, args, timeout)``: the asyncpg method to run.
StatementCall = Callable[[Connection, str, Any, float | None], Awaitable[_T]]

_monotonic = time.monotonic


def record_outcome(breaker: CircuitBreaker, exc: BaseException, started: float) -> None:
    """Tell ``breaker`` how a call that raised ``exc`` ended.

    A pool timeout is no verdict on the database: the application holds
    every connection (a slow database shows as slow calls and command
    timeouts, an unreachable one as connect failures). Nor is a
    configuration error: a refused login or certificate is fixed by an
    operator, and opening the breaker would hide it behind ``CircuitOpenError``.
    """
    if isinstance(
        exc, asyncio.CancelledError | PoolClosedError | PoolTimeoutError | ConfigurationError
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
    first: bool = True,
) -> _T:
    """Run one statement on ``slot``'s pool; retry only when it is safe (see ``_retry``).

    Each attempt is one CLIENT span; ``batch`` is the number of parameter
    sets of an ``executemany``. A call refused before reaching the database
    (pool not open, breaker open) is counted as refused, not as an
    operation. The first attempt runs in this frame (no wrapper coroutine on
    the hot path); after a retryable failure the policy runs the next ones
    (``first=False``).
    """
    pool = slot.pool
    if pool is None:
        record_refused(str(slot.database), "pool_closed")
        raise slot.no_pool_error()
    telemetry = pool.telemetry
    breaker = slot.breaker
    try:
        breaker.allow()
    except BaseException:
        telemetry.refused("breaker_open")
        raise
    span = telemetry.start(query, parameterized=bool(args), batch=batch)
    started = _monotonic()
    try:
        connection = pool.take_idle() or await pool.acquire_slow(started)
    except BaseException as exc:
        record_outcome(breaker, exc, started)
        telemetry.finish(span, query, started, exc, batch=batch)
        if first and _may_retry(slot, exc, idempotent):
            return await _retry(slot, call, query, args, timeout, idempotent, batch, exc, started)
        raise
    effect = SessionEffect.NONE
    sent = _monotonic()
    try:
        if span is not None:
            telemetry.waited(span, sent - started)
        effect = session_effect(query)
        result = await call(connection, query, args, timeout)
    except BaseException as exc:
        error = _translate(exc, pool.database, "running a query")
        record_outcome(breaker, error, started)
        telemetry.finish(span, query, started, error, sent=sent, batch=batch)
        if isinstance(exc, asyncio.CancelledError):
            # The statement may still be in flight: don't make a cancelled caller wait.
            pool.release_soon(connection, effect)
            raise
        if isinstance(error, DatabaseUnavailableError):
            effect = SessionEffect.BROKEN  # the connection is not to be trusted again
        await pool.release_connection(connection, effect)
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
    telemetry.finish(span, query, started, sent=sent, batch=batch)
    if slot.track_writes and writes_data(query):
        try:
            await record_position(slot, connection)
        except asyncio.CancelledError:
            pool.release_soon(connection, effect)
            raise
        except Exception:
            effect = SessionEffect.BROKEN  # the statement committed; its connection did not last
    if not pool.give_back(connection, effect):
        await pool.finish_release(connection, effect)
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
    batch: int | None,
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
