"""``PoolSlot``: where a database's current pool, its breaker and its retry policy live."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wellwon_db.client._breaker_watch import BreakerWatch
from wellwon_db.config._policies import BreakerConfig, RetryConfig
from wellwon_db.config._registry import Database, DatabaseName, database_name
from wellwon_db.errors import ConfigurationError, PoolClosedError
from wellwon_db.pool._pool import DatabasePool
from wellwon_db.resilience._breaker import CircuitBreaker
from wellwon_db.resilience._retry import RetryPolicy
from wellwon_db.telemetry._telemetry import record_breaker_transition

if TYPE_CHECKING:
    from wellwon_db.client._cached import CacheService
    from wellwon_db.config._credentials import ConnectParams

__all__ = ["PoolSlot"]


class PoolSlot:
    """The stable place where a database's current pool lives, with its resilience.

    Clients hold the slot, not the pool: when the container stops and starts
    again, the same clients reach the new pool. ``pool`` is ``None`` while no
    pool is open. The slot also keeps the database's circuit breaker (which
    outlives pools, so listeners stay attached) and its retry policy; the pool
    knows of neither.

    ``unconfigured`` is set while the container runs without this database
    (its DSN is unset and it is optional): calls raise it. ``track_writes`` is
    set while replicas of this database are open: committed writes then
    record their WAL position for read-your-writes.
    """

    __slots__ = (
        "breaker",
        "breaker_watch",
        "cache",
        "cache_off",
        "database",
        "listen_dsn",
        "listen_off",
        "loop_ended",
        "pool",
        "retry",
        "track_writes",
        "unconfigured",
    )

    def __init__(
        self,
        database: Database | str,
        pool: DatabasePool | None = None,
        *,
        breaker: BreakerConfig | None = None,
        retry: RetryConfig | None = None,
    ) -> None:
        self.database: DatabaseName = database_name(database)
        self.pool = pool
        self.unconfigured: ConfigurationError | None = None
        #: The last pool closed because the event loop it was opened on ended.
        self.loop_ended = False
        #: Record the WAL position of committed writes (a replica database reads after them).
        self.track_writes = False
        #: The result cache while the pool is open with it enabled (``client.cached``).
        self.cache: CacheService | None = None
        #: Why there is none: the setting that turns it on.
        self.cache_off: ConfigurationError | None = None
        #: Where ``client.listen()`` connects while the pool is open (a secret) ...
        self.listen_dsn: ConnectParams | None = None
        #: ... or why it cannot (LISTEN does not work through PgBouncer).
        self.listen_off: ConfigurationError | None = None
        self.breaker = CircuitBreaker(str(self.database), breaker)
        self.breaker.add_listener(record_breaker_transition)
        #: Fails queued callers when the breaker opens; checks the server while open.
        self.breaker_watch = BreakerWatch(self)
        self.breaker.add_listener(self.breaker_watch)
        self.retry = RetryPolicy(str(self.database), retry)

    def __repr__(self) -> str:
        return f"<PoolSlot {self.database} {self.pool!r}>"

    def configure(self, breaker: BreakerConfig, retry: RetryConfig) -> None:
        """Apply new breaker thresholds (the breaker starts closed again) and retry settings."""
        self.breaker.reconfigure(breaker)
        self.retry = RetryPolicy(str(self.database), retry)

    def get(self) -> DatabasePool:
        """The open pool.

        Raises ``ConfigurationError`` naming the DSN variable when the
        container runs without this database, else ``PoolClosedError`` saying
        how to start it when no pool is open.
        """
        pool = self.pool
        if pool is None:
            raise self.no_pool_error()
        return pool

    def no_pool_error(self) -> ConfigurationError | PoolClosedError:
        """Why no pool is open: the database is off (unconfigured), or not started."""
        if self.unconfigured is not None:
            return self.unconfigured
        if self.loop_ended:
            return PoolClosedError(
                f"the {self.database} database pool was closed when the event loop it was "
                "opened on ended (an asyncio.run() returned): asyncio connections live and "
                "die with their loop. Open the pools and make the calls in one loop: one "
                "asyncio.run(main()) whose main() starts the databases (start_databases, "
                "database_lifespan) and then uses the clients",
                database=str(self.database),
            )
        return PoolClosedError(
            f"the {self.database} database pool is not open: start it with "
            "`await wellwon_db.start_databases(container)` (or `database_lifespan`) "
            "before using the client; after stop_databases() the client works again "
            "once the pools are started",
            database=str(self.database),
        )
