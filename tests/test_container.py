"""DatabaseContainer embedded in an application container, and its lifecycle helpers."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from dependency_injector import containers, providers
from dependency_injector.wiring import Closing, Provide, inject

from tests.helpers import MAIN_DB, REFERENCE_DB, Servers, count_connections, free_port
from wellwon_db import (
    ConfigurationError,
    DatabaseContainer,
    DatabasePool,
    DatabaseUnavailableError,
    MainDB,
    PoolClosedError,
    ReferenceDB,
    database_lifespan,
    get_postgres_config,
    resolve,
    start_databases,
    stop_databases,
)


class ReportService:
    def __init__(self, main: MainDB, reference: ReferenceDB) -> None:
        self.main = main
        self.reference = reference

    async def databases(self) -> tuple[str, str]:
        return (
            await self.main.fetchval("SELECT current_database()"),
            await self.reference.fetchval("SELECT current_database()"),
        )


class AppContainer(containers.DeclarativeContainer):
    db = providers.Container(DatabaseContainer)
    reports = providers.Singleton(ReportService, main=db.main_db, reference=db.reference_db)


@inject
async def handler(
    main: MainDB = Provide[AppContainer.db.main_db],
    reference: ReferenceDB = Provide[AppContainer.db.reference_db],
) -> tuple[str, str]:
    return (
        await main.fetchval("SELECT current_database()"),
        await reference.fetchval("SELECT current_database()"),
    )


@inject
async def report_handler(
    reports: ReportService = Provide[AppContainer.reports],
) -> tuple[str, str]:
    return await reports.databases()


@inject
async def closing_handler(main: MainDB = Closing[Provide[AppContainer.db.main_db]]) -> int:
    value: int = await main.fetchval("SELECT 1")
    return value


@pytest.fixture
def app(db_env: Servers) -> Iterator[AppContainer]:
    app = AppContainer()
    app.wire(modules=[sys.modules[__name__]])
    yield app
    app.unwire()


async def test_embedded_container_with_inject(app: AppContainer) -> None:
    async with database_lifespan(app.db):
        assert await handler() == (MAIN_DB, REFERENCE_DB)
        assert await report_handler() == (MAIN_DB, REFERENCE_DB)
        # Clients are plain objects, not Futures, even though pools are async Resources.
        assert isinstance(app.db.main_db(), MainDB)
        assert app.db.main_db() is app.db.main_db()
        pool = await resolve(app.db.main_pool)
        assert isinstance(pool, DatabasePool)
        assert pool is app.db.main_db().pool


async def test_stop_then_start_again_gives_working_clients(
    app: AppContainer, db_env: Servers
) -> None:
    await start_databases(app.db)
    service = app.reports()
    first_pool = service.main.pool
    assert await service.databases() == (MAIN_DB, REFERENCE_DB)

    await stop_databases(app.db)
    assert first_pool.get_stats()["state"] == "closed"
    assert await count_connections(db_env.main, "wellwon_db:main") == 0
    with pytest.raises(PoolClosedError):
        await service.main.fetchval("SELECT 1")

    await start_databases(app.db)
    try:
        # The same (singleton) service and clients now use the new pools.
        assert app.reports() is service
        assert service.main.pool is not first_pool
        assert await service.databases() == (MAIN_DB, REFERENCE_DB)
        assert await handler() == (MAIN_DB, REFERENCE_DB)
    finally:
        await stop_databases(app.db)
    await stop_databases(app.db)  # stopping twice is harmless


async def test_start_twice_is_harmless(app: AppContainer, db_env: Servers) -> None:
    await start_databases(app.db)
    pool = app.db.main_db().pool
    await start_databases(app.db)
    try:
        assert app.db.main_db().pool is pool
        assert await count_connections(db_env.main, "wellwon_db:main") == 2
    finally:
        await stop_databases(app.db)


async def test_failed_start_leaves_no_pool_open(
    app: AppContainer, db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "POSTGRES_REFERENCE_DSN", f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x"
    )
    get_postgres_config.cache_clear()
    with pytest.raises(DatabaseUnavailableError) as caught:
        await start_databases(app.db)
    assert caught.value.database == "reference"
    assert "hunter2" not in str(caught.value)
    assert not app.db.main_pool.initialized
    assert not app.db.reference_pool.initialized
    assert await count_connections(db_env.main, "wellwon_db:main") == 0
    with pytest.raises(PoolClosedError):
        await app.db.main_db().fetchval("SELECT 1")

    # Fix the setting and start again: everything works.
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", db_env.reference_dsn)
    get_postgres_config.cache_clear()
    async with database_lifespan(app.db):
        assert await handler() == (MAIN_DB, REFERENCE_DB)


async def test_missing_dsn_fails_start_naming_the_variable(
    app: AppContainer, db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's behaviour for reference, one setting away: its DSN declared required."""
    monkeypatch.delenv("POSTGRES_REFERENCE_DSN")
    monkeypatch.setenv("PG_REFERENCE_STARTUP_DSN_REQUIRED", "true")
    with pytest.raises(ConfigurationError, match="POSTGRES_REFERENCE_DSN") as caught:
        await start_databases(app.db)
    assert isinstance(caught.value, RuntimeError)
    assert await count_connections(db_env.main, "wellwon_db:main") == 0


def test_settings_are_not_read_at_class_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "not a number")

    class LateContainer(containers.DeclarativeContainer):
        db = providers.Container(DatabaseContainer)

    container = LateContainer()  # neither defining nor instantiating reads settings
    with pytest.raises(ConfigurationError, match="PG_POOL_MAX_SIZE"):
        container.db.config()


async def test_closing_marker_does_not_close_the_shared_pool(app: AppContainer) -> None:
    async with database_lifespan(app.db):
        pool = app.db.main_db().pool
        assert await closing_handler() == 1
        assert await closing_handler() == 1
        assert pool.get_stats()["state"] == "open"
        assert app.db.main_pool.initialized


async def test_helpers_cope_with_resources_that_return_none(app: AppContainer) -> None:
    # All resources overridden: dependency-injector's init/shutdown_resources()
    # return None here instead of an awaitable.
    with (
        app.db.main_pool.override(None),
        app.db.reference_pool.override(None),
        app.db.main_replica_pool.override(None),
        app.db.reference_replica_pool.override(None),
    ):
        assert app.db.init_resources() is None
        await start_databases(app.db)
        await stop_databases(app.db)
        async with database_lifespan(app.db):
            pass


async def test_container_config_can_be_overridden(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "0")
    config = get_postgres_config()
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "3")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    container.config.override(providers.Object(config))
    async with database_lifespan(container):
        assert container.reference_db().pool.config.min_size == 0
        assert await count_connections(db_env.reference, "wellwon_db:reference") == 0
