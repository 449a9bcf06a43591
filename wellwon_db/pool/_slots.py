"""Slots and waiters: the pool's decisions, as a pure synchronous state machine.

Nothing here awaits, reads a clock or touches a connection: times come in as
arguments, and each transition returns what its caller must do next. The
pool (``_leases.py``, ``_pool.py``) performs that I/O outside, so every
decision can be tested without a server (``tests/test_slots.py``).

A *slot* is the right to one connection to the server. :attr:`Slots.count`
slots are in use, never more than ``max_size``. Each belongs to one
:class:`Holder`, the record of one connection (asyncpg's
``PoolConnectionHolder``), whose :class:`Stage` says where the connection is::

                 reserve()           opened()             put_back()
      (free) ─────────────▶ OPENING ──────────▶ LEASED ─────────────────▶ IDLE
        ▲                      │                 │  ▲ ◀──── lease_idle() ───┘
        │        open_failed() │   begin_return()│  │ put_back() (reset done)
        │                      ▼                 ▼  │
        ├─────────────────── GONE ◀── drop() ─ RETURNING
        │                      ▲    (any live stage)
        │                      └── closed() ── CLOSING ◀── retire() ── IDLE, LEASED, RETURNING
        └──── a slot freed by a move to GONE goes to the first waiter, else is uncounted

The slot rule of every transition is in :meth:`Slots._free`, its one place:
moves between live stages keep the slot; a move to ``GONE`` frees it, and a
freed slot goes to the first caller still waiting (as a new ``OPENING``
holder: that caller opens a connection in it), else ``count`` drops. A
retired connection keeps its slot while it closes, so the server never sees
more than ``max_size`` of the pool's connections. ``drop()`` works from any
live stage: the connection is terminated without I/O, or was never made.

Waiters queue first come, first served, each with its own deadline (a second
queue keeps them in deadline order, so a short timeout behind a long one
expires on time). A waiter is handed a grant through :meth:`Waiter.set`, which says whether it
still accepts (psycopg_pool's ``WaitingClient``): one that gave up is
skipped, so nothing handed out is lost.

:meth:`Slots.check` asserts the invariants; tests call it after every step.
"""

from __future__ import annotations

import collections
import enum
from typing import Generic, Protocol, TypeVar

__all__ = ["Holder", "SlotError", "Slots", "Stage", "Waiter", "WaiterState"]

C = TypeVar("C")


class SlotError(AssertionError):
    """A transition from the wrong stage, or a broken invariant: a bug in the pool."""


class Stage(enum.Enum):
    """Where one holder's connection is."""

    #: A slot is reserved and its connection is being opened.
    OPENING = "opening"
    #: In the idle stack, ready to lend.
    IDLE = "idle"
    #: Lent to a caller (who may be checking it before use).
    LEASED = "leased"
    #: Given back; being reset or checked before it is idle again.
    RETURNING = "returning"
    #: Being closed politely; its slot stays counted until it is closed.
    CLOSING = "closing"
    #: Closed, terminated, abandoned or never opened; its slot is free.
    GONE = "gone"


#: Stages in which the pool tracks an open connection.
TRACKED = frozenset({Stage.IDLE, Stage.LEASED, Stage.RETURNING})


class Holder(Generic[C]):
    """One slot and its connection: the per-connection record of the pool.

    Times are the caller's clock (``time.monotonic()`` in the pool). The
    fields after ``stage`` are the lease layer's: who holds the connection
    and since when, how often it was lent, and the watch over the statement
    in flight (``watch_since`` 0 when none is watched).
    """

    __slots__ = (
        "born",
        "connection",
        "idle_since",
        "leased_at",
        "overdue",
        "owner",
        "stage",
        "stale_sequences",
        "timed",
        "uses",
        "watch_base",
        "watch_since",
    )

    def __init__(self) -> None:
        self.stage = _OPENING
        self.connection: C | None = None
        self.born = 0.0
        self.idle_since = 0.0
        self.leased_at = 0.0
        self.uses = 0
        #: The task holding the lease (opaque here).
        self.owner: object = None
        #: When the watched statement began (0.0: none), the owner's
        #: cancellation count then, and whether the watchdog cancelled it.
        self.watch_since = 0.0
        self.watch_base = 0
        self.overdue = False
        #: Whether the driver's own per-statement timeout is switched on (raw use).
        self.timed = False
        #: Whether the session holds an earlier borrower's sequence state
        #: (``lastval()``), not yet discarded: the lease layer clears it lazily.
        self.stale_sequences = False

    def __repr__(self) -> str:
        return f"<Holder {self.stage.value} uses={self.uses}>"


#: Stages that hold a leased or returning connection (what close must stop).
BUSY = frozenset({Stage.LEASED, Stage.RETURNING})


class WaiterState(enum.Enum):
    """Where a queued caller is."""

    WAITING = "waiting"
    #: Handed a grant: a leased holder, or an ``OPENING`` one to connect in.
    SERVED = "served"
    #: Timed out, cancelled, or failed by close; never served.
    FAILED = "failed"


# Members as module constants, for the per-call paths: reading a member off
# its enum class costs 130-210 ns on Python 3.11, a module constant 20 ns.
_OPENING, _IDLE, _LEASED = Stage.OPENING, Stage.IDLE, Stage.LEASED
_RETURNING, _CLOSING, _GONE = Stage.RETURNING, Stage.CLOSING, Stage.GONE
_WAITING, _SERVED, _FAILED = WaiterState.WAITING, WaiterState.SERVED, WaiterState.FAILED


class Waiter(Protocol[C]):
    """A caller queued for a connection, with its own ``deadline``: what the machine needs.

    The machine sets ``state`` (and ``grant`` through :meth:`set`); the
    pool's waiter (``_waiting.py``) also wakes the future its caller awaits.
    """

    deadline: float
    state: WaiterState
    grant: Holder[C] | None

    def set(self, grant: Holder[C]) -> bool:
        """Take ``grant`` (called only while waiting); ``False`` if no longer accepting.

        A waiter that accepts leaves :attr:`state` ``SERVED`` with its
        :attr:`grant`; one that refuses (its caller gave up meanwhile) leaves
        it ``FAILED``, and the grant goes to the next waiter.
        """
        ...


class Slots(Generic[C]):
    """Slots, holders and waiters of one pool, and the transitions between them.

    Read-only for callers: :attr:`count`, :attr:`idle` (the idle stack, top
    last), :attr:`waiting`, :attr:`closing`, :attr:`holders`. Everything
    else changes through the methods below.
    """

    __slots__ = (
        "_deadlines",
        "_queue",
        "closing",
        "count",
        "holders",
        "idle",
        "max_size",
        "min_size",
        "opened_total",
        "retired_total",
        "waiting",
    )

    def __init__(self, max_size: int, min_size: int = 0) -> None:
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError(f"need 0 <= min_size <= max_size, 1 <= max_size: {min_size=}")
        self.max_size = max_size
        self.min_size = min_size
        #: Slots in use: holders in any stage but ``GONE``.
        self.count = 0
        self.idle: list[Holder[C]] = []
        self.holders: set[Holder[C]] = set()
        #: Callers queued and still waiting.
        self.waiting = 0
        #: Set by :meth:`close`: no more grants, waiters or reservations.
        self.closing = False
        self.opened_total = 0
        self.retired_total = 0
        # First come, first served; entries that stopped waiting are skipped
        # when they reach the front (removing from the middle would be O(n)).
        self._queue: collections.deque[Waiter[C]] = collections.deque()
        # The same waiters in deadline order (ties in arrival order), for
        # expiry. With one timeout per pool that is arrival order, so an
        # append; a shorter timeout behind longer ones is inserted in place.
        self._deadlines: collections.deque[Waiter[C]] = collections.deque()

    def __repr__(self) -> str:
        return (
            f"<Slots count={self.count}/{self.max_size} idle={len(self.idle)} "
            f"waiting={self.waiting}{' closing' if self.closing else ''}>"
        )

    # -- getting a connection ------------------------------------------------

    def acquire(self, now: float) -> Holder[C] | None:
        """What a caller gets: :meth:`lease_idle`, else :meth:`reserve`, else ``None`` (wait).

        A ``LEASED`` holder is the caller's to use, an ``OPENING`` one its
        slot to open a connection in.
        """
        if self.idle:
            holder = self.idle.pop()
            holder.stage = _LEASED
            holder.leased_at = now
            return holder
        return self.reserve()

    def lease_idle(self, now: float) -> Holder[C] | None:
        """IDLE -> LEASED: the top of the idle stack (the most recently used), or ``None``."""
        if not self.idle:
            return None
        holder = self.idle.pop()
        holder.stage = _LEASED
        holder.leased_at = now
        return holder

    def reserve(self) -> Holder[C] | None:
        """A free slot as a new ``OPENING`` holder, or ``None`` when all are in use.

        Takes a slot before any I/O, so concurrent callers never open more
        than ``max_size`` connections. ``None`` while closing.
        """
        if self.count >= self.max_size or self.closing:
            return None
        self.count += 1
        holder: Holder[C] = Holder()
        self.holders.add(holder)
        return holder

    def opened(self, holder: Holder[C], connection: C, now: float) -> bool:
        """OPENING -> LEASED to whoever opened it. ``False`` when the holder is GONE.

        ``False`` means the pool closed (or was abandoned) while the
        connection was being opened: the caller must terminate it.
        """
        if holder.stage is _GONE:
            return False
        self._expect(holder, _OPENING)
        holder.stage = _LEASED
        holder.connection = connection
        holder.born = holder.idle_since = holder.leased_at = now
        self.opened_total += 1
        return True

    def open_failed(self, holder: Holder[C]) -> Waiter[C] | None:
        """OPENING -> GONE: the slot is free again (see :meth:`_free`)."""
        if holder.stage is _GONE:
            return None
        self._expect(holder, _OPENING)
        return self._free(holder)

    def replace(self, holder: Holder[C]) -> Holder[C]:
        """LEASED -> GONE, and the same slot as a new ``OPENING`` holder for the same caller.

        For a lent connection found dead or expired: its caller keeps its
        place and opens a replacement without queueing again.
        """
        self._expect(holder, _LEASED)
        holder.stage = _GONE
        self.holders.discard(holder)
        self.retired_total += 1
        fresh: Holder[C] = Holder()
        self.holders.add(fresh)
        return fresh

    # -- waiting ---------------------------------------------------------------

    def wait(self, waiter: Waiter[C]) -> None:
        """Queue ``waiter``: only when nothing is assignable (no idle holder, no free slot)."""
        if self.idle or self.count < self.max_size or self.closing:
            raise SlotError(f"a caller queued while a connection or slot was free: {self!r}")
        self._queue.append(waiter)
        deadlines = self._deadlines
        if deadlines and deadlines[0].state is not _WAITING:
            deadlines.popleft()  # one stale entry per new one: the order stays short
        if not deadlines or waiter.deadline >= deadlines[-1].deadline:
            deadlines.append(waiter)
        else:
            index = len(deadlines)
            while index and deadlines[index - 1].deadline > waiter.deadline:
                index -= 1
            deadlines.insert(index, waiter)
        self.waiting += 1

    def withdraw(self, waiter: Waiter[C]) -> Holder[C] | None:
        """``waiter`` gives up (cancelled): its grant if it was served, else ``None``.

        A returned grant must be passed on with :meth:`pass_on`.
        """
        if waiter.state is _WAITING:
            waiter.state = _FAILED
            self.waiting -= 1
            return None
        grant, waiter.grant = waiter.grant, None
        return grant

    def pass_on(self, grant: Holder[C], now: float) -> Waiter[C] | None:
        """A grant its receiver cannot use: a leased holder goes back, a reservation is freed."""
        if grant.stage is _OPENING:
            return self.open_failed(grant)
        if grant.stage is _GONE:
            return None
        return self.put_back(grant, now)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a caller still waiting, or ``None``."""
        deadlines = self._deadlines
        while deadlines and deadlines[0].state is not _WAITING:
            deadlines.popleft()
        return deadlines[0].deadline if deadlines else None

    def expire(self, now: float) -> list[Waiter[C]]:
        """Waiters whose deadline is past, marked ``FAILED``: the caller wakes them."""
        expired: list[Waiter[C]] = []
        deadlines = self._deadlines
        while deadlines:
            waiter = deadlines[0]
            if waiter.state is _WAITING:
                if waiter.deadline > now:
                    break
                waiter.state = _FAILED
                self.waiting -= 1
                expired.append(waiter)
            deadlines.popleft()
        return expired

    # -- giving back -----------------------------------------------------------

    def put_back(self, holder: Holder[C], now: float) -> Waiter[C] | None:
        """LEASED or RETURNING -> the first waiter (stays LEASED), else IDLE on top.

        Returns the waiter served, which now holds the lease. Either way
        ``idle_since`` is ``now``: the connection was good when given back.
        """
        stage = holder.stage
        if stage is not _LEASED and stage is not _RETURNING:
            raise SlotError(f"put_back() of a {stage.value} holder")
        # Known good as of now, whoever gets it next: handed from waiter to
        # waiter it may never sit idle, and must not look stale for that.
        holder.idle_since = now
        if self.waiting:
            holder.stage = _LEASED
            waiter = self._hand_off(holder)
            if waiter is not None:
                return waiter  # it holds the lease now
        holder.stage = _IDLE
        self.idle.append(holder)
        return None

    def begin_return(self, holder: Holder[C]) -> None:
        """LEASED -> RETURNING: the lease ended; a reset or check comes before reuse."""
        self._expect(holder, _LEASED)
        holder.stage = _RETURNING

    # -- removing ----------------------------------------------------------------

    def retire(self, holder: Holder[C]) -> None:
        """IDLE, LEASED or RETURNING -> CLOSING: to be closed politely; the slot stays counted.

        Call :meth:`closed` when the close is done (or failed).
        """
        if holder.stage not in TRACKED:
            raise SlotError(f"retire() of a {holder.stage.value} holder")
        if holder.stage is _IDLE:
            self.idle.remove(holder)
        holder.stage = _CLOSING
        self.retired_total += 1

    def closed(self, holder: Holder[C]) -> Waiter[C] | None:
        """CLOSING -> GONE: the slot is free (see :meth:`_free`)."""
        if holder.stage is _GONE:
            return None
        self._expect(holder, _CLOSING)
        return self._free(holder)

    def drop(self, holder: Holder[C]) -> Waiter[C] | None:
        """Any live stage -> GONE at once (terminated, no I/O awaited): the slot is free.

        Dropping a GONE holder does nothing, so a connection found dead by
        two paths frees one slot.
        """
        stage = holder.stage
        if stage is _GONE:
            return None
        if stage is _IDLE:
            self.idle.remove(holder)
        if stage in TRACKED:
            self.retired_total += 1
        return self._free(holder)

    def _free(self, holder: Holder[C]) -> Waiter[C] | None:
        """The slot rule: a freed slot goes to the first waiter, else is uncounted."""
        holder.stage = _GONE
        self.holders.discard(holder)
        if self.waiting:
            fresh: Holder[C] = Holder()
            self.holders.add(fresh)
            waiter = self._hand_off(fresh)
            if waiter is not None:
                return waiter  # it opens a connection in the slot
            self.holders.discard(fresh)
        self.count -= 1
        return None

    def _hand_off(self, grant: Holder[C]) -> Waiter[C] | None:
        """Give ``grant`` to the first waiter that accepts it, or ``None``."""
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if waiter.state is _WAITING:
                self.waiting -= 1
                if waiter.set(grant):
                    # With one timeout per pool the first in the queue is also
                    # first by deadline: its entry goes now (others when they
                    # reach the front, see wait()).
                    if self._deadlines[0] is waiter:
                        self._deadlines.popleft()
                    return waiter
        return None

    def fail_waiting(self) -> list[Waiter[C]]:
        """Every caller still waiting fails (returned, to be woken with an error); the pool
        goes on granting to later callers. For a database known to be down."""
        failed = [w for w in self._queue if w.state is _WAITING]
        for waiter in failed:
            waiter.state = _FAILED
        self._queue.clear()
        self._deadlines.clear()
        self.waiting = 0
        return failed

    # -- the pool's end ----------------------------------------------------------

    def close(self) -> list[Waiter[C]]:
        """Stop granting: every waiter fails (returned, to be woken with an error).

        Holders keep their stages: leased ones still come back to the idle
        stack (the drain), and :meth:`finish` ends them all.
        """
        self.closing = True
        failed = [w for w in self._queue if w.state is _WAITING]
        for waiter in failed:
            waiter.state = _FAILED
        self._queue.clear()
        self._deadlines.clear()
        self.waiting = 0
        return failed

    @property
    def drained(self) -> bool:
        """Whether every slot in use is idle (nothing lent, opening, resetting or closing)."""
        return len(self.idle) == self.count

    def busy(self) -> list[Holder[C]]:
        """Holders whose connection is in use (LEASED or RETURNING)."""
        return [h for h in self.holders if h.stage is _LEASED or h.stage is _RETURNING]

    def finish(self) -> list[Holder[C]]:
        """Every holder -> GONE, ``count`` 0: the ones that still had a connection.

        The caller terminates those connections. Late transitions on them
        (a release, a connect completing) then find them ``GONE``.
        """
        self.close()
        left = [h for h in self.holders if h.connection is not None]
        for holder in self.holders:
            if holder.stage in TRACKED:
                self.retired_total += 1
            holder.stage = _GONE
        self.holders.clear()
        self.idle.clear()
        self.count = 0
        return left

    def abandon(self) -> list[Holder[C]]:
        """Every holder -> GONE without I/O (a forked child): their connections, to keep.

        The connections belong to the parent process; the caller keeps them
        referenced so that garbage collection does not close them either.
        """
        holders = [h for h in self.holders if h.connection is not None]
        self.close()
        for holder in self.holders:
            holder.stage = _GONE
        self.holders.clear()
        self.idle.clear()
        self.count = 0
        return holders

    # -- checks ------------------------------------------------------------------

    def _expect(self, holder: Holder[C], stage: Stage) -> None:
        if holder.stage is not stage:
            raise SlotError(f"expected a {stage.value} holder, got a {holder.stage.value} one")

    def stage_counts(self) -> dict[Stage, int]:
        """How many holders are in each live stage."""
        counts = dict.fromkeys(Stage, 0)
        for holder in self.holders:
            counts[holder.stage] += 1
        return counts

    def check(self) -> None:
        """Raise :class:`SlotError` when an invariant does not hold. O(size + waiters).

        1. ``count`` = holders tracked (idle, leased, returning) + opening + closing;
        2. ``count`` <= ``max_size``;
        3. the idle stack holds exactly the IDLE holders, each once;
        4. callers wait only when nothing is assignable: no idle holder, no
           free slot, not closing;
        5. ``waiting`` counts the queued waiters still waiting, and each of
           them is in the deadline order, which is sorted.
        """
        counts = self.stage_counts()
        if counts[_GONE]:
            raise SlotError(f"{counts[_GONE]} GONE holders still tracked")
        live = sum(counts.values())
        if self.count != live:
            raise SlotError(f"count {self.count} != {live} holders ({counts})")
        if self.count > self.max_size:
            raise SlotError(f"count {self.count} > max_size {self.max_size}")
        idle_ids = {id(h) for h in self.idle}
        if len(idle_ids) != len(self.idle) or len(self.idle) != counts[_IDLE]:
            raise SlotError(f"idle stack {self.idle} vs {counts[_IDLE]} IDLE holders")
        if any(h.stage is not _IDLE or h not in self.holders for h in self.idle):
            raise SlotError(f"idle stack holds a holder that is not IDLE: {self.idle}")
        waiting = [w for w in self._queue if w.state is _WAITING]
        if len(waiting) != self.waiting:
            raise SlotError(f"waiting {self.waiting} != {len(waiting)} queued waiters")
        by_deadline = [w.deadline for w in self._deadlines]
        if by_deadline != sorted(by_deadline):
            raise SlotError(f"deadlines out of order: {by_deadline}")
        ordered = {id(w) for w in self._deadlines}
        if any(id(w) not in ordered for w in waiting):
            raise SlotError("a waiting caller has no place in the deadline order")
        if self.waiting and (self.idle or self.count < self.max_size or self.closing):
            raise SlotError(f"callers wait while something is assignable: {self!r}")
