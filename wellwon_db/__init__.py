"""Typed, resilient access to several PostgreSQL databases, as a dependency-injector container.

Public names only; the implementation lives in private modules, grouped by
layer (``config``, ``telemetry``, ``pool``, ``resilience``, ``client``,
``health``, ``di``, ``cli``; see docs/architecture.md).
"""

from wellwon_db._version import __version__ as __version__
from wellwon_db.client._cached import CachedQueries
from wellwon_db.client._client import DatabaseClient, MainDB, ReferenceDB
from wellwon_db.client._positions import read_after, write_token
from wellwon_db.client._readonly import MainReplicaDB, ReadOnlyClient, ReferenceReplicaDB
from wellwon_db.client._transaction import TransactionScope
from wellwon_db.config._config import PostgresConfig, get_postgres_config
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
from wellwon_db.di._typed import typed_factory
from wellwon_db.errors import (
    CircuitOpenError,
    ConfigurationError,
    DatabaseUnavailableError,
    PoolClosedError,
    PoolTimeoutError,
    WellwonDBError,
)
from wellwon_db.health._health import DatabaseHealth, HealthChecker, HealthReport
from wellwon_db.pool._pool import DatabasePool, PoolState
from wellwon_db.resilience._breaker import BreakerState, BreakerTransition, CircuitBreaker

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "BreakerTransition",
    "CachedQueries",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "Database",
    "DatabaseClient",
    "DatabaseContainer",
    "DatabaseHealth",
    "DatabasePool",
    "DatabaseProviders",
    "DatabaseSpec",
    "DatabaseUnavailableError",
    "HealthChecker",
    "HealthReport",
    "MainDB",
    "MainReplicaDB",
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
    "TransactionScope",
    "WellwonDBError",
    "check_health",
    "close_pools",
    "database_lifespan",
    "database_providers",
    "declare_database",
    "execute_for_db",
    "fetch_for_db",
    "fetchrow_for_db",
    "fetchval_for_db",
    "get_postgres_config",
    "get_postgres_dsn_for_db",
    "init_pool_for_db",
    "read_after",
    "replica_providers",
    "resolve",
    "start_databases",
    "stop_databases",
    "typed_factory",
    "write_token",
]
