"""The per-database policy settings the resilience layer applies, as plain values."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BreakerConfig", "RetryConfig"]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Thresholds of one breaker. Rates in percent, durations in seconds.

    ``consecutive_failures``: that many availability failures in a row open
    the breaker at once, whatever the rate window holds (0: only the rate
    opens it). ``probe_interval_sec``: while open, how often a background
    reachability check of the server is due (0: no checks; the breaker then
    probes with real calls once ``open_sec``, doubling per trip in a row up
    to ``open_max_sec``, has elapsed).
    """

    enabled: bool = True
    failure_rate: float = 50.0
    min_calls: int = 10
    window_sec: float = 10.0
    slow_call_sec: float = 0.0
    slow_call_rate: float = 100.0
    open_sec: float = 5.0
    open_max_sec: float = 60.0
    half_open_calls: int = 3
    consecutive_failures: int = 5
    probe_interval_sec: float = 1.0


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Attempts (the first included), backoff bounds and total deadline in seconds."""

    attempts: int = 3
    backoff: float = 0.05
    backoff_max: float = 2.0
    deadline: float = 10.0
