"""The slot machine (``pool/_slots.py``) alone: every transition, without a server.

Connections are plain strings here and times are numbers: the machine never
touches either. Cancellation is a waiter withdrawing (or a holder dropped)
at each point; close racing an operation is ``close()`` before it.
"""

from __future__ import annotations

import pytest

from tests.helpers import BasicWaiter
from wellwon_db.pool._slots import Holder, SlotError, Slots, Stage, WaiterState


def _open(slots: Slots[str], name: str, now: float = 0.0) -> Holder[str]:
    """Reserve a slot and open a connection in it (LEASED to the opener)."""
    holder = slots.reserve()
    assert holder is not None
    assert slots.opened(holder, name, now)
    return holder


def _full(max_size: int = 2) -> tuple[Slots[str], list[Holder[str]]]:
    """A pool with every slot leased."""
    slots: Slots[str] = Slots(max_size)
    holders = [_open(slots, f"c{i}") for i in range(max_size)]
    slots.check()
    return slots, holders


class _Refusing(BasicWaiter):
    """A waiter whose caller gave up before it could withdraw (its future is cancelled)."""

    def set(self, grant: Holder[str]) -> bool:
        self.state = WaiterState.FAILED
        return False


# -- getting a connection ------------------------------------------------------


def test_reserve_counts_slots_up_to_max_size() -> None:
    slots: Slots[str] = Slots(2)
    first, second = slots.reserve(), slots.reserve()
    assert first is not None
    assert second is not None
    assert first.stage is Stage.OPENING
    assert slots.reserve() is None
    assert slots.count == 2
    slots.check()


def test_opened_leases_the_connection_to_its_opener() -> None:
    slots: Slots[str] = Slots(1)
    holder = slots.reserve()
    assert holder is not None
    assert slots.opened(holder, "c", 5.0)
    assert (holder.stage, holder.connection, holder.born) == (Stage.LEASED, "c", 5.0)
    assert slots.opened_total == 1
    slots.check()


def test_open_failed_frees_the_slot() -> None:
    slots: Slots[str] = Slots(1)
    holder = slots.reserve()
    assert holder is not None
    assert slots.open_failed(holder) is None
    assert (slots.count, holder.stage) == (0, Stage.GONE)
    slots.check()


def test_idle_stack_is_last_in_first_out() -> None:
    slots: Slots[str] = Slots(3)
    holders = [_open(slots, f"c{i}") for i in range(3)]
    for i, holder in enumerate(holders):
        slots.put_back(holder, float(i))
    assert [h.connection for h in slots.idle] == ["c0", "c1", "c2"]
    leased = slots.lease_idle(9.0)
    assert leased is holders[2]
    assert (leased.stage, leased.leased_at) == (Stage.LEASED, 9.0)
    slots.check()
    assert slots.lease_idle(9.0) is holders[1]


def test_lease_idle_of_an_empty_stack_is_none() -> None:
    slots: Slots[str] = Slots(1)
    assert slots.lease_idle(0.0) is None


def test_replace_keeps_the_slot_for_the_same_caller() -> None:
    slots, (dead, _) = _full()
    fresh = slots.replace(dead)
    assert (dead.stage, fresh.stage, slots.count) == (Stage.GONE, Stage.OPENING, 2)
    assert slots.retired_total == 1
    slots.check()


# -- waiting --------------------------------------------------------------------


def test_a_caller_may_queue_only_when_nothing_is_assignable() -> None:
    slots: Slots[str] = Slots(2)
    _open(slots, "c0")
    with pytest.raises(SlotError, match="slot was free"):
        slots.wait(BasicWaiter(1.0))  # a free slot
    holder = _open(slots, "c1")
    slots.put_back(holder, 0.0)
    with pytest.raises(SlotError, match="connection or slot was free"):
        slots.wait(BasicWaiter(1.0))  # an idle connection


def test_a_released_connection_goes_to_the_first_waiter() -> None:
    slots, (holder, _) = _full()
    first, second = BasicWaiter(10.0), BasicWaiter(10.0)
    slots.wait(first)
    slots.wait(second)
    assert slots.waiting == 2
    slots.check()
    assert slots.put_back(holder, 1.0) is first
    assert (first.state, first.grant, holder.stage) == (WaiterState.SERVED, holder, Stage.LEASED)
    # Handed over, never idle: it counts as known good from the hand-over on.
    assert holder.idle_since == 1.0
    assert slots.idle == []
    slots.check()


def test_a_waiter_that_gave_up_is_skipped_and_swallows_nothing() -> None:
    slots, (holder, _) = _full()
    gone, next_one = _Refusing(10.0), BasicWaiter(10.0)
    slots.wait(gone)
    slots.wait(next_one)
    assert slots.put_back(holder, 1.0) is next_one
    assert gone.grant is None
    assert slots.waiting == 0
    slots.check()


def test_no_waiter_accepting_leaves_the_connection_idle() -> None:
    slots, (holder, _) = _full()
    slots.wait(_Refusing(10.0))
    assert slots.put_back(holder, 1.0) is None
    assert slots.idle == [holder]
    slots.check()


def test_a_freed_slot_goes_to_the_first_waiter_as_a_reservation() -> None:
    slots, (holder, _) = _full()
    waiter = BasicWaiter(10.0)
    slots.wait(waiter)
    assert slots.drop(holder) is waiter
    grant = waiter.grant
    assert grant is not None
    assert grant.stage is Stage.OPENING
    assert slots.count == 2  # the slot changed hands, it was never uncounted
    slots.check()
    assert slots.opened(grant, "new", 2.0)
    slots.check()


def test_a_short_deadline_behind_a_long_one_expires_first() -> None:
    """Each waiter times out at its own deadline, whatever the queue order."""
    slots, _ = _full(1)
    patient, hurried = BasicWaiter(3.0), BasicWaiter(0.3)
    slots.wait(patient)  # queued first, with the longer timeout
    slots.wait(hurried)
    assert slots.next_deadline() == 0.3
    assert slots.expire(0.29) == []
    assert slots.expire(0.3) == [hurried]
    assert (hurried.state, patient.state) == (WaiterState.FAILED, WaiterState.WAITING)
    assert slots.next_deadline() == 3.0
    slots.check()
    assert slots.expire(3.0) == [patient]
    assert slots.next_deadline() is None
    assert slots.waiting == 0
    slots.check()


def test_a_served_waiter_never_expires() -> None:
    slots, (holder, _) = _full(2)
    waiter = BasicWaiter(1.0)
    slots.wait(waiter)
    slots.put_back(holder, 0.5)
    assert slots.expire(2.0) == []
    assert waiter.state is WaiterState.SERVED


def test_an_expired_waiter_is_not_served_later() -> None:
    slots, (holder, _) = _full(2)
    waiter = BasicWaiter(1.0)
    slots.wait(waiter)
    slots.expire(1.0)
    assert slots.put_back(holder, 2.0) is None
    assert waiter.grant is None
    assert slots.idle == [holder]
    slots.check()


# -- cancellation at each point ---------------------------------------------------


def test_cancelled_while_waiting_leaves_the_queue() -> None:
    slots, (holder, _) = _full()
    waiter = BasicWaiter(10.0)
    slots.wait(waiter)
    assert slots.withdraw(waiter) is None
    assert (waiter.state, slots.waiting) == (WaiterState.FAILED, 0)
    slots.check()
    assert slots.put_back(holder, 1.0) is None  # nobody is served
    slots.check()


def test_cancelled_after_being_handed_a_connection_passes_it_on() -> None:
    slots, (holder, _) = _full()
    cancelled, next_one = BasicWaiter(10.0), BasicWaiter(10.0)
    slots.wait(cancelled)
    slots.wait(next_one)
    slots.put_back(holder, 1.0)
    grant = slots.withdraw(cancelled)
    assert grant is holder
    assert slots.pass_on(grant, 2.0) is next_one
    assert next_one.grant is holder
    slots.check()


def test_cancelled_after_being_handed_a_slot_frees_it() -> None:
    slots, (holder, _) = _full()
    cancelled = BasicWaiter(10.0)
    slots.wait(cancelled)
    slots.drop(holder)
    grant = slots.withdraw(cancelled)
    assert grant is not None
    assert grant.stage is Stage.OPENING
    assert slots.pass_on(grant, 2.0) is None
    assert slots.count == 1
    slots.check()


def test_cancelled_after_timing_out_has_nothing_to_pass_on() -> None:
    slots, _ = _full()
    waiter = BasicWaiter(1.0)
    slots.wait(waiter)
    slots.expire(1.0)
    assert slots.withdraw(waiter) is None
    slots.check()


def test_cancelled_while_opening_frees_the_slot_to_a_waiter() -> None:
    slots: Slots[str] = Slots(1)
    opening = slots.reserve()
    assert opening is not None
    waiter = BasicWaiter(10.0)
    slots.wait(waiter)
    assert slots.open_failed(opening) is waiter
    slots.check()


@pytest.mark.parametrize("stage", [Stage.LEASED, Stage.RETURNING, Stage.IDLE, Stage.CLOSING])
def test_cancelled_mid_io_drops_the_connection_once(stage: Stage) -> None:
    slots, (holder, _) = _full()
    if stage is Stage.RETURNING:
        slots.begin_return(holder)
    elif stage is Stage.IDLE:
        slots.put_back(holder, 0.0)
    elif stage is Stage.CLOSING:
        slots.retire(holder)
    retired = slots.retired_total
    slots.drop(holder)
    assert slots.drop(holder) is None  # found dead twice: one slot freed
    assert slots.count == 1
    assert slots.retired_total == retired + (stage is not Stage.CLOSING)
    slots.check()


# -- giving back and removing ----------------------------------------------------


def test_return_with_a_reset_goes_through_returning() -> None:
    slots, (holder, _) = _full()
    slots.begin_return(holder)
    assert holder.stage is Stage.RETURNING
    slots.check()
    slots.put_back(holder, 1.0)
    assert holder.stage is Stage.IDLE
    slots.check()


def test_a_retired_connection_keeps_its_slot_until_closed() -> None:
    slots, (holder, _) = _full()
    waiter = BasicWaiter(10.0)
    slots.wait(waiter)
    slots.retire(holder)
    assert (holder.stage, slots.count, waiter.state) == (
        Stage.CLOSING,
        2,
        WaiterState.WAITING,
    )
    slots.check()
    assert slots.closed(holder) is waiter  # only now the slot changes hands
    slots.check()


def test_retiring_an_idle_connection_takes_it_off_the_stack() -> None:
    slots, (holder, _) = _full()
    slots.put_back(holder, 0.0)
    slots.retire(holder)
    assert slots.idle == []
    slots.check()
    slots.closed(holder)
    assert slots.count == 1
    slots.check()


@pytest.mark.parametrize(
    ("call", "stage"),
    [
        ("put_back", Stage.IDLE),
        ("put_back", Stage.OPENING),
        ("put_back", Stage.CLOSING),
        ("begin_return", Stage.IDLE),
        ("begin_return", Stage.RETURNING),
        ("retire", Stage.OPENING),
        ("retire", Stage.CLOSING),
        ("closed", Stage.LEASED),
        ("replace", Stage.IDLE),
        ("open_failed", Stage.LEASED),
    ],
)
def test_a_transition_from_the_wrong_stage_is_refused(call: str, stage: Stage) -> None:
    slots: Slots[str] = Slots(2)
    if stage is Stage.OPENING:
        holder = slots.reserve()
        assert holder is not None
    else:
        holder = _open(slots, "c")
        if stage is Stage.IDLE:
            slots.put_back(holder, 0.0)
        elif stage is Stage.RETURNING:
            slots.begin_return(holder)
        elif stage is Stage.CLOSING:
            slots.retire(holder)
    method = getattr(slots, call)
    with pytest.raises(SlotError):
        method(holder, 0.0) if call == "put_back" else method(holder)
    slots.check()


# -- close racing every operation ---------------------------------------------------


def test_close_fails_every_waiter_and_stops_granting() -> None:
    slots, (_holder, _) = _full()
    waiters = [BasicWaiter(10.0), BasicWaiter(10.0)]
    for waiter in waiters:
        slots.wait(waiter)
    assert slots.close() == waiters
    assert all(w.state is WaiterState.FAILED for w in waiters)
    assert slots.reserve() is None
    with pytest.raises(SlotError):
        slots.wait(BasicWaiter(10.0))
    slots.check()


def test_while_closing_connections_still_come_back_until_drained() -> None:
    slots, (first, second) = _full()
    slots.close()
    assert not slots.drained
    slots.put_back(first, 1.0)
    slots.begin_return(second)
    slots.put_back(second, 1.0)
    assert slots.drained
    slots.check()


def test_a_slot_freed_while_closing_is_uncounted() -> None:
    slots, (holder, _) = _full()
    slots.close()
    assert slots.drop(holder) is None
    assert slots.count == 1
    slots.check()


def test_connect_completing_after_the_end_is_refused() -> None:
    slots: Slots[str] = Slots(2)
    opening = slots.reserve()
    assert opening is not None
    slots.close()
    assert slots.finish() == []  # nothing had a connection yet
    assert slots.opened(opening, "late", 1.0) is False  # the caller terminates it
    assert slots.open_failed(opening) is None
    assert slots.count == 0
    slots.check()


@pytest.mark.parametrize("stage", [Stage.LEASED, Stage.RETURNING, Stage.IDLE, Stage.CLOSING])
def test_finish_ends_every_holder_whatever_its_stage(stage: Stage) -> None:
    slots, (holder, other) = _full()
    if stage is Stage.RETURNING:
        slots.begin_return(holder)
    elif stage is Stage.IDLE:
        slots.put_back(holder, 0.0)
    elif stage is Stage.CLOSING:
        slots.retire(holder)
    slots.close()
    left = slots.finish()
    assert set(left) == {holder, other}  # their connections are terminated by the caller
    assert (slots.count, slots.idle, slots.holders) == (0, [], set())
    assert holder.stage is Stage.GONE
    # Late transitions find it gone and change nothing:
    assert slots.drop(holder) is None
    assert slots.closed(holder) is None
    assert slots.pass_on(holder, 1.0) is None
    with pytest.raises(SlotError):
        slots.put_back(holder, 1.0)  # the pool checks the stage before this one
    slots.check()


def test_a_withdraw_after_close_returns_nothing() -> None:
    slots, _ = _full()
    waiter = BasicWaiter(10.0)
    slots.wait(waiter)
    slots.close()
    assert slots.withdraw(waiter) is None
    assert slots.expire(20.0) == []
    assert slots.next_deadline() is None
    slots.check()


def test_abandon_forgets_everything_without_io() -> None:
    slots, holders = _full()
    slots.put_back(holders[0], 0.0)
    opening_slots: Slots[str] = Slots(1)
    assert set(slots.abandon()) == set(holders)
    assert (slots.count, slots.idle, slots.holders, slots.closing) == (0, [], set(), True)
    assert opening_slots.abandon() == []
    slots.check()


# -- the invariant check can fail ------------------------------------------------------


def test_the_invariant_check_catches_a_lost_slot() -> None:
    slots, _ = _full()
    slots.count += 1  # a slot counted with no holder
    with pytest.raises(SlotError, match="count"):
        slots.check()


def test_the_invariant_check_catches_an_idle_stack_out_of_step() -> None:
    slots, (holder, _) = _full()
    slots.idle.append(holder)  # LEASED, yet on the idle stack
    with pytest.raises(SlotError, match="idle stack"):
        slots.check()


def test_the_invariant_check_catches_a_waiter_beside_an_idle_connection() -> None:
    slots, (holder, _) = _full()
    slots.wait(BasicWaiter(10.0))
    holder.stage = Stage.IDLE
    slots.idle.append(holder)
    with pytest.raises(SlotError, match="assignable"):
        slots.check()


def test_sizes_are_validated() -> None:
    with pytest.raises(ValueError, match="min_size"):
        Slots(0)
    with pytest.raises(ValueError, match="min_size"):
        Slots(2, 3)
