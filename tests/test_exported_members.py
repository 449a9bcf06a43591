"""The public surface: ``__all__`` pinned, and the contract names of design.md."""

from __future__ import annotations

import enum
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import wellwon_db
import wellwon_db.testing

WELLWON_DB_ALL = [
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

TESTING_ALL = [
    "FakeCall",
    "FakeDatabaseClient",
    "FakeDatabases",
    "FakeMainDB",
    "FakeMainReplicaDB",
    "FakeReadOnlyClient",
    "FakeRecord",
    "FakeReferenceDB",
    "FakeReferenceReplicaDB",
    "FakeTransactionScope",
    "PgBouncerNotFoundError",
    "PgBouncerServer",
    "PostgresNotFoundError",
    "PostgresServer",
    "TcpProxy",
    "TlsFiles",
    "UnscriptedQueryError",
    "find_pgbouncer",
    "find_postgres_bindir",
    "make_certificates",
    "override_with_fakes",
    "run_sync",
]

#: The names design.md promises users of the original pg_client.
CONTRACT_NAMES = [
    "Database",
    "PostgresConfig",
    "PoolConfig",
    "get_postgres_config",
    "DatabaseContainer",
    "DatabaseClient",
    "MainDB",
    "ReferenceDB",
    "RetryConfig",
    "get_postgres_dsn_for_db",
    "init_pool_for_db",
    "close_pools",
    "fetch_for_db",
    "fetchrow_for_db",
    "fetchval_for_db",
    "execute_for_db",
    "WellwonDBError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "CircuitOpenError",
    "PoolTimeoutError",
    "MainReplicaDB",
    "ReferenceReplicaDB",
]

PUBLIC_MODULES = [
    pytest.param(wellwon_db, WELLWON_DB_ALL, id="wellwon_db"),
    pytest.param(wellwon_db.testing, TESTING_ALL, id="wellwon_db.testing"),
]


@pytest.mark.parametrize(("module", "expected"), PUBLIC_MODULES)
def test_all_is_pinned(module: ModuleType, expected: list[str]) -> None:
    """Adding or removing a public name is a deliberate change: update this list with it."""
    assert module.__all__ == expected


@pytest.mark.parametrize(("module", "expected"), PUBLIC_MODULES)
def test_all_is_sorted_and_unique(module: ModuleType, expected: list[str]) -> None:
    assert module.__all__ == sorted(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize(("module", "expected"), PUBLIC_MODULES)
def test_every_exported_name_is_importable(module: ModuleType, expected: list[str]) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)  # what `import *` users get
    for name in module.__all__:
        assert getattr(module, name) is namespace[name], name


@pytest.mark.parametrize(("module", "expected"), PUBLIC_MODULES)
def test_exported_objects_are_defined_in_the_package(
    module: ModuleType, expected: list[str]
) -> None:
    """Nothing third-party is re-exported by accident."""
    for name in module.__all__:
        obj = getattr(module, name)
        assert obj.__module__.startswith("wellwon_db"), (name, obj.__module__)


@pytest.mark.parametrize(("module", "expected"), PUBLIC_MODULES)
def test_no_public_name_is_left_out_of_all(module: ModuleType, expected: list[str]) -> None:
    """Every public class or function the module holds is in ``__all__`` (or a submodule)."""
    public = {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
    }
    assert public <= set(module.__all__)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_contract_name_is_exported(name: str) -> None:
    assert name in wellwon_db.__all__
    assert getattr(wellwon_db, name) is not None


def test_error_tree() -> None:
    from wellwon_db import (
        CircuitOpenError,
        ConfigurationError,
        DatabaseUnavailableError,
        PoolTimeoutError,
        WellwonDBError,
    )

    assert issubclass(WellwonDBError, Exception)
    # Seed code catches RuntimeError for a missing DSN.
    assert issubclass(ConfigurationError, RuntimeError)
    assert issubclass(ConfigurationError, WellwonDBError)
    assert issubclass(DatabaseUnavailableError, WellwonDBError)
    assert issubclass(CircuitOpenError, DatabaseUnavailableError)
    assert issubclass(CircuitOpenError, WellwonDBError)
    assert issubclass(PoolTimeoutError, WellwonDBError)
    assert issubclass(PoolTimeoutError, TimeoutError)
    # A breaker that is open is not a pool timeout, and the other way round.
    assert not issubclass(CircuitOpenError, PoolTimeoutError)
    assert not issubclass(PoolTimeoutError, DatabaseUnavailableError)


def test_errors_carry_what_the_caller_needs() -> None:
    from wellwon_db import CircuitOpenError, ConfigurationError, PoolTimeoutError

    configuration = ConfigurationError("set POSTGRES_DSN", env_var="POSTGRES_DSN")
    assert configuration.env_var == "POSTGRES_DSN"
    assert str(configuration) == "set POSTGRES_DSN"
    circuit = CircuitOpenError("open", database="reference", retry_at=12.5)
    assert (circuit.database, circuit.retry_at) == ("reference", 12.5)
    timeout = PoolTimeoutError("busy", database="main", max_size=5, waiters=3, timeout=1.5)
    assert (timeout.database, timeout.max_size, timeout.waiters, timeout.timeout) == (
        "main",
        5,
        3,
        1.5,
    )


def test_database_is_a_str_enum() -> None:
    from wellwon_db import Database

    assert issubclass(Database, str)
    assert issubclass(Database, enum.Enum)
    assert [(member.name, member.value) for member in Database] == [
        ("MAIN", "main"),
        ("REFERENCE", "reference"),
        ("MAIN_REPLICA", "main_replica"),
        ("REFERENCE_REPLICA", "reference_replica"),
    ]
    as_text: str = Database.MAIN  # usable wherever a str is expected
    assert as_text == "main"
    assert Database("reference") is Database.REFERENCE
    assert f"{Database.MAIN}" == "main"


def test_typed_clients_are_distinct_database_clients() -> None:
    from wellwon_db import DatabaseClient, MainDB, ReferenceDB

    assert issubclass(MainDB, DatabaseClient)
    assert issubclass(ReferenceDB, DatabaseClient)
    assert not issubclass(MainDB, ReferenceDB)
    assert not issubclass(ReferenceDB, MainDB)
    for client_class in (DatabaseClient, MainDB, ReferenceDB):
        for method in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
            assert inspect.iscoroutinefunction(getattr(client_class, method)), method
        assert callable(client_class.transaction)
        assert callable(client_class.acquire)


def test_container_has_the_contract_providers() -> None:
    from dependency_injector import containers, providers

    from wellwon_db import DatabaseContainer

    assert issubclass(DatabaseContainer, containers.DeclarativeContainer)
    for name in (
        "config",
        "main_pool",
        "reference_pool",
        "main_db",
        "reference_db",
        "main_replica_db",
        "reference_replica_db",
    ):
        assert isinstance(getattr(DatabaseContainer, name), providers.Provider), name
    assert isinstance(DatabaseContainer.main_pool, providers.Resource)
    assert isinstance(DatabaseContainer.reference_pool, providers.Resource)
    # The application wires; the library container must not.
    assert DatabaseContainer.wiring_config.modules == []
    assert DatabaseContainer.wiring_config.packages == []


def test_settings_contract() -> None:
    from wellwon_db import PoolConfig, PostgresConfig, get_postgres_config

    assert callable(PostgresConfig.get_dsn)
    assert callable(PostgresConfig.get_pool_config)
    fields = set(inspect.signature(PoolConfig).parameters)
    assert {"min_size", "max_size", "timeout", "command_timeout"} <= fields
    # Cached, with a way to reload for tests.
    assert callable(get_postgres_config.cache_clear)


@pytest.mark.parametrize(
    "name", ["fetch_for_db", "fetchrow_for_db", "fetchval_for_db", "execute_for_db"]
)
def test_seed_query_functions_signature(name: str) -> None:
    """``(query, *args, database=Database.MAIN)``, as in the seed's pg_client."""
    from wellwon_db import Database

    function = getattr(wellwon_db, name)
    assert inspect.iscoroutinefunction(function)
    parameters = list(inspect.signature(function).parameters.values())
    assert [(p.name, p.kind) for p in parameters] == [
        ("query", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("database", inspect.Parameter.KEYWORD_ONLY),
    ]
    assert parameters[2].default is Database.MAIN


def test_seed_lifecycle_functions() -> None:
    from wellwon_db import Database

    assert inspect.iscoroutinefunction(wellwon_db.init_pool_for_db)
    assert inspect.iscoroutinefunction(wellwon_db.close_pools)
    assert not inspect.iscoroutinefunction(wellwon_db.get_postgres_dsn_for_db)
    for function in (wellwon_db.init_pool_for_db, wellwon_db.get_postgres_dsn_for_db):
        (parameter,) = inspect.signature(function).parameters.values()
        assert parameter.name == "database"
        assert parameter.default is Database.MAIN


def test_package_is_typed() -> None:
    marker = Path(wellwon_db.__file__).parent / "py.typed"
    assert marker.is_file()


def test_version_is_a_string() -> None:
    assert isinstance(wellwon_db.__version__, str)
    assert wellwon_db.__version__.count(".") >= 1
