"""Databases as data: a third database declared entirely outside the library, on real servers.

``ledger`` is declared here the way an application does it: a client class
naming it and its providers in the application's container; its settings
come from ``POSTGRES_LEDGER_DSN`` and ``PG_LEDGER_*`` like any database's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import containers, providers

from tests.helpers import (
    MAIN_DB,
    REFERENCE_DB,
    SECRET,
    Servers,
    count_connections,
    run_cli,
    wait_until,
)
from wellwon_db import (
    BreakerState,
    ConfigurationError,
    Database,
    DatabaseClient,
    DatabaseContainer,
    DatabaseUnavailableError,
    PostgresConfig,
    close_pools,
    database_lifespan,
    database_providers,
    fetchval_for_db,
    init_pool_for_db,
    start_databases,
    stop_databases,
)
from wellwon_db.testing import PostgresServer, override_with_fakes

LEDGER_DB = "wellwon_ledger"


class LedgerDB(DatabaseClient, database="ledger"):
    """The application's own database: nothing in the library names it."""

    __slots__ = ()


class AppDatabases(DatabaseContainer):
    ledger_slot, ledger_pool, ledger_db = database_providers(LedgerDB, DatabaseContainer.config)


@pytest.fixture(scope="session")
def ledger_server(postgres_server_factory: Callable[[str], PostgresServer]) -> PostgresServer:
    server = postgres_server_factory("ledger")
    server.create_database(LEDGER_DB)
    return server


@pytest.fixture
def ledger_env(
    db_env: Servers, ledger_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> PostgresServer:
    monkeypatch.setenv("POSTGRES_LEDGER_DSN", ledger_server.dsn(LEDGER_DB, password=SECRET))
    monkeypatch.setenv("PG_LEDGER_POOL_MIN_SIZE", "2")
    monkeypatch.setenv("PG_LEDGER_POOL_MAX_SIZE", "4")
    return ledger_server


@pytest.fixture
async def app(ledger_env: PostgresServer) -> AsyncIterator[AppDatabases]:
    container = AppDatabases()
    async with database_lifespan(container):
        yield container


async def test_queries_reach_its_own_server(
    app: AppDatabases, ledger_env: PostgresServer, db_env: Servers
) -> None:
    ledger: LedgerDB = app.ledger_db()
    assert isinstance(ledger, LedgerDB)
    row = await ledger.fetchrow("SELECT current_database(), inet_server_port()")
    assert row is not None
    assert (row[0], row[1]) == (LEDGER_DB, ledger_env.port)
    # The built-in databases still reach theirs.
    assert await app.main_db().fetchval("SELECT current_database()") == MAIN_DB
    assert await app.reference_db().fetchval("SELECT current_database()") == REFERENCE_DB
    assert {db_env.main.port, db_env.reference.port}.isdisjoint({ledger_env.port})


async def test_its_pool_settings_are_its_own_on_the_server(
    app: AppDatabases, ledger_env: PostgresServer
) -> None:
    ledger = app.ledger_db()
    assert (ledger.pool.config.min_size, ledger.pool.config.max_size) == (2, 4)
    assert await count_connections(ledger_env, "wellwon_db:ledger") == 2
    async with ledger.acquire(), ledger.acquire(), ledger.acquire(), ledger.acquire():
        assert await count_connections(ledger_env, "wellwon_db:ledger") == 4
        assert ledger.pool.get_stats()["in_use"] == 4
    assert app.main_db().pool.config.max_size == 5  # main's, from PG_POOL_MAX_SIZE


async def test_its_breaker_is_its_own(
    db_env: Servers,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killing the ledger server opens the ledger breaker only."""
    postgres_server.create_database(LEDGER_DB)
    monkeypatch.setenv("POSTGRES_LEDGER_DSN", postgres_server.dsn(LEDGER_DB))
    monkeypatch.setenv("PG_LEDGER_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_LEDGER_BREAKER_MIN_CALLS", "3")
    container = AppDatabases()
    async with database_lifespan(container):
        ledger = container.ledger_db()
        assert await ledger.fetchval("SELECT 1") == 1
        postgres_server.kill()

        async def ledger_breaker_opened() -> bool:
            with contextlib.suppress(DatabaseUnavailableError):
                await ledger.fetchval("SELECT 1")
            return ledger.breaker.state is BreakerState.OPEN

        await wait_until(ledger_breaker_opened, timeout=20)
        assert await container.main_db().fetchval("SELECT 1") == 1
        assert await container.reference_db().fetchval("SELECT 1") == 1
        assert container.main_db().breaker.state is BreakerState.CLOSED
        assert container.reference_db().breaker.state is BreakerState.CLOSED


async def test_fakes_replace_it(ledger_env: PostgresServer) -> None:
    container = AppDatabases()
    with override_with_fakes(container) as fakes:
        fakes["ledger"].script("SELECT balance FROM accounts WHERE id = $1", 42)
        await start_databases(container)  # no pool opens under fakes
        ledger = container.ledger_db()
        assert isinstance(ledger, LedgerDB)
        assert await ledger.fetchval("SELECT balance FROM accounts WHERE id = $1", 1) == 42
        assert fakes.ledger.calls[0].args == (1,)
        await stop_databases(container)
    assert await count_connections(ledger_env, "wellwon_db:ledger") == 0


async def test_health_covers_it(app: AppDatabases) -> None:
    report = await app.health().check()
    assert list(report.databases) == ["main", "reference", "ledger"]
    assert report.databases["ledger"].status == "ok"
    assert report.databases["ledger"].pool["max_size"] == 4


@pytest.mark.slow
def test_it_appears_in_the_commands(ledger_server: PostgresServer, tmp_path: Path) -> None:
    """In another process nobody declares it: the variables alone name it."""
    env = {
        "POSTGRES_DSN": ledger_server.dsn(LEDGER_DB, password=SECRET),
        "POSTGRES_LEDGER_DSN": ledger_server.dsn(LEDGER_DB, password=SECRET),
        "PG_LEDGER_POOL_MAX_SIZE": "4",
    }
    config = run_cli("config", "--json", cwd=tmp_path, **env)
    assert config.returncode == 0, config.stderr
    shown = json.loads(config.stdout)["databases"]["ledger"]
    assert shown["pool_max_size"] == {
        "variable": "PG_LEDGER_POOL_MAX_SIZE",
        "value": 4,
        "source": "env",
    }
    health = run_cli("health", "--json", cwd=tmp_path, **env)
    assert health.returncode == 0, health.stdout + health.stderr
    report = json.loads(health.stdout)
    assert report["databases"]["ledger"]["status"] == "ok"
    assert report["unconfigured"] == {
        "reference": "POSTGRES_REFERENCE_DSN",
        "main_replica": "POSTGRES_MAIN_REPLICA_DSN",
        "reference_replica": "POSTGRES_REFERENCE_REPLICA_DSN",
    }


async def test_seed_api_routes_to_it_with_its_own_settings(ledger_env: PostgresServer) -> None:
    try:
        pool = await init_pool_for_db("ledger")
        assert (pool.config.min_size, pool.config.max_size) == (2, 4)
        assert pool.address == f"127.0.0.1:{ledger_env.port}"
        assert await fetchval_for_db("SELECT current_database()", database="ledger") == LEDGER_DB
        assert await fetchval_for_db("SELECT current_database()") == MAIN_DB
        assert await init_pool_for_db("ledger") is pool
    finally:
        await close_pools()
    assert await count_connections(ledger_env, "wellwon_db:ledger") == 0


async def test_seed_api_serves_an_undeclared_database(
    db_env: Servers, ledger_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No code declares ``audit``: the environment alone is enough for the seed API."""
    monkeypatch.setenv("POSTGRES_AUDIT_DSN", ledger_server.dsn(LEDGER_DB, password=SECRET))
    monkeypatch.setenv("PG_AUDIT_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_AUDIT_POOL_MAX_SIZE", "3")
    monkeypatch.setenv("PG_AUDIT_POOL_APPLICATION_NAME", "audit-seed")
    try:
        pool = await init_pool_for_db("audit")
        assert (pool.config.min_size, pool.config.max_size) == (1, 3)
        assert await fetchval_for_db("SELECT current_database()", database="audit") == LEDGER_DB
        assert await count_connections(ledger_server, "audit-seed") == 1
    finally:
        await close_pools()
    assert await count_connections(ledger_server, "audit-seed") == 0


# -- optional and needed databases -----------------------------------------------------


async def test_only_main_configured_starts_and_main_works(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", servers.main_dsn)
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    container = DatabaseContainer()
    async with database_lifespan(container):
        assert await container.main_db().fetchval("SELECT current_database()") == MAIN_DB
        with pytest.raises(ConfigurationError, match="set POSTGRES_REFERENCE_DSN") as caught:
            await container.reference_db().fetchval("SELECT 1")
        assert caught.value.env_var == "POSTGRES_REFERENCE_DSN"
        report = await container.health().check()
        assert report.status == "ok"
        assert report.unconfigured == {
            "reference": "POSTGRES_REFERENCE_DSN",
            "main_replica": "POSTGRES_MAIN_REPLICA_DSN",
            "reference_replica": "POSTGRES_REFERENCE_REPLICA_DSN",
        }


async def test_a_needed_database_without_a_dsn_fails_start_up_and_nothing_stays_open(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", servers.main_dsn)
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", servers.reference_dsn)
    monkeypatch.setenv("PG_LEDGER_STARTUP_DSN_REQUIRED", "true")
    container = AppDatabases()
    with pytest.raises(ConfigurationError, match="set POSTGRES_LEDGER_DSN") as caught:
        await start_databases(container)
    assert caught.value.env_var == "POSTGRES_LEDGER_DSN"
    assert await count_connections(servers.main, "wellwon_db:main") == 0
    assert await count_connections(servers.reference, "wellwon_db:reference") == 0


# -- settings from code, per container ---------------------------------------------------


def _config_sources(servers: Servers) -> Iterator[tuple[str, Callable[[], PostgresConfig]]]:
    values = {
        "main": {"dsn": servers.main_dsn, "pool_max_size": 3, "pool_min_size": 1},
        "reference": {"dsn": servers.reference_dsn, "pool_command_timeout_sec": 7.5},
    }
    yield "mapping", lambda: PostgresConfig(values)
    yield "keywords", lambda: PostgresConfig(**values)
    yield "from_mapping", lambda: PostgresConfig.from_mapping(values)

    def configuration() -> PostgresConfig:
        config = providers.Configuration()
        config.from_dict({"db": values})
        return PostgresConfig.from_configuration(config.db)

    yield "providers.Configuration", configuration


def test_settings_from_code_match_the_environment(
    servers: Servers, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {
        "POSTGRES_DSN": servers.main_dsn,
        "PG_POOL_MAX_SIZE": "3",
        "PG_POOL_MIN_SIZE": "1",
        "POSTGRES_REFERENCE_DSN": servers.reference_dsn,
        "PG_REFERENCE_POOL_COMMAND_TIMEOUT_SEC": "7.5",
    }.items():
        monkeypatch.setenv(name, value)
    from_env = PostgresConfig.load(env_file=None)
    for name in ("POSTGRES_DSN", "PG_POOL_MAX_SIZE", "PG_REFERENCE_POOL_COMMAND_TIMEOUT_SEC"):
        monkeypatch.setenv(name, "1")  # settings from code alone read no environment
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PG_REFERENCE_POOL_MIN_SIZE=1\n")
    for source, build in _config_sources(servers):
        config = build()
        for database in (Database.MAIN, Database.REFERENCE):
            assert config.get_dsn(database) == from_env.get_dsn(database), source
            assert config.get_pool_config(database) == from_env.get_pool_config(database), source
            assert config.settings_for(database) == from_env.settings_for(database), source


@pytest.mark.parametrize(
    ("values", "env", "named"),
    [
        ({"main": {"pool_max_size": 0}}, {"PG_POOL_MAX_SIZE": "0"}, "PG_POOL_MAX_SIZE"),
        (
            {"reference": {"pool_min_size": 9, "pool_max_size": 3}},
            {"PG_REFERENCE_POOL_MIN_SIZE": "9", "PG_REFERENCE_POOL_MAX_SIZE": "3"},
            "PG_REFERENCE_POOL_MIN_SIZE",
        ),
        (
            {"main": {"dsn": "mysql://u:hunter2@h/db"}},
            {"POSTGRES_DSN": "mysql://u:hunter2@h/db"},
            "POSTGRES_DSN",
        ),
        (
            {"ledger": {"pool_reset": "sometimes"}},
            {"PG_LEDGER_POOL_RESET": "sometimes"},
            "PG_LEDGER_POOL_RESET",
        ),
    ],
)
def test_settings_from_code_fail_as_the_environment_does(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, Any], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError) as from_code:
        PostgresConfig(values)
    configuration = providers.Configuration()
    configuration.from_dict(values)
    with pytest.raises(ConfigurationError) as from_configuration:
        PostgresConfig.from_configuration(configuration)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as from_env:
        PostgresConfig.load(env_file=None)
    assert str(from_code.value) == str(from_env.value) == str(from_configuration.value)
    assert from_code.value.env_var == from_env.value.env_var == named
    assert "hunter2" not in str(from_code.value)


def test_unknown_keys_in_code_are_named_with_the_closest_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"main\.pool_max_sise: .*'pool_max_size'"):
        PostgresConfig({"main": {"pool_max_sise": 5}})
    with pytest.raises(ConfigurationError, match="not a valid database name"):
        PostgresConfig({"Not A Name": {}})


async def test_two_containers_with_different_settings_side_by_side(servers: Servers) -> None:
    first, second = DatabaseContainer(), DatabaseContainer()
    first.settings.from_dict(
        {"main": {"dsn": servers.main_dsn, "pool_min_size": 2, "pool_application_name": "first"}}
    )
    second.settings.from_dict(
        {
            "main": {
                "dsn": servers.main_dsn,
                "pool_min_size": 3,
                "pool_application_name": "second",
            },
            "reference": {"dsn": servers.reference_dsn, "pool_min_size": 1},
        }
    )
    async with database_lifespan(first), database_lifespan(second):
        assert await count_connections(servers.main, "first") == 2
        assert await count_connections(servers.main, "second") == 3
        assert await second.reference_db().fetchval("SELECT current_database()") == REFERENCE_DB
        with pytest.raises(ConfigurationError, match="POSTGRES_REFERENCE_DSN"):
            await first.reference_db().fetchval("SELECT 1")
    assert await count_connections(servers.main, "first") == 0


async def test_settings_are_read_again_after_a_restart(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cache to clear: a container reads its settings at each start."""
    container = DatabaseContainer()
    async with database_lifespan(container):
        assert container.main_db().pool.config.max_size == 5
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "4")
    async with database_lifespan(container):
        assert container.main_db().pool.config.max_size == 4


async def test_start_databases_leaves_other_resources_alone(db_env: Servers) -> None:
    started: list[str] = []

    async def redis() -> AsyncIterator[str]:
        started.append("redis")
        yield "redis"

    class Application(containers.DeclarativeContainer):
        cache = providers.Resource(redis)
        db = providers.Container(DatabaseContainer)

    application = Application()
    await start_databases(application)
    try:
        assert application.db.main_pool.initialized
        assert not application.cache.initialized
        assert started == []
        assert await application.db.main_db().fetchval("SELECT 1") == 1
    finally:
        await stop_databases(application)
    assert not application.db.main_pool.initialized
