"""``BreakerSnapshot``: what a circuit breaker reports of itself to telemetry and health."""

from __future__ import annotations

from typing import TypedDict

__all__ = ["BreakerSnapshot"]


class BreakerSnapshot(TypedDict):
    """What :meth:`CircuitBreaker.snapshot` returns. Times in seconds.

    ``calls``, ``failures`` and ``slow_calls`` count the rate window;
    ``consecutive_failures`` the availability failures since the last success.
    ``retry_at`` (on the breaker's clock, ``time.monotonic()``: meaningful in
    this process only) and ``retry_in_sec`` tell when real calls probe at the
    latest, ``next_check_in_sec`` when the next reachability check is due;
    all three are ``None`` unless the breaker is open (the last also when
    checks are off).
    """

    database: str
    state: str
    calls: int
    failures: int
    slow_calls: int
    consecutive_failures: int
    retry_at: float | None
    retry_in_sec: float | None
    next_check_in_sec: float | None
    trips_in_a_row: int
