"""The circuit breaker of one database: a pure state machine with an injected clock.

Model (Resilience4j's, time-based window)::

             failure rate >= threshold               open time elapsed
    CLOSED ─────────────────────────────▶ OPEN ──────────────────────▶ HALF_OPEN
      ▲      (over the last window_sec, at   ▲                              │
      │       least min_calls calls)         │  a probe fails               │
      │                                      └──────────────────────────────┤
      └─────────────────────────────────────────────────────────────────────┘
                      half_open_calls probes succeed

plus FORCED_OPEN (every call refused, for maintenance) and DISABLED (every
call allowed, nothing recorded). Each trip in a row doubles the open time, up
to ``open_max_sec``. Only availability failures are recorded as failures (the
caller decides what those are); a call slower than ``slow_call_sec`` counts as
slow, and a slow-call rate over its threshold trips too.

Not thread-safe by design: one event loop drives it, and every method is
synchronous, so no ``await`` can interleave inside a transition.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wellwon_db.config._policies import BreakerConfig
from wellwon_db.errors import CircuitOpenError
from wellwon_db.resilience._snapshot import BreakerSnapshot

__all__ = ["BreakerConfig", "BreakerState", "BreakerTransition", "CircuitBreaker"]

logger = logging.getLogger("wellwon_db.breaker")

_BUCKETS = 10


class BreakerState(enum.Enum):
    """Where a breaker is. The value is the name used in logs and metrics."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change, as given to listeners. ``at`` is the breaker clock's time."""

    database: str
    old: BreakerState
    new: BreakerState
    at: float
    reason: str


Listener = Callable[[BreakerTransition], Any]


class CircuitBreaker:
    """Decides whether a call to one database may go ahead, from recent outcomes.

    Protocol per call: :meth:`allow` (raises :class:`CircuitOpenError`
    without touching anything else), then exactly one of
    :meth:`record_success`, :meth:`record_failure` or :meth:`record_ignored`.
    """

    def __init__(
        self,
        database: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self._clock = clock
        self._listeners: list[Listener] = []
        self._config = config or BreakerConfig()
        self._state = BreakerState.CLOSED if self._config.enabled else BreakerState.DISABLED
        self._open_until = 0.0
        self._trips_in_a_row = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._reset_window()

    # -- configuration and listeners ----------------------------------------

    @property
    def config(self) -> BreakerConfig:
        """The thresholds in force."""
        return self._config

    def reconfigure(self, config: BreakerConfig) -> None:
        """Apply new thresholds; the breaker starts again closed (or disabled)."""
        self._config = config
        self._reset_window()
        self._trips_in_a_row = 0
        self._transition(
            BreakerState.CLOSED if config.enabled else BreakerState.DISABLED, "reconfigured"
        )

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(transition)`` on every state change; its errors are logged."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an elapsed open time shows as HALF_OPEN only on the next call)."""
        return self._state

    @property
    def retry_at(self) -> float | None:
        """Clock time of the next probe while OPEN, else ``None``."""
        return self._open_until if self._state is BreakerState.OPEN else None

    def snapshot(self) -> BreakerSnapshot:
        """State and window counts with stable keys, for telemetry and health.

        ``retry_at`` is on the breaker's clock (``time.monotonic()``), only
        meaningful in this process; ``retry_in_sec`` is the same as a delay.
        """
        self._advance(self._clock())
        return {
            "database": self.database,
            "state": self._state.value,
            "calls": self._calls,
            "failures": self._failures,
            "slow_calls": self._slow,
            "retry_at": self.retry_at,
            "retry_in_sec": (
                max(0.0, self._open_until - self._clock())
                if self._state is BreakerState.OPEN
                else None
            ),
            "trips_in_a_row": self._trips_in_a_row,
        }

    def force_open(self) -> None:
        """Refuse every call until :meth:`reset` (maintenance)."""
        self._transition(BreakerState.FORCED_OPEN, "forced open")

    def disable(self) -> None:
        """Allow every call and record nothing until :meth:`reset`."""
        self._transition(BreakerState.DISABLED, "disabled")

    def reset(self) -> None:
        """Back to CLOSED with an empty window (or DISABLED when configured off)."""
        self._reset_window()
        self._trips_in_a_row = 0
        self._transition(
            BreakerState.CLOSED if self._config.enabled else BreakerState.DISABLED, "reset"
        )

    # -- the call protocol ---------------------------------------------------

    def allow(self) -> None:
        """Let a call go ahead, or raise :class:`CircuitOpenError` at once."""
        state = self._state
        if state is BreakerState.CLOSED or state is BreakerState.DISABLED:
            return
        if state is BreakerState.OPEN:
            if self._clock() < self._open_until:
                raise self._open_error()
            self._transition(BreakerState.HALF_OPEN, "open time elapsed")
            self._probes_in_flight = 0
            self._probe_successes = 0
        elif state is BreakerState.FORCED_OPEN:
            raise CircuitOpenError(
                f"the {self.database} database is switched off for maintenance (breaker forced "
                "open); calls are refused until it is reset",
                database=self.database,
            )
        # HALF_OPEN: a bounded number of probes.
        if self._probes_in_flight + self._probe_successes >= self._config.half_open_calls:
            raise self._open_error()
        self._probes_in_flight += 1

    def record_success(self, duration: float) -> None:
        """The call got an answer from the database (an SQL error is an answer too)."""
        slow_sec = self._config.slow_call_sec
        if self._state is BreakerState.CLOSED and (slow_sec <= 0.0 or duration < slow_sec):
            # The common case, inlined: count the call; a fast success never trips.
            now = self._clock()
            if int(now / self._bucket_width) != self._index:
                self._advance(now)
            self._bucket_calls[self._index % _BUCKETS] += 1
            self._calls += 1
            return
        self._record(failed=False, duration=duration)

    def record_failure(self, duration: float) -> None:
        """The call failed for availability: refused, reset, timed out, shutting down."""
        self._record(failed=True, duration=duration)

    def record_ignored(self) -> None:
        """The call ended without a verdict (cancelled); frees a half-open probe slot."""
        if self._state is BreakerState.HALF_OPEN and self._probes_in_flight:
            self._probes_in_flight -= 1

    # -- internals -------------------------------------------------------------

    def _open_error(self) -> CircuitOpenError:
        retry_at = self._open_until
        wait = max(0.0, retry_at - self._clock())
        return CircuitOpenError(
            f"the {self.database} database is failing; its circuit breaker is open and the "
            f"call was not sent (next probe in {wait:.1f}s)",
            database=self.database,
            retry_at=retry_at,
        )

    def _record(self, *, failed: bool, duration: float) -> None:
        state = self._state
        slow = 0.0 < self._config.slow_call_sec <= duration
        if state is BreakerState.HALF_OPEN:
            if self._probes_in_flight:
                self._probes_in_flight -= 1
            if failed or slow:
                self._trip("a probe failed" if failed else "a probe was slow")
                return
            self._probe_successes += 1
            if self._probe_successes >= self._config.half_open_calls:
                self._trips_in_a_row = 0
                self._reset_window()
                self._transition(BreakerState.CLOSED, "probes succeeded")
            return
        if state is not BreakerState.CLOSED:
            return
        now = self._clock()
        self._advance(now)
        bucket = self._index % _BUCKETS
        self._bucket_calls[bucket] += 1
        self._calls += 1
        if failed:
            self._bucket_failures[bucket] += 1
            self._failures += 1
        if slow:
            self._bucket_slow[bucket] += 1
            self._slow += 1
        config = self._config
        if self._calls < config.min_calls:
            return
        if failed and self._failures * 100.0 >= config.failure_rate * self._calls:
            self._trip(f"failure rate {100.0 * self._failures / self._calls:.0f}%")
        elif slow and self._slow * 100.0 >= config.slow_call_rate * self._calls:
            self._trip(f"slow-call rate {100.0 * self._slow / self._calls:.0f}%")

    def _trip(self, reason: str) -> None:
        config = self._config
        self._trips_in_a_row += 1
        open_for = min(config.open_sec * 2 ** (self._trips_in_a_row - 1), config.open_max_sec)
        self._open_until = self._clock() + open_for
        self._reset_window()
        self._transition(BreakerState.OPEN, f"{reason}; open for {open_for:g}s")

    def _reset_window(self) -> None:
        self._bucket_width = self._config.window_sec / _BUCKETS
        self._index = int(self._clock() / self._bucket_width)
        self._bucket_calls = [0] * _BUCKETS
        self._bucket_failures = [0] * _BUCKETS
        self._bucket_slow = [0] * _BUCKETS
        self._calls = self._failures = self._slow = 0

    def _advance(self, now: float) -> None:
        """Drop the buckets that slid out of the window (amortised O(1))."""
        index = int(now / self._bucket_width)
        if index == self._index:
            return
        for stale in range(self._index + 1, min(index, self._index + _BUCKETS) + 1):
            bucket = stale % _BUCKETS
            self._calls -= self._bucket_calls[bucket]
            self._failures -= self._bucket_failures[bucket]
            self._slow -= self._bucket_slow[bucket]
            self._bucket_calls[bucket] = self._bucket_failures[bucket] = 0
            self._bucket_slow[bucket] = 0
        self._index = index

    def _transition(self, new: BreakerState, reason: str) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        log = logger.warning if new is BreakerState.OPEN else logger.info
        log("%s database breaker: %s -> %s (%s)", self.database, old.value, new.value, reason)
        event = BreakerTransition(self.database, old, new, self._clock(), reason)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("breaker listener %r failed", listener)
