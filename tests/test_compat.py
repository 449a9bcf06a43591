"""The seed-compatible module-level API (the original pg_client's names)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import wellwon_db
from tests.helpers import MAIN_DB, REFERENCE_DB, Servers, count_connections
from wellwon_db import (
    ConfigurationError,
    Database,
    DatabasePool,
    close_pools,
    execute_for_db,
    fetch_for_db,
    fetchrow_for_db,
    fetchval_for_db,
    get_postgres_dsn_for_db,
    init_pool_for_db,
)


@pytest.fixture
async def seed(db_env: Servers) -> AsyncIterator[Servers]:
    yield db_env
    await close_pools()


def test_dsn_per_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://a@main-host/app")
    wellwon_db.get_postgres_config.cache_clear()
    assert get_postgres_dsn_for_db() == "postgresql://a@main-host/app"
    assert get_postgres_dsn_for_db(Database.MAIN) == "postgresql://a@main-host/app"
    with pytest.raises(RuntimeError, match="POSTGRES_REFERENCE_DSN") as caught:
        get_postgres_dsn_for_db(Database.REFERENCE)
    assert isinstance(caught.value, ConfigurationError)
    monkeypatch.delenv("POSTGRES_DSN")
    wellwon_db.get_postgres_config.cache_clear()
    with pytest.raises(ConfigurationError, match="POSTGRES_DSN"):
        get_postgres_dsn_for_db("main")


async def test_module_level_queries(seed: Servers) -> None:
    await execute_for_db("DROP TABLE IF EXISTS seed_t; CREATE TABLE seed_t (x int)")
    assert await execute_for_db("INSERT INTO seed_t VALUES ($1)", 5) == "INSERT 0 1"
    rows = await fetch_for_db("SELECT x FROM seed_t")
    assert [r["x"] for r in rows] == [5]
    row = await fetchrow_for_db("SELECT x FROM seed_t WHERE x = $1", 5)
    assert row is not None
    assert row["x"] == 5
    assert await fetchval_for_db("SELECT current_database()", database=Database.MAIN) == MAIN_DB
    assert await fetchval_for_db("SELECT current_database()", database="reference") == (
        REFERENCE_DB
    )
    # The table exists on main only.
    assert await fetchval_for_db("SELECT to_regclass('seed_t') IS NULL", database="reference")


async def test_init_and_close(seed: Servers) -> None:
    pool = await init_pool_for_db(Database.REFERENCE)
    assert isinstance(pool, DatabasePool)
    assert pool.database is Database.REFERENCE
    assert await init_pool_for_db("reference") is pool
    assert await count_connections(seed.reference, "wellwon_db:reference") == 1
    assert await count_connections(seed.main, "wellwon_db:main") == 0  # main not opened yet
    await close_pools()
    assert await count_connections(seed.reference, "wellwon_db:reference") == 0
    # Using the functions again reopens lazily.
    assert await fetchval_for_db("SELECT 1", database=Database.REFERENCE) == 1


async def test_missing_reference_dsn_names_the_variable(
    seed: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POSTGRES_REFERENCE_DSN")
    wellwon_db.get_postgres_config.cache_clear()
    with pytest.raises(RuntimeError, match="POSTGRES_REFERENCE_DSN"):
        await fetchval_for_db("SELECT 1", database=Database.REFERENCE)
    assert await fetchval_for_db("SELECT 1") == 1  # main unaffected


async def test_undeclared_database_without_a_dsn_names_its_variable(seed: Servers) -> None:
    """The seed's promise: "Set POSTGRES_{database.upper()}_DSN in environment"."""
    with pytest.raises(ConfigurationError, match="set POSTGRES_BILLING_DSN") as caught:
        await fetchval_for_db("SELECT 1", database="billing")
    assert caught.value.env_var == "POSTGRES_BILLING_DSN"
    with pytest.raises(ConfigurationError, match="POSTGRES_BILLING_DSN"):
        get_postgres_dsn_for_db("billing")
    with pytest.raises(ConfigurationError, match="not a valid database name"):
        await fetchval_for_db("SELECT 1", database="no such db")
