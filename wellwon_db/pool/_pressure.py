"""The pool-pressure warning: callers waiting, or nearly every connection in use, for too long."""

from __future__ import annotations

import logging
import math

from wellwon_db.config._config import PoolConfig
from wellwon_db.telemetry._telemetry import PoolTelemetry

__all__ = ["PressureWatch"]

logger = logging.getLogger("wellwon_db.pool")


class PressureWatch:
    """Warns once per episode of waiters or high utilisation lasting ``exhaustion_warn`` s.

    Utilisation counts from ``exhaustion_utilisation`` percent of
    ``max_size``; ``exhaustion_warn`` 0 turns the warning off. The episode
    ends (with an info line) when neither holds.
    """

    __slots__ = ("_config", "_name", "_telemetry", "_warned", "since", "threshold")

    def __init__(self, name: str, config: PoolConfig, telemetry: PoolTelemetry) -> None:
        self._name = name
        self._config = config
        self._telemetry = telemetry
        #: Leases at which utilisation counts as pressure (infinite when warnings are off).
        self.threshold = (
            config.exhaustion_utilisation * config.max_size / 100.0
            if config.exhaustion_warn
            else math.inf
        )
        #: When the current episode began, ``None`` when there is none.
        self.since: float | None = None
        self._warned = False

    def update(self, now: float, leased: int, waiting: int) -> None:
        """Note the counts after a lease began or ended."""
        config = self._config
        if not config.exhaustion_warn or (not waiting and leased < self.threshold):
            if self.since is not None and self._warned:
                logger.info("the %s pool is no longer under pressure", self._name)
            self.since = None
            self._warned = False
            return
        if self.since is None:
            self.since = now
        elif not self._warned and now - self.since >= config.exhaustion_warn:
            self._warned = True
            self._telemetry.pool_exhausted()
            logger.warning(
                "the %s pool has been under pressure for %.1fs: %d of %d connections in use, "
                "%d tasks waiting (raise %s, or hold connections for shorter)",
                self._name,
                now - self.since,
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
