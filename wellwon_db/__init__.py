"""Typed, resilient access to several PostgreSQL databases, as a dependency-injector container.

Public names only; the implementation lives in private modules, grouped by
layer (``config``, ``telemetry``, ``pool``, ``resilience``, ``client``,
``health``, ``di``, ``cli``; see docs/architecture.md).
"""

from wellwon_db._version import __version__ as __version__
from wellwon_db.client._cached import CachedQueries
from wellwon_db.client._client import DatabaseClient, MainDB, ReferenceDB
from wellwon_db.client._cursor import RowStream
from wellwon_db.client._notifications import Notification, NotificationGap, Notifications
from wellwon_db.client._positions import read_after, write_token
from wellwon_db.client._readonly import MainReplicaDB, ReadOnlyClient, ReferenceReplicaDB
from wellwon_db.client._transaction import TransactionScope
from wellwon_db.config._config import PostgresConfig, get_postgres_config
from wellwon_db.config._connection import ConnectionSetup
from wellwon_db.config._policies import BreakerConfig, PoolConfig, RetryConfig
from wellwon_db.config._registry import Database, DatabaseSpec, declare_database
from wellwon_db.di._compat import (
    close_pools,
    execute_for_db,
    fetch_for_db,
    fetchrow_for_db,
    fetchval_for_db,
    get_postgres_dsn_for_db,
    init_pool_for_db,
)
from wellwon_db.di._container import (
    DatabaseContainer,
    check_health,
    database_lifespan,
    resolve,
    start_databases,
    stop_databases,
)
from wellwon_db.di._providers import (
    DatabaseProviders,
    ReplicaProviders,
    database_providers,
    replica_providers,
)
from wellwon_db.di._shards import ShardProviders, shard_providers
from wellwon_db.di._typed import typed_factory
from wellwon_db.errors import (
    CircuitOpenError,
    ConfigurationError,
    CrossShardWriteError,
    DatabaseUnavailableError,
    InvalidShardKeyError,
    PartialResultError,
    PoolClosedError,
    PoolTimeoutError,
    ShardRoutingError,
    WellwonDBError,
    WrongEventLoopError,
)
from wellwon_db.health._health import DatabaseHealth, HealthChecker, HealthReport
from wellwon_db.pool._pool import DatabasePool, PoolState
from wellwon_db.resilience._breaker import BreakerState, BreakerTransition, CircuitBreaker
from wellwon_db.shards._citus import citus_pool_max_size, citus_shard_range
from wellwon_db.shards._client import ShardedClient
from wellwon_db.shards._fanout import FanOut, FanOutResult
from wellwon_db.shards._ids import GlobalId, decode_id
from wellwon_db.shards._map import ShardMap
from wellwon_db.shards._migrate import Migration, MigrationReport, load_migrations, migrate_shards
from wellwon_db.shards._routing import ShardClient, current_shard_key
from wellwon_db.shards._set import ShardSet
from wellwon_db.shards._settings import ShardSettings

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "BreakerTransition",
    "CachedQueries",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "ConnectionSetup",
    "CrossShardWriteError",
    "Database",
    "DatabaseClient",
    "DatabaseContainer",
    "DatabaseHealth",
    "DatabasePool",
    "DatabaseProviders",
    "DatabaseSpec",
    "DatabaseUnavailableError",
    "FanOut",
    "FanOutResult",
    "GlobalId",
    "HealthChecker",
    "HealthReport",
    "InvalidShardKeyError",
    "MainDB",
    "MainReplicaDB",
    "Migration",
    "MigrationReport",
    "Notification",
    "NotificationGap",
    "Notifications",
    "PartialResultError",
    "PoolClosedError",
    "PoolConfig",
    "PoolState",
    "PoolTimeoutError",
    "PostgresConfig",
    "ReadOnlyClient",
    "ReferenceDB",
    "ReferenceReplicaDB",
    "ReplicaProviders",
    "RetryConfig",
    "RowStream",
    "ShardClient",
    "ShardMap",
    "ShardProviders",
    "ShardRoutingError",
    "ShardSet",
    "ShardSettings",
    "ShardedClient",
    "TransactionScope",
    "WellwonDBError",
    "WrongEventLoopError",
    "check_health",
    "citus_pool_max_size",
    "citus_shard_range",
    "close_pools",
    "current_shard_key",
    "database_lifespan",
    "database_providers",
    "declare_database",
    "decode_id",
    "execute_for_db",
    "fetch_for_db",
    "fetchrow_for_db",
    "fetchval_for_db",
    "get_postgres_config",
    "get_postgres_dsn_for_db",
    "init_pool_for_db",
    "load_migrations",
    "migrate_shards",
    "read_after",
    "replica_providers",
    "resolve",
    "shard_providers",
    "start_databases",
    "stop_databases",
    "typed_factory",
    "write_token",
]
