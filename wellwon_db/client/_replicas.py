"""Read replicas: which server answers a read, from lag measured in the background.

A :class:`ReplicaSet` is the slot of a replica database (``main_replica``):
one endpoint per replica DSN, each with its own pool and breaker, and the
primary's slot to fall back to. :meth:`ReplicaSet.choose` is the per-read
decision, synchronous and allocation-free in the common case:

* a context with no write position on the primary: the next usable replica
  (round robin), else the primary;
* a context that wrote: a usable replica that has replayed past the write's
  WAL position, else the primary (no waiting: the primary always has it).

"Usable" is decided by :meth:`ReplicaSet.measure`, which runs when the set
opens and then every ``lag_check_sec`` in the background: a replica that is
a hot standby, answers, and is no more than ``max_lag_sec`` behind. Lag is
measured from WAL positions: the primary's ``pg_current_wal_lsn()`` is
sampled on each round, and a replica's lag is the time since the primary
first moved past the position the replica has replayed
(``pg_last_wal_replay_lsn()``). An idle primary does not move, so an idle,
caught-up replica has no lag, whatever ``pg_last_xact_replay_timestamp()``
says.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

import asyncpg

from wellwon_db.client._positions import position_of
from wellwon_db.client._slot import PoolSlot
from wellwon_db.config._registry import DatabaseName, database_name
from wellwon_db.errors import ConfigurationError
from wellwon_db.pool._pool import DatabasePool

Record = asyncpg.Record

__all__ = ["ReplicaEndpoint", "ReplicaSet", "ReplicaState", "lag_seconds"]

logger = logging.getLogger("wellwon_db.replicas")

#: ``ok`` (used), ``lagging`` (behind by more than the limit), ``down`` (not
#: answering), ``not_standby`` (answers but is not in recovery: promoted, or
#: not a replica), ``unknown`` (not measured yet).
ReplicaState: TypeAlias = Literal["ok", "lagging", "down", "not_standby", "unknown"]

#: Why a read went where it went (the ``reason`` of the routing metric).
RouteReason: TypeAlias = Literal[
    "replica", "no_replica", "lagging", "down", "read_your_writes", "failover"
]

_STANDBY_SQL: Final = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()"
_PRIMARY_SQL: Final = "SELECT pg_current_wal_lsn()"


def lag_seconds(history: Sequence[tuple[float, int]], replayed: int, now: float) -> float:
    """Seconds a replica that replayed up to ``replayed`` is behind, from the primary's history.

    ``history`` holds ``(time, primary WAL position)`` samples, oldest first.
    The lag is the time since the first sample in which the primary was past
    ``replayed`` (0 when it never was: the replica has everything).
    """
    for at, position in history:
        if position > replayed:
            return max(0.0, now - at)
    return 0.0


@dataclass(eq=False, slots=True)
class ReplicaEndpoint:
    """One replica server: its slot (pool and breaker) and what the last measurement saw."""

    slot: PoolSlot
    address: str
    state: ReplicaState = "unknown"
    lag_sec: float | None = None
    lag_bytes: int | None = None
    replayed: int | None = None
    checked_at: float | None = None
    error: str | None = field(default=None, repr=False)

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable view for health reports."""
        return {
            "address": self.address,
            "state": self.state,
            "lag_sec": None if self.lag_sec is None else round(self.lag_sec, 3),
            "lag_bytes": self.lag_bytes,
            "error": self.error,
        }


class ReplicaSet:
    """The replicas of one primary, and the choice of the server for each read.

    ``endpoints`` is empty when no replica is configured: every read then goes
    to the primary, and ``unconfigured`` names the variable that would add
    some. ``primary`` is the primary database's slot.
    """

    __slots__ = (
        "__weakref__",
        "_history",
        "_monitor",
        "_next",
        "_primary_name",
        "_usable",
        "_why_primary",
        "database",
        "endpoints",
        "lag_check_sec",
        "max_lag_sec",
        "primary",
        "unconfigured",
    )

    def __init__(self, database: DatabaseName | str, primary: PoolSlot) -> None:
        self.database: DatabaseName = database_name(database)
        self.primary = primary
        self._primary_name = str(primary.database)
        self.endpoints: list[ReplicaEndpoint] = []
        self.max_lag_sec = 5.0
        self.lag_check_sec = 0.5
        self._usable: tuple[ReplicaEndpoint, ...] = ()
        self._why_primary: RouteReason = "no_replica"
        self._next = 0
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._monitor: asyncio.Task[None] | None = None
        #: Set while no replica DSN is configured: names the variable (reads go to the primary).
        self.unconfigured: ConfigurationError | None = None

    def __repr__(self) -> str:
        states = ", ".join(f"{e.address} {e.state}" for e in self.endpoints) or "none"
        return f"<ReplicaSet {self.database} of {self._primary_name}: {states}>"

    # -- the per-read decision -----------------------------------------------

    def choose(self) -> tuple[PoolSlot, RouteReason]:
        """The slot that answers the next read, and why (no I/O)."""
        usable = self._usable
        position = position_of(self._primary_name)
        if position is None:
            if usable:
                turn = self._next
                self._next = turn + 1
                return usable[turn % len(usable)].slot, "replica"
            return self.primary, self._why_primary
        count = len(usable)
        start = self._next
        for offset in range(count):
            endpoint = usable[(start + offset) % count]
            replayed = endpoint.replayed
            if replayed is not None and replayed >= position:
                self._next = start + offset + 1
                return endpoint.slot, "replica"
        return self.primary, "read_your_writes"

    def failed(self, slot: PoolSlot, error: BaseException) -> None:
        """A read on ``slot`` could not be had: stop using that replica until it measures well."""
        for endpoint in self.endpoints:
            if endpoint.slot is slot and endpoint.state == "ok":
                endpoint.state = "down"
                endpoint.error = f"{type(error).__name__}: {error}"
                logger.warning(
                    "%s replica %s failed a read (%s); reads go elsewhere until it answers",
                    self.database,
                    endpoint.address,
                    type(error).__name__,
                )
        self.refresh()

    @property
    def usable(self) -> tuple[ReplicaEndpoint, ...]:
        """The replicas reads may go to now."""
        return self._usable

    def refresh(self) -> None:
        """Recompute which replicas are usable (after a measurement or a breaker change)."""
        usable = tuple(
            endpoint
            for endpoint in self.endpoints
            if endpoint.state == "ok" and endpoint.slot.breaker.state.value not in _REFUSING
        )
        self._usable = usable
        if not self.endpoints:
            self._why_primary = "no_replica"
        elif any(endpoint.state == "lagging" for endpoint in self.endpoints):
            self._why_primary = "lagging"
        else:
            self._why_primary = "down"

    # -- measuring -------------------------------------------------------------

    async def measure(self) -> None:
        """Sample the primary's WAL position and every replica's replay position once."""
        if not self.endpoints:
            return
        now = time.monotonic()
        primary = await self._primary_position()
        if primary is not None:
            self._history.append((now, primary))
            horizon = now - (2 * self.max_lag_sec + 10.0)
            while len(self._history) > 1 and self._history[0][0] < horizon:
                self._history.popleft()
        await asyncio.gather(*(self._measure(endpoint, primary) for endpoint in self.endpoints))
        self.refresh()

    async def _primary_position(self) -> int | None:
        pool = self.primary.pool
        if pool is None:
            return None
        try:
            return await _ask(pool, _PRIMARY_SQL)
        except Exception as exc:
            logger.debug("%s: the primary's WAL position is unknown: %r", self.database, exc)
            return None

    async def _measure(self, endpoint: ReplicaEndpoint, primary: int | None) -> None:
        pool = endpoint.slot.pool
        endpoint.checked_at = time.monotonic()
        if pool is None:
            endpoint.state, endpoint.error = "down", "pool not open"
            return
        try:
            row = await _ask_row(pool, _STANDBY_SQL)
        except Exception as exc:
            endpoint.state, endpoint.error = "down", f"{type(exc).__name__}: {exc}"
            return
        endpoint.error = None
        # Reads skip a replica whose breaker is open, so no call would ever
        # probe it: the measurement that just reached the server does.
        endpoint.slot.breaker.note_reachable()
        in_recovery: bool = row[0]
        replayed: int | None = row[1]
        if not in_recovery or replayed is None:
            endpoint.state = "not_standby"
            return
        endpoint.replayed = replayed
        if primary is not None:
            endpoint.lag_bytes = max(0, primary - replayed)
        endpoint.lag_sec = lag_seconds(self._history, replayed, time.monotonic())
        endpoint.state = "ok" if endpoint.lag_sec <= self.max_lag_sec else "lagging"

    def start_monitor(self) -> None:
        """Measure every ``lag_check_sec`` in the background until :meth:`stop_monitor`."""
        if self._monitor is None and self.endpoints:
            self._monitor = asyncio.get_running_loop().create_task(
                self._keep_measuring(), name=f"wellwon_db-replicas-{self.database}"
            )

    async def stop_monitor(self) -> None:
        """Stop measuring (and wait for the current round to end)."""
        task, self._monitor = self._monitor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_measuring(self) -> None:
        while True:
            await asyncio.sleep(self.lag_check_sec)
            try:
                await self.measure()
            except Exception:  # never let one bad round stop the measurements
                logger.exception("%s: measuring the replicas failed", self.database)

    def reset(self) -> None:
        """Forget every endpoint (the set is closed)."""
        self.endpoints = []
        self._history.clear()
        self.refresh()


_REFUSING: Final = frozenset({"open", "forced_open"})


async def _ask(pool: DatabasePool, sql: str) -> int | None:
    value: int | None = (await _ask_row(pool, sql))[0]
    return value


async def _ask_row(pool: DatabasePool, sql: str) -> Record:
    """One short read on a pooled connection, bounded by the connect timeout."""
    async with asyncio.timeout(pool.config.connect_timeout), pool.acquire() as connection:
        row = await connection.fetchrow(sql)
    if row is None:  # pragma: no cover (both statements always return a row)
        raise RuntimeError(f"no row from {sql!r}")
    return row
