"""``PoolSlot``: where a database's current pool, its breaker and its retry policy live."""

from __future__ import annotations

from wellwon_db.config._database import Database
from wellwon_db.config._policies import BreakerConfig, RetryConfig
from wellwon_db.errors import PoolClosedError
from wellwon_db.pool._pool import DatabasePool
from wellwon_db.resilience._breaker import CircuitBreaker
from wellwon_db.resilience._retry import RetryPolicy
from wellwon_db.telemetry._telemetry import record_breaker_transition

__all__ = ["PoolSlot"]


class PoolSlot:
    """The stable place where a database's current pool lives, with its resilience.

    Clients hold the slot, not the pool: when the container stops and starts
    again, the same clients reach the new pool. ``pool`` is ``None`` while no
    pool is open. The slot also keeps the database's circuit breaker (which
    outlives pools, so listeners stay attached) and its retry policy; the pool
    knows of neither.
    """

    __slots__ = ("breaker", "database", "pool", "retry")

    def __init__(
        self,
        database: Database,
        pool: DatabasePool | None = None,
        *,
        breaker: BreakerConfig | None = None,
        retry: RetryConfig | None = None,
    ) -> None:
        self.database = database
        self.pool = pool
        self.breaker = CircuitBreaker(database.value, breaker)
        self.breaker.add_listener(record_breaker_transition)
        self.retry = RetryPolicy(database.value, retry)

    def __repr__(self) -> str:
        return f"<PoolSlot {self.database.value} {self.pool!r}>"

    def configure(self, breaker: BreakerConfig, retry: RetryConfig) -> None:
        """Apply new breaker thresholds (the breaker starts closed again) and retry settings."""
        self.breaker.reconfigure(breaker)
        self.retry = RetryPolicy(self.database.value, retry)

    def get(self) -> DatabasePool:
        """The open pool; ``PoolClosedError`` saying how to start it when there is none."""
        pool = self.pool
        if pool is None:
            raise PoolClosedError(
                f"the {self.database.value} database pool is not open: start it with "
                "`await wellwon_db.start_databases(container)` (or `database_lifespan`) "
                "before using the client; after stop_databases() the client works again "
                "once the pools are started",
                database=self.database.value,
            )
        return pool
