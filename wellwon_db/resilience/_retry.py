"""Retry policies built with tenacity from one database's settings.

What is retried, and why it is safe:

* a call whose failure happened before any statement was sent (no connection
  could be had): ``DatabaseUnavailableError`` with ``may_have_run`` false;
* any availability failure of a call the caller marked ``idempotent=True``;
* a whole transaction function (``run_in_transaction``) that failed with
  ``serialization_failure`` (40001), ``deadlock_detected`` (40P01) or an
  availability failure before its COMMIT was sent.

Never retried: an open breaker (``CircuitOpenError`` stops at once), errors
of the SQL, command timeouts, and a failure during COMMIT (the outcome is
unknown). Retries wait with exponential backoff and full jitter, and stop at
``attempts`` or ``deadline``, whichever comes first.

The first attempt runs outside tenacity: the happy path pays nothing for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from wellwon_db.config._policies import RetryConfig
from wellwon_db.errors import CircuitOpenError, DatabaseUnavailableError
from wellwon_db.telemetry._telemetry import record_retry

__all__ = ["RetryConfig", "RetryPolicy", "is_retryable", "is_transaction_retryable"]

logger = logging.getLogger("wellwon_db.retry")
_T = TypeVar("_T")


def is_retryable(exc: BaseException, *, idempotent: bool) -> bool:
    """Whether a single call that raised ``exc`` may be attempted again."""
    if isinstance(exc, CircuitOpenError) or not isinstance(exc, DatabaseUnavailableError):
        return False
    return idempotent or not exc.may_have_run


def is_transaction_retryable(exc: BaseException) -> bool:
    """Whether a whole transaction function that raised ``exc`` may run again."""
    if isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        return True
    if isinstance(exc, CircuitOpenError) or not isinstance(exc, DatabaseUnavailableError):
        return False
    return not exc.during_commit


class RetryPolicy:
    """Runs the attempts after a retryable first failure, per :class:`RetryConfig`."""

    __slots__ = ("config", "database")

    def __init__(self, database: str, config: RetryConfig | None = None) -> None:
        self.database = database
        self.config = config or RetryConfig()

    @property
    def enabled(self) -> bool:
        """Whether any retry can happen (``attempts`` > 1)."""
        return self.config.attempts > 1

    async def retry_after(
        self,
        first_error: BaseException,
        first_started: float,
        attempt: Callable[[], Awaitable[_T]],
        retryable: Callable[[BaseException], bool],
        *,
        attempts: int | None = None,
    ) -> _T:
        """Continue after ``first_error`` (raised by an attempt begun at ``first_started``).

        Re-raises the last error when attempts or the deadline run out, or at
        once when an error is not ``retryable``.
        """
        config = self.config
        elapsed = time.monotonic() - first_started
        pending: list[BaseException] = [first_error]

        async def next_attempt() -> _T:
            if pending:
                raise pending.pop()
            return await attempt()

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts or config.attempts)
            | stop_after_delay(max(0.0, config.deadline - elapsed)),
            wait=wait_random_exponential(multiplier=config.backoff, max=config.backoff_max),
            retry=retry_if_exception(retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        return await retrying(next_attempt)

    def _log_retry(self, state: RetryCallState) -> None:
        record_retry(self.database)
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        logger.info(
            "%s database: attempt %d failed (%s: %s); retrying in %.3fs",
            self.database,
            state.attempt_number,
            type(error).__name__,
            error,
            state.upcoming_sleep,
        )
