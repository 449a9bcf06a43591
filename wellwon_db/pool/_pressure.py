"""The pool-pressure warning: callers waiting, or nearly every connection in use, for too long."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from wellwon_db.config._policies import PoolConfig
from wellwon_db.telemetry._telemetry import PoolTelemetry

__all__ = ["PressureWatch"]

logger = logging.getLogger("wellwon_db.pool")


class PressureWatch:
    """Warns once per episode of waiters or high utilisation lasting ``exhaustion_warn`` s.

    Utilisation counts from ``exhaustion_utilisation`` percent of
    ``max_size``; ``exhaustion_warn`` 0 turns the warning off. The episode
    ends (with an info line) when neither holds. A stuck pool (every
    connection held, callers only waiting) has no lease events: a timer
    armed when the episode begins makes the warning come on time anyway;
    ``counts()`` gives it the leases and waiters of that moment.
    """

    __slots__ = (
        "_config",
        "_counts",
        "_name",
        "_telemetry",
        "_timer",
        "_warned",
        "since",
        "threshold",
    )

    def __init__(
        self,
        name: str,
        config: PoolConfig,
        telemetry: PoolTelemetry,
        counts: Callable[[], tuple[int, int]],
    ) -> None:
        self._name = name
        self._config = config
        self._telemetry = telemetry
        self._counts = counts
        #: Leases at which utilisation counts as pressure (infinite when warnings are off).
        self.threshold = (
            config.exhaustion_utilisation * config.max_size / 100.0
            if config.exhaustion_warn
            else math.inf
        )
        #: When the current episode began, ``None`` when there is none.
        self.since: float | None = None
        self._warned = False
        self._timer: asyncio.TimerHandle | None = None

    def update(self, now: float, leased: int, waiting: int) -> None:
        """Note the counts after a lease began or ended, or a caller queued or left."""
        config = self._config
        if not config.exhaustion_warn or (not waiting and leased < self.threshold):
            if self.since is not None and self._warned:
                logger.info("the %s pool is no longer under pressure", self._name)
            self.since = None
            self._warned = False
            self.stop()
            return
        if self.since is None:
            self.since = now
            self._arm(config.exhaustion_warn)
        elif not self._warned and now - self.since >= config.exhaustion_warn:
            self._warn(now, leased, waiting)

    def stop(self) -> None:
        """Cancel the episode's timer (the episode ended, or the pool closes)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover (leases happen on a loop)
            return
        self.stop()
        self._timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        since = self.since
        if since is None or self._warned:
            return
        remaining = since + self._config.exhaustion_warn - time.monotonic()
        if remaining > 0:  # a loop may run a timer up to its clock resolution early
            self._arm(remaining)
            return
        leased, waiting = self._counts()
        self.update(time.monotonic(), leased, waiting)

    def _warn(self, now: float, leased: int, waiting: int) -> None:
        config = self._config
        self._warned = True
        self.stop()
        self._telemetry.pool_exhausted()
        logger.warning(
            "the %s pool has been under pressure for %.1fs: %d of %d connections in use, "
            "%d tasks waiting (raise %s, or hold connections for shorter)",
            self._name,
            now - (self.since or now),
            leased,
            config.max_size,
            waiting,
            config.setting_names.get("pool_max_size", "pool_max_size"),
            extra={
                "database": self._name,
                "in_use": leased,
                "max_size": config.max_size,
                "waiting": waiting,
            },
        )
