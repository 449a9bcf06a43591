"""Random sequences of pool operations against the slot machine, invariants after each step.

A hypothesis rule-based state machine plays the pool's callers: they lease,
open, release, reset, retire, lose and replace connections, queue with
random timeouts, get cancelled, let time pass, and close the pool at any
point. After every step the machine's own invariants hold
(:meth:`Slots.check`), and so do the promises it makes its callers: no
connection is held by two callers, waiters are served first come first
served, and no caller waits past its own deadline.
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.helpers import BasicWaiter
from wellwon_db.pool._slots import Holder, Slots, Stage, Waiter, WaiterState


class SlotMachineModel(RuleBasedStateMachine):
    """The pool's callers, one rule per thing they can do."""

    def __init__(self) -> None:
        super().__init__()
        self.slots: Slots[str] = Slots(1)
        self.now = 0.0
        self.names = itertools.count()
        # What each caller holds, by stage: a holder is in at most one list.
        self.opening: list[Holder[str]] = []
        self.leased: list[Holder[str]] = []
        self.returning: list[Holder[str]] = []
        self.closing: list[Holder[str]] = []
        #: Waiters in queue order; served ones wait for their task to resume.
        self.queue: list[Waiter[str]] = []
        self.served: list[Waiter[str]] = []

    @initialize(max_size=st.integers(1, 4), min_fraction=st.integers(0, 4))
    def start(self, max_size: int, min_fraction: int) -> None:
        self.slots = Slots(max_size, min(min_fraction, max_size))

    # -- bookkeeping of what the machine hands out ---------------------------

    def _served(self, waiter: Waiter[str] | None) -> None:
        """A transition served ``waiter``: it must be the first still waiting."""
        if waiter is None:
            return
        first = next(w for w in self.queue if w.state is not WaiterState.FAILED or w is waiter)
        assert waiter is first, "a waiter was served out of turn"
        assert waiter.state is WaiterState.SERVED
        assert waiter.grant is not None
        self.queue.remove(waiter)
        self.served.append(waiter)

    def _drop_expired(self) -> None:
        self.queue = [w for w in self.queue if w.state is WaiterState.WAITING]

    @staticmethod
    def _pick(items: list[Holder[str]], index: int) -> Holder[str]:
        return items.pop(index % len(items))

    # -- getting a connection ---------------------------------------------------

    @precondition(lambda self: not self.slots.closing)
    @rule(timeout=st.floats(0.1, 5.0))
    def acquire(self, timeout: float) -> None:
        holder = self.slots.lease_idle(self.now)
        if holder is not None:
            self.leased.append(holder)
            return
        holder = self.slots.reserve()
        if holder is not None:
            self.opening.append(holder)
            return
        waiter = BasicWaiter(self.now + timeout)
        self.slots.wait(waiter)
        self.queue.append(waiter)

    @precondition(lambda self: self.opening)
    @rule(index=st.integers(0), ok=st.booleans())
    def connect_done(self, index: int, ok: bool) -> None:
        holder = self._pick(self.opening, index)
        if ok:
            if self.slots.opened(holder, f"c{next(self.names)}", self.now):
                self.leased.append(holder)
            else:
                assert holder.stage is Stage.GONE
        else:
            self._served(self.slots.open_failed(holder))

    @precondition(lambda self: self.served)
    @rule(index=st.integers(0), cancelled=st.booleans())
    def waiter_resumes(self, index: int, cancelled: bool) -> None:
        waiter = self.served.pop(index % len(self.served))
        if cancelled:  # cancelled after being served: what it got goes on
            grant = self.slots.withdraw(waiter)
            assert grant is not None
            self._served(self.slots.pass_on(grant, self.now))
            return
        grant = waiter.grant
        assert grant is not None
        if grant.stage is Stage.OPENING:
            self.opening.append(grant)
        elif grant.stage is Stage.LEASED:
            self.leased.append(grant)
        else:  # the pool ended meanwhile
            assert grant.stage is Stage.GONE
            assert self.slots.closing

    @precondition(lambda self: any(w.state is WaiterState.WAITING for w in self.queue))
    @rule(index=st.integers(0))
    def waiter_cancelled(self, index: int) -> None:
        waiting = [w for w in self.queue if w.state is WaiterState.WAITING]
        waiter = waiting[index % len(waiting)]
        assert self.slots.withdraw(waiter) is None
        self.queue.remove(waiter)

    @rule(seconds=st.floats(0.0, 2.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        for waiter in self.slots.expire(self.now):
            assert waiter.deadline <= self.now
            assert waiter.state is WaiterState.FAILED
        self._drop_expired()

    # -- giving back ------------------------------------------------------------

    @precondition(lambda self: self.leased)
    @rule(index=st.integers(0), needs_reset=st.booleans())
    def release(self, index: int, needs_reset: bool) -> None:
        holder = self._pick(self.leased, index)
        if needs_reset:
            self.slots.begin_return(holder)
            self.returning.append(holder)
        else:
            self._served(self.slots.put_back(holder, self.now))
            if holder.stage is Stage.LEASED:  # handed straight to a waiter
                assert self.served[-1].grant is holder

    @precondition(lambda self: self.returning)
    @rule(index=st.integers(0), reset_ok=st.booleans())
    def reset_done(self, index: int, reset_ok: bool) -> None:
        holder = self._pick(self.returning, index)
        if reset_ok:
            self._served(self.slots.put_back(holder, self.now))
        else:
            self._served(self.slots.drop(holder))

    # -- removing ------------------------------------------------------------------

    @precondition(lambda self: self.leased or self.returning or self.slots.idle)
    @rule(index=st.integers(0), where=st.sampled_from(["leased", "returning", "idle"]))
    def retire(self, index: int, where: str) -> None:
        if where == "idle":
            if not self.slots.idle:
                return
            holder = self.slots.idle[index % len(self.slots.idle)]
        else:
            source = self.leased if where == "leased" else self.returning
            if not source:
                return
            holder = self._pick(source, index)
        self.slots.retire(holder)
        self.closing.append(holder)

    @precondition(lambda self: self.closing)
    @rule(index=st.integers(0))
    def close_done(self, index: int) -> None:
        self._served(self.slots.closed(self._pick(self.closing, index)))

    @precondition(lambda self: self.slots.idle)
    @rule(index=st.integers(0))
    def idle_connection_dies(self, index: int) -> None:
        holder = self.slots.idle[index % len(self.slots.idle)]
        self._served(self.slots.drop(holder))

    @precondition(lambda self: self.leased)
    @rule(index=st.integers(0))
    def dead_on_check_replaced(self, index: int) -> None:
        holder = self._pick(self.leased, index)
        self.opening.append(self.slots.replace(holder))

    @precondition(lambda self: self.leased)
    @rule(index=st.integers(0))
    def broken_while_leased(self, index: int) -> None:
        self._served(self.slots.drop(self._pick(self.leased, index)))

    # -- the end ----------------------------------------------------------------------

    @precondition(lambda self: not self.slots.closing)
    @rule()
    def close(self) -> None:
        failed = self.slots.close()
        assert all(w.state is WaiterState.FAILED for w in failed)
        self._drop_expired()
        assert not self.queue

    @precondition(lambda self: self.slots.closing)
    @rule()
    def finish(self) -> None:
        left = self.slots.finish()
        assert all(h.stage is Stage.GONE for h in left)
        for holders in (self.leased, self.returning, self.closing):
            holders.clear()
        # Openers still connecting find their holder gone when they finish.
        assert all(h.stage is Stage.GONE for h in self.opening)

    # -- promises ---------------------------------------------------------------------

    @invariant()
    def machine_invariants_hold(self) -> None:
        self.slots.check()

    @invariant()
    def no_connection_has_two_holders(self) -> None:
        live = [
            *self.leased,
            *self.returning,
            *self.closing,
            *self.slots.idle,
            *(w.grant for w in self.served if w.grant is not None),
        ]
        assert len({id(h) for h in live}) == len(live), "a connection is held twice"
        if not self.slots.closing:
            for holder in live:
                assert holder in self.slots.holders

    @invariant()
    def nobody_waits_past_a_deadline_the_clock_has_passed(self) -> None:
        # time_passes expires everything due: what is still waiting is not due.
        for waiter in self.queue:
            if waiter.state is WaiterState.WAITING:
                assert waiter.deadline > self.now, "a waiter outlived its deadline"


TestSlotMachine = SlotMachineModel.TestCase
TestSlotMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
