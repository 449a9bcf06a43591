"""The circuit breaker of one database: a pure state machine with an injected clock.

Model (Resilience4j's time-based window, plus Envoy's consecutive-failure
detection)::

          failure rate >= threshold over the            a reachability check
          last window_sec (at least min_calls),         succeeds, or the open
          or consecutive_failures in a row              time elapsed
    CLOSED ────────────────────────────────────▶ OPEN ─────────────────────▶ HALF_OPEN
      ▲                                            ▲                            │
      │                                            │  a probe fails             │
      │                                            └────────────────────────────┤
      └─────────────────────────────────────────────────────────────────────────┘
                          half_open_calls probes succeed

plus FORCED_OPEN (every call refused, for maintenance) and DISABLED (every
call allowed, nothing recorded). Only availability failures are recorded as
failures (the caller decides what those are); a call slower than
``slow_call_sec`` counts as slow, and a slow-call rate over its threshold
trips too.

Two ways to open: the rate window catches gradual degradation, and a run of
``consecutive_failures`` catches plain death at once, however many successes
the window still holds from before the crash.

Two ways to leave OPEN. While open, a background reachability check of the
server (a connect and ``SELECT 1``, run by the endpoint, not here) is due
every ``probe_interval_sec`` (:meth:`CircuitBreaker.check_due_in`); one that
succeeds (:meth:`CircuitBreaker.note_reachable`) makes the breaker half-open
at once, and real calls then probe as usual. So a returning server is
noticed within about one interval however long it was away, and a dead one
costs one connect attempt per interval, never a caller's time. Independently,
once the open time has elapsed, real calls probe: that open time starts at
``open_sec`` and doubles with each trip in a row, up to ``open_max_sec``.
The doubling stays because it now only bounds what the checks cannot see: a
server that accepts the check but fails real calls gets at most
``half_open_calls`` real probes per check interval, and without checks
(``probe_interval_sec=0``, or nothing driving them) a failing server is not
sent real calls more often than the doubling allows.

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

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
]

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

    Protocol of the endpoint's background reachability checks, while the
    breaker is open: wait :meth:`check_due_in` seconds (``None``: no check
    wanted; wait for the next transition to OPEN), run one check, then call
    :meth:`note_reachable` or :meth:`note_unreachable`.
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
        self._check_due = 0.0
        self._consecutive = 0
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
        self._consecutive = 0
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
        """Clock time when real calls probe at the latest while OPEN, else ``None``.

        A successful reachability check (:meth:`note_reachable`) lets them
        probe earlier.
        """
        return self._open_until if self._state is BreakerState.OPEN else None

    def snapshot(self) -> BreakerSnapshot:
        """A :class:`BreakerSnapshot`: state and counts, for telemetry and health."""
        now = self._clock()
        self._advance(now)
        is_open = self._state is BreakerState.OPEN
        return {
            "database": self.database,
            "state": self._state.value,
            "calls": self._calls,
            "failures": self._failures,
            "slow_calls": self._slow,
            "consecutive_failures": self._consecutive,
            "retry_at": self.retry_at,
            "retry_in_sec": max(0.0, self._open_until - now) if is_open else None,
            "next_check_in_sec": self.check_due_in(),
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
        self._consecutive = 0
        self._trips_in_a_row = 0
        self._transition(
            BreakerState.CLOSED if self._config.enabled else BreakerState.DISABLED, "reset"
        )

    # -- background reachability checks -----------------------------------------

    def check_due_in(self) -> float | None:
        """Seconds until the next reachability check of the server is due (``0.0``: now).

        ``None`` when no check is wanted: the breaker is not OPEN (closed,
        half-open, forced open or disabled), or ``probe_interval_sec`` is 0.
        The first check is due one interval after the breaker opens.
        """
        interval = self._config.probe_interval_sec
        if self._state is not BreakerState.OPEN or interval <= 0.0:
            return None
        return max(0.0, self._check_due - self._clock())

    def note_reachable(self) -> None:
        """A reachability check succeeded: OPEN becomes HALF_OPEN at once.

        Real calls then probe as usual: ``half_open_calls`` successes close
        the breaker, a failure opens it again. In any other state (a check
        that finished after the state changed) this does nothing.
        """
        if self._state is BreakerState.OPEN:
            self._half_open("the server answered a reachability check")

    def note_unreachable(self) -> None:
        """A reachability check failed: the next one is due ``probe_interval_sec`` from now."""
        if self._state is BreakerState.OPEN:
            self._check_due = self._clock() + self._config.probe_interval_sec

    # -- the call protocol ---------------------------------------------------

    def allow(self) -> None:
        """Let a call go ahead, or raise :class:`CircuitOpenError` at once."""
        state = self._state
        if state is BreakerState.CLOSED or state is BreakerState.DISABLED:
            return
        if state is BreakerState.OPEN:
            if self._clock() < self._open_until:
                raise self._open_error()
            self._half_open("open time elapsed")
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
            self._consecutive = 0
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
            f"call was not sent (next probe in {wait:.1f}s at the latest)",
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
        config = self._config
        if failed:
            self._bucket_failures[bucket] += 1
            self._failures += 1
            self._consecutive += 1
            if 0 < config.consecutive_failures <= self._consecutive:
                # Plain death: the window may still hold many successes from
                # before it, which would keep the rate low for seconds.
                self._trip(f"{self._consecutive} availability failures in a row")
                return
        else:
            self._consecutive = 0
        if slow:
            self._bucket_slow[bucket] += 1
            self._slow += 1
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
        now = self._clock()
        self._open_until = now + open_for
        self._check_due = now + config.probe_interval_sec
        self._consecutive = 0
        self._reset_window()
        self._transition(BreakerState.OPEN, f"{reason}; open for {open_for:g}s")

    def _half_open(self, reason: str) -> None:
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._transition(BreakerState.HALF_OPEN, reason)

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
