"""What a database's breaker opening sets in motion: queued callers fail, a server check runs.

When a breaker opens, the callers queued on its pool would otherwise wait
out their acquire timeouts for connections that are not coming back: they
fail at once with ``CircuitOpenError``. And while it is open, one cheap
check per process (a connect, then close) runs every
``PG_[<DB>_]BREAKER_PROBE_INTERVAL_SEC``: when the server answers, the
breaker goes half-open at once and real calls probe it, so a returning
server is noticed within about one interval whatever the outage's length
(the open time alone doubles with every failed probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from wellwon_db.errors import CircuitOpenError
from wellwon_db.pool._pool import PoolState
from wellwon_db.resilience._breaker import BreakerState, BreakerTransition, CircuitBreaker

if TYPE_CHECKING:
    from wellwon_db.client._slot import PoolSlot

__all__ = ["BreakerWatch"]

logger = logging.getLogger("wellwon_db.breaker")

_OPEN = BreakerState.OPEN
_REFUSING = (BreakerState.OPEN, BreakerState.FORCED_OPEN)


class BreakerWatch:
    """A breaker listener of one slot: fails its pool's waiters and checks the server."""

    __slots__ = ("_check", "_slot")

    def __init__(self, slot: PoolSlot) -> None:
        self._slot = slot
        self._check: asyncio.Task[None] | None = None

    def __call__(self, transition: BreakerTransition) -> None:
        if transition.new not in _REFUSING:
            return
        pool = self._slot.pool
        breaker = self._slot.breaker
        if pool is not None and pool.leases.slots.waiting:
            failed = pool.leases.fail_waiters(lambda: _open_error(breaker))
            logger.debug("%s: %d queued callers failed at once", transition.database, failed)
        if transition.new is _OPEN and (self._check is None or self._check.done()):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # opened outside a loop (a test driving the breaker): nothing to check
            self._check = loop.create_task(
                self._check_until_reachable(),
                name=f"wellwon_db-breaker-check-{transition.database}",
            )

    async def _check_until_reachable(self) -> None:
        """Check the server every probe interval while the breaker stays open."""
        breaker = self._slot.breaker
        while True:
            due = breaker.check_due_in()
            if due is None:
                return  # closed, half-open, forced open, disabled, or checks off
            if due > 0:
                await asyncio.sleep(due)
                continue
            pool = self._slot.pool
            if pool is None or pool.state is not PoolState.OPEN:
                return
            try:
                await pool.check_reachable()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("%s: still unreachable: %s", breaker.database, exc)
                breaker.note_unreachable()
            else:
                breaker.note_reachable()
                return

    async def stop(self) -> None:
        """Stop a check in progress (the container stops)."""
        task, self._check = self._check, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _open_error(breaker: CircuitBreaker) -> Exception:
    try:
        breaker.allow()
    except CircuitOpenError as exc:
        return exc
    return CircuitOpenError(
        f"the {breaker.database} database is failing; its circuit breaker opened while "
        "this call waited for a connection",
        database=breaker.database,
    )
