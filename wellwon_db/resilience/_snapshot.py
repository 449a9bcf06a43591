"""``BreakerSnapshot``: what a circuit breaker reports of itself to telemetry and health."""

from __future__ import annotations

from typing import TypedDict

__all__ = ["BreakerSnapshot"]


class BreakerSnapshot(TypedDict):
    """A snapshot of one breaker, from ``CircuitBreaker.snapshot()``. Stable keys.

    ``state`` is the state's name (``closed``, ``open``, ``half_open``,
    ``forced_open``, ``disabled``); ``calls``, ``failures`` and
    ``slow_calls`` count the current window; ``retry_at`` is the next
    probe's instant on the breaker's clock (``time.monotonic()``, meaningful
    in this process only) and ``retry_in_sec`` the same as a delay in
    seconds, both ``None`` unless open; ``trips_in_a_row`` counts
    consecutive trips (each doubles the open time).
    """

    database: str
    state: str
    calls: int
    failures: int
    slow_calls: int
    retry_at: float | None
    retry_in_sec: float | None
    trips_in_a_row: int
