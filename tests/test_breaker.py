"""The breaker state machine: pure logic on a fake clock."""

from __future__ import annotations

import logging

import pytest

from wellwon_db import CircuitOpenError, DatabaseUnavailableError
from wellwon_db.resilience._breaker import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CONFIG = BreakerConfig(
    failure_rate=50, min_calls=4, window_sec=10, open_sec=5, open_max_sec=20, half_open_calls=2
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("reference", CONFIG, clock=clock)


def call(breaker: CircuitBreaker, *, fail: bool, duration: float = 0.001) -> None:
    breaker.allow()
    if fail:
        breaker.record_failure(duration)
    else:
        breaker.record_success(duration)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(4):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.OPEN


def test_stays_closed_below_min_calls(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.CLOSED


def test_trips_on_failure_rate_not_on_a_few_failures(breaker: CircuitBreaker) -> None:
    for _ in range(10):
        call(breaker, fail=False)
    for _ in range(9):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.CLOSED  # 9 of 19 = 47%
    call(breaker, fail=True)
    assert breaker.state is BreakerState.OPEN  # 10 of 20 = 50%


def test_open_refuses_at_once_with_database_and_retry_time(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    trip(breaker)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.allow()
    error = caught.value
    assert isinstance(error, DatabaseUnavailableError)
    assert error.database == "reference"
    assert error.retry_at == clock.now + 5
    assert "next probe in 5.0s" in str(error)


def test_half_open_after_open_time_then_closes_on_probe_successes(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    trip(breaker)
    clock.now += 5
    breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.allow()
    with pytest.raises(CircuitOpenError):
        breaker.allow()  # only half_open_calls probes at once
    breaker.record_success(0.01)
    breaker.record_success(0.01)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["calls"] == 0  # a fresh window


def test_failed_probe_reopens_with_doubled_wait_capped(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    trip(breaker)
    waits = []
    for _ in range(4):
        clock.now = breaker.retry_at or 0
        breaker.allow()
        breaker.record_failure(0.01)
        assert breaker.state is BreakerState.OPEN
        waits.append((breaker.retry_at or 0) - clock.now)
    assert waits == [10, 20, 20, 20]
    clock.now = breaker.retry_at or 0
    call(breaker, fail=False)
    call(breaker, fail=False)
    assert breaker.state is BreakerState.CLOSED
    trip(breaker)
    assert (breaker.retry_at or 0) - clock.now == 5  # the streak was reset


def test_cancelled_probe_frees_its_slot(breaker: CircuitBreaker, clock: Clock) -> None:
    trip(breaker)
    clock.now += 5
    breaker.allow()
    breaker.allow()
    breaker.record_ignored()
    breaker.allow()  # the freed slot is usable again


def test_old_failures_slide_out_of_the_window(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        call(breaker, fail=True)
    clock.now += 11  # past the 10 s window
    call(breaker, fail=True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["calls"] == 1
    clock.now += 3
    for _ in range(3):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.OPEN


def test_slow_calls_can_trip(clock: Clock) -> None:
    breaker = CircuitBreaker(
        "main",
        BreakerConfig(min_calls=4, slow_call_sec=1.0, slow_call_rate=75),
        clock=clock,
    )
    call(breaker, fail=False, duration=0.1)
    for _ in range(2):
        call(breaker, fail=False, duration=2.0)
    assert breaker.state is BreakerState.CLOSED
    call(breaker, fail=False, duration=2.0)
    assert breaker.state is BreakerState.OPEN


def test_forced_open_and_disabled(breaker: CircuitBreaker) -> None:
    breaker.force_open()
    with pytest.raises(CircuitOpenError, match="maintenance"):
        breaker.allow()
    breaker.disable()
    for _ in range(50):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.DISABLED
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    off = CircuitBreaker("main", BreakerConfig(enabled=False))
    assert off.state is BreakerState.DISABLED


def test_listeners_see_every_transition_and_cannot_break_it(
    breaker: CircuitBreaker, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BreakerTransition] = []
    breaker.add_listener(seen.append)

    def broken(_: BreakerTransition) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    with caplog.at_level(logging.WARNING, logger="wellwon_db.breaker"):
        trip(breaker)
    clock.now += 5
    call(breaker, fail=False)
    call(breaker, fail=False)
    assert [(t.old, t.new) for t in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert all(t.database == "reference" for t in seen)
    assert "failure rate 100%" in seen[0].reason
    assert any("listener" in r.getMessage() for r in caplog.records)
    breaker.remove_listener(broken)


def test_reconfigure(breaker: CircuitBreaker) -> None:
    trip(breaker)
    breaker.reconfigure(BreakerConfig(min_calls=100))
    assert breaker.state is BreakerState.CLOSED
    for _ in range(50):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.CLOSED
