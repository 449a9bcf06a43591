"""Shared fixtures: two real PostgreSQL servers, a clean environment, a started container."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.helpers import MAIN_DB, REFERENCE_DB, Servers
from wellwon_db import DatabaseContainer, get_postgres_config, start_databases, stop_databases
from wellwon_db.testing import PostgresServer

# wellwon_db's own fixtures come through its pytest11 entry point; pytester
# runs the plugin in projects of its own (tests/test_pytest_plugin.py).
pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def servers(postgres_server_factory: Callable[[str], PostgresServer]) -> Servers:
    main = postgres_server_factory("main")
    reference = postgres_server_factory("reference")
    main.create_database(MAIN_DB)
    reference.create_database(REFERENCE_DB)
    return Servers(main, reference)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[None]:
    """No PG_*/POSTGRES_* variable and no .env from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("PG_", "POSTGRES_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))
    get_postgres_config.cache_clear()
    yield
    get_postgres_config.cache_clear()


@pytest.fixture
def db_env(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> Servers:
    """Point POSTGRES_DSN / POSTGRES_REFERENCE_DSN at the two servers, small pools."""
    monkeypatch.setenv("POSTGRES_DSN", servers.main_dsn)
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", servers.reference_dsn)
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "2")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "5")
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "3")
    get_postgres_config.cache_clear()
    return servers


@pytest.fixture
async def container(db_env: Servers) -> AsyncIterator[DatabaseContainer]:
    """A started DatabaseContainer on the two servers; stopped afterwards."""
    container = DatabaseContainer()
    await start_databases(container)
    yield container
    await stop_databases(container)
