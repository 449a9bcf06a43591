"""The background work of an open pool: refill, housekeeping, the statement watchdog.

:class:`Upkeep` owns the pool's background tasks; the pool starts it when
it opens and stops it when it closes. It never decides about slots itself:
it asks the pool's :class:`~._leases.Leases` to open, retire or cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from wellwon_db.config._policies import PoolConfig
from wellwon_db.errors import DatabaseUnavailableError
from wellwon_db.pool._backoff import Backoff
from wellwon_db.pool._leases import Leases
from wellwon_db.pool._slots import Stage

__all__ = ["Upkeep"]

logger = logging.getLogger("wellwon_db.pool")


class Upkeep:
    """Keeps one open pool at ``min_size``, within its lifetimes, and its statements timed.

    - *refill*: below ``min_size``, connections are opened one after another
      at once while the server answers; while it does not, attempts back off
      (50 ms doubling up to ``reconnect_backoff_max``), so a dead server is
      not hammered, and any successful connect (the refill's or a caller's)
      ends the backoff, so the pool is back to ``min_size`` within moments of
      the server's return;
    - *housekeeping*: every half of the shorter lifetime limit (at most
      every 60 s), idle connections too old or unused too long are closed;
    - *watchdog*: every tenth of the command timeout (10 ms to 1 s),
      statements past it are cancelled (``_watchdog.py``);
    - *background connect*: a pool that opened without its server tries
      until the server answers, then serves.
    """

    def __init__(self, name: str, config: PoolConfig, leases: Leases) -> None:
        self._name = name
        self._config = config
        self._leases = leases
        #: Open and connected: refills may run.
        self.active = False
        # Set by every successful connect: a refill backing off tries at once.
        self._answered = asyncio.Event()
        self._connect: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._refill: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    def start(self, *, offline: bool, answered: Callable[[], None]) -> None:
        """Start the tasks of a pool that just opened; ``offline``: its server did not answer.

        ``answered`` is called once the server of an offline pool answers.
        """
        name = self._name
        if offline:
            self._connect = asyncio.create_task(
                self._connect_in_background(answered), name=f"wellwon_db-connect-{name}"
            )
        else:
            self.active = True
        self._housekeeper = asyncio.create_task(
            self._keep_house(), name=f"wellwon_db-housekeeping-{name}"
        )
        if self._config.command_timeout:
            self._watchdog = asyncio.create_task(
                self._watch_statements(), name=f"wellwon_db-watchdog-{name}"
            )

    def _tasks(self) -> list[asyncio.Task[None]]:
        tasks = (self._connect, self._housekeeper, self._refill, self._watchdog)
        self._connect = self._housekeeper = self._refill = self._watchdog = None
        return [task for task in tasks if task is not None]

    async def stop(self) -> None:
        """Cancel every task and wait for them (raises only if the caller is cancelled)."""
        self.active = False
        tasks = self._tasks()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def abandon(self) -> None:
        """Forget the tasks without touching them (a forked child: they are the parent's)."""
        self.active = False
        self._tasks()

    # -- opening ---------------------------------------------------------------------

    async def fill(self, target: int) -> None:
        """Open connections (concurrently) until ``target`` slots are in use; all or none.

        On any failure every connection this opened is terminated again and
        the first error raised.
        """
        leases, slots = self._leases, self._leases.slots
        holders = []
        while slots.count < target:
            holder = slots.reserve()
            if holder is None:
                break
            holders.append(holder)
        results = await asyncio.gather(
            *(leases.open_in(holder) for holder in holders), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for holder in holders:
                if holder.stage is Stage.LEASED:
                    leases.drop(holder)
            raise failures[0]
        for holder in holders:
            leases.put_back(holder)

    async def grow_idle(self) -> bool:
        """Open one connection into the idle stack; ``False`` when no slot is free.

        Raises what opening raises.
        """
        holder = self._leases.slots.reserve()
        if holder is None:
            return False
        await self._leases.open_in(holder)
        self._leases.put_back(holder)
        return True

    def drop_all(self) -> None:
        """Terminate every tracked connection now and free every slot (a failed open)."""
        for holder in list(self._leases.slots.holders):
            self._leases.drop(holder)

    # -- refill --------------------------------------------------------------------

    def connected(self) -> None:
        """A connect succeeded: the server answers, so a refill backing off goes on at once."""
        self._answered.set()
        self.refill_soon()

    def refill_soon(self) -> None:
        """Open connections up to ``min_size`` in the background (one task at a time)."""
        if not self.active or self._refill is not None:
            return
        if self._leases.slots.count >= self._config.min_size:
            return
        self._refill = asyncio.get_running_loop().create_task(
            self._refill_to_min(), name=f"wellwon_db-refill-{self._name}"
        )

    async def _refill_to_min(self) -> None:
        slots = self._leases.slots
        backoff = Backoff(0.05, max(self._config.reconnect_backoff_max, 0.05))
        try:
            while self.active and slots.count < self._config.min_size:
                self._answered.clear()
                try:
                    if not await self.grow_idle():
                        return  # every slot is in use: nothing to refill
                    backoff.reset()
                    continue
                except Exception as exc:
                    delay = backoff.next_delay()
                    logger.debug(
                        "could not restore the %s pool's minimum (%r); next try in %.2fs",
                        self._name,
                        exc,
                        delay,
                    )
                # Until the next attempt, or until anyone connects successfully.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._answered.wait()
        finally:
            self._refill = None

    async def _connect_in_background(self, answered: Callable[[], None]) -> None:
        """Offline start: try until the server answers, then serve and fill to ``min_size``."""
        backoff = Backoff(0.1, max(self._config.reconnect_backoff_max, 0.1))
        while True:
            try:
                await self.grow_idle()
                break
            except Exception as exc:
                log = logger.debug if isinstance(exc, DatabaseUnavailableError) else logger.warning
                log("the %s database is still not reachable: %s", self._name, exc)
            await asyncio.sleep(backoff.next_delay())
        self._connect = None
        self.active = True
        answered()
        logger.warning("the %s database answers again: pool connected", self._name)
        self.refill_soon()

    # -- housekeeping and the watchdog -----------------------------------------------

    def _housekeeping_period(self) -> float:
        limits = [60.0]
        for limit in (self._config.max_inactive_lifetime, self._config.max_lifetime):
            if limit:
                limits.append(limit / 2)
        return max(min(limits), 0.05)

    async def _keep_house(self) -> None:
        """Every period: close connections idle too long or too old; keep ``min_size``."""
        period = self._housekeeping_period()
        while True:
            await asyncio.sleep(period)
            self.retire_idle(time.monotonic())
            self.refill_soon()

    def retire_idle(self, now: float) -> None:
        """Close idle connections past ``max_inactive_lifetime`` (above ``min_size``) or
        past ``max_lifetime``, those idle longest first."""
        config = self._config
        inactive, lifetime = config.max_inactive_lifetime, config.max_lifetime
        slots = self._leases.slots
        surplus = slots.count - config.min_size  # closing ones count until closed
        for holder in list(slots.idle):  # the bottom of the stack has been idle longest
            unused = bool(inactive) and now - holder.idle_since > inactive and surplus > 0
            if (lifetime and now - holder.born > lifetime) or unused:
                surplus -= 1
                self._leases.retire(holder)

    async def _watch_statements(self) -> None:
        """Cancel single statements past the command timeout, at most a tenth of it late."""
        period = min(max(self._config.command_timeout / 10, 0.01), 1.0)
        while True:
            await asyncio.sleep(period)
            self._leases.cancel_overdue(time.monotonic())
