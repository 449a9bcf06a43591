"""``PoolSlot``: where a database's current pool and its breaker live."""

from __future__ import annotations

from wellwon_db.config._database import Database
from wellwon_db.errors import PoolClosedError
from wellwon_db.pool._pool import DatabasePool
from wellwon_db.resilience._breaker import CircuitBreaker
from wellwon_db.telemetry._telemetry import record_breaker_transition

__all__ = ["PoolSlot"]


class PoolSlot:
    """The stable place where a database's current pool lives.

    Clients hold the slot, not the pool: when the container stops and starts
    again, the same clients reach the new pool. ``pool`` is ``None`` while no
    pool is open. The slot also keeps the database's circuit breaker.
    """

    __slots__ = ("breaker", "database", "pool")

    def __init__(self, database: Database) -> None:
        self.database = database
        self.pool: DatabasePool | None = None
        #: The database's breaker; it outlives pools, so listeners stay attached.
        self.breaker = CircuitBreaker(database.value)
        self.breaker.add_listener(record_breaker_transition)

    def __repr__(self) -> str:
        return f"<PoolSlot {self.database.value} {self.pool!r}>"

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
