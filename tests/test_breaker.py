"""The breaker state machine: pure logic on a fake clock."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from wellwon_db import CircuitOpenError, DatabaseUnavailableError
from wellwon_db.resilience._breaker import (
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: The rate window alone (no consecutive-failure rule), no reachability checks.
CONFIG = BreakerConfig(
    failure_rate=50,
    min_calls=4,
    window_sec=10,
    open_sec=5,
    open_max_sec=20,
    half_open_calls=2,
    consecutive_failures=0,
    probe_interval_sec=0,
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
    breaker.reconfigure(BreakerConfig(min_calls=100, consecutive_failures=0))
    assert breaker.state is BreakerState.CLOSED
    for _ in range(50):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.CLOSED


# -- plain death: failures in a row ------------------------------------------------------

DEATH = BreakerConfig(
    failure_rate=50,
    min_calls=10,
    window_sec=10,
    open_sec=5,
    open_max_sec=60,
    half_open_calls=3,
    consecutive_failures=5,
    probe_interval_sec=1,
)


def test_a_crash_after_busy_traffic_opens_within_a_second(clock: Clock) -> None:
    """10 s of successes fill the window; then every call fails, 4 tasks every 5 ms."""
    breaker = CircuitBreaker("reference", DEATH, clock=clock)
    for _ in range(8000):  # 800 calls/s for 10 s
        call(breaker, fail=False)
        clock.now += 10 / 8000
    crashed_at = clock.now
    while breaker.state is BreakerState.CLOSED:
        assert clock.now - crashed_at < 1.0, "still closed a second after the crash"
        for _ in range(4):
            if breaker.state is BreakerState.CLOSED:
                call(breaker, fail=True, duration=0.07)
        clock.now += 0.005
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot()["trips_in_a_row"] == 1
    with pytest.raises(CircuitOpenError):
        breaker.allow()


def test_failures_in_a_row_open_whatever_the_window_holds(clock: Clock) -> None:
    breaker = CircuitBreaker("reference", DEATH, clock=clock)
    seen: list[BreakerTransition] = []
    breaker.add_listener(seen.append)
    for _ in range(1000):
        call(breaker, fail=False)
    for _ in range(4):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 4
    call(breaker, fail=True)  # 5 of 1005 calls: far below the 50% rate
    assert breaker.state is BreakerState.OPEN
    assert "5 availability failures in a row" in seen[-1].reason
    assert breaker.snapshot()["consecutive_failures"] == 0


def test_any_success_breaks_the_run(clock: Clock) -> None:
    breaker = CircuitBreaker("reference", DEATH, clock=clock)
    for _ in range(20):  # keeps the failure rate below 50% throughout
        call(breaker, fail=False)
    for _ in range(4):
        call(breaker, fail=True)
    call(breaker, fail=False, duration=3.0)  # slow, but an answer
    for _ in range(4):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 4


def test_failures_in_a_row_open_below_min_calls(clock: Clock) -> None:
    """A database dead from the start opens too: the rate needs min_calls, the run does not."""
    breaker = CircuitBreaker(
        "reference", BreakerConfig(min_calls=100, consecutive_failures=3), clock=clock
    )
    for _ in range(3):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.OPEN


def test_zero_turns_failures_in_a_row_off(clock: Clock) -> None:
    breaker = CircuitBreaker(
        "reference", BreakerConfig(min_calls=100, consecutive_failures=0), clock=clock
    )
    for _ in range(99):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.CLOSED


# -- recovery: background reachability checks -------------------------------------------


def open_breaker(clock: Clock, config: BreakerConfig = DEATH) -> CircuitBreaker:
    breaker = CircuitBreaker("reference", config, clock=clock)
    for _ in range(config.consecutive_failures):
        call(breaker, fail=True)
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_checks_are_due_every_interval_while_open(clock: Clock) -> None:
    breaker = CircuitBreaker("reference", DEATH, clock=clock)
    assert breaker.check_due_in() is None  # closed: no check wanted
    breaker = open_breaker(clock)
    assert breaker.check_due_in() == 1.0
    clock.now += 0.25
    assert breaker.check_due_in() == 0.75
    assert breaker.snapshot()["next_check_in_sec"] == 0.75
    clock.now += 2
    assert breaker.check_due_in() == 0.0  # overdue: now
    breaker.note_unreachable()
    assert breaker.check_due_in() == 1.0
    assert breaker.state is BreakerState.OPEN
    breaker.force_open()
    assert breaker.check_due_in() is None  # maintenance: nothing to discover


def test_checks_off_with_a_zero_interval(clock: Clock) -> None:
    breaker = open_breaker(clock, replace(DEATH, probe_interval_sec=0))
    assert breaker.check_due_in() is None
    assert breaker.snapshot()["next_check_in_sec"] is None


def test_a_reachable_server_half_opens_at_once_then_probes_close(clock: Clock) -> None:
    breaker = open_breaker(clock)
    seen: list[BreakerTransition] = []
    breaker.add_listener(seen.append)
    clock.now += 1
    breaker.note_reachable()
    assert breaker.state is BreakerState.HALF_OPEN  # the 5 s open time is not waited out
    assert "reachability check" in seen[-1].reason
    assert breaker.check_due_in() is None
    for _ in range(3):
        call(breaker, fail=False)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["trips_in_a_row"] == 0


def test_a_failed_probe_after_a_check_reopens_and_checks_resume(clock: Clock) -> None:
    breaker = open_breaker(clock)
    clock.now += 1
    breaker.note_reachable()
    call(breaker, fail=True)
    assert breaker.state is BreakerState.OPEN
    assert (breaker.retry_at or 0) - clock.now == 10  # the open time still doubles
    assert breaker.check_due_in() == 1.0


def test_reachability_notes_change_nothing_unless_open(clock: Clock) -> None:
    breaker = CircuitBreaker("reference", DEATH, clock=clock)
    breaker.note_reachable()
    breaker.note_unreachable()
    assert breaker.state is BreakerState.CLOSED
    breaker.force_open()
    breaker.note_reachable()
    assert breaker.state is BreakerState.FORCED_OPEN
    breaker = open_breaker(clock)
    clock.now += 5
    breaker.allow()  # the open time elapsed: half-open, one probe in flight
    breaker.note_reachable()
    breaker.allow()
    breaker.allow()
    with pytest.raises(CircuitOpenError):
        breaker.allow()  # still at most half_open_calls probes


def test_a_server_back_after_a_long_outage_is_noticed_within_two_seconds(clock: Clock) -> None:
    """An outage longer than open_max_sec, traffic every 5 ms, a check each time one is due."""
    breaker = open_breaker(clock)
    down_until = clock.now + 150  # longer than open_max_sec (60)
    calls_sent_while_down = checks_while_down = 0
    back_at = closed_at = None
    while closed_at is None:
        up = clock.now >= down_until
        if up and back_at is None:
            back_at = clock.now
        if breaker.check_due_in() == 0.0:
            if up:
                breaker.note_reachable()
            else:
                checks_while_down += 1
                breaker.note_unreachable()
        try:
            breaker.allow()
        except CircuitOpenError:
            pass
        else:
            if up:
                breaker.record_success(0.001)
            else:
                calls_sent_while_down += 1
                breaker.record_failure(0.07)
        if breaker.state is BreakerState.CLOSED:
            closed_at = clock.now
        clock.now += 0.005
    assert back_at is not None
    assert closed_at - back_at <= 2.0
    # The dead server saw one check a second, and real calls only as the
    # doubling open time allowed (5, 10, 20, 40, 60, 60 s): never a stream.
    assert 140 <= checks_while_down <= 151
    assert calls_sent_while_down <= 6


def test_snapshot_keys_are_stable(clock: Clock) -> None:
    breaker = open_breaker(clock)
    snapshot = breaker.snapshot()
    assert set(snapshot) == set(BreakerSnapshot.__annotations__)
    assert snapshot["state"] == "open"
    assert snapshot["retry_in_sec"] == 5.0
    assert snapshot["retry_at"] == clock.now + 5
    assert snapshot["next_check_in_sec"] == 1.0
