"""Regression tests for the original pg_client's routing and pool-config bugs, on real servers."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import MAIN_DB, REFERENCE_DB, Servers, count_connections
from wellwon_db import Database, DatabaseContainer, MainDB, ReferenceDB, fetchval_for_db
from wellwon_db.di._compat import close_pools


async def test_each_client_reaches_its_own_database(
    container: DatabaseContainer, db_env: Servers
) -> None:
    """Regression (bug 1): every database was routed to the main DSN."""
    main: MainDB = container.main_db()
    reference: ReferenceDB = container.reference_db()
    main_row = await main.fetchrow("SELECT current_database() AS db, inet_server_port() AS port")
    ref_row = await reference.fetchrow(
        "SELECT current_database() AS db, inet_server_port() AS port"
    )
    assert main_row is not None
    assert ref_row is not None
    assert (main_row["db"], main_row["port"]) == (MAIN_DB, db_env.main.port)
    assert (ref_row["db"], ref_row["port"]) == (REFERENCE_DB, db_env.reference.port)
    async with reference.transaction() as tx:
        assert await tx.fetchval("SELECT current_database()") == REFERENCE_DB


async def test_seed_functions_route_per_database(db_env: Servers) -> None:
    """Regression (bug 1) through the seed-compatible module-level API."""
    try:
        assert await fetchval_for_db("SELECT current_database()") == MAIN_DB
        assert (
            await fetchval_for_db("SELECT current_database()", database=Database.REFERENCE)
            == REFERENCE_DB
        )
        assert await fetchval_for_db("SELECT inet_server_port()", database="reference") == (
            db_env.reference.port
        )
    finally:
        await close_pools()


async def test_pool_sizes_seen_by_each_server(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (bug 2): the reference pool was built from the main pool's settings.

    Each server sees its own pool's min_size at start and never more than its
    own max_size under load, attributed by application_name.
    """
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "3")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "6")
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "2")
    from wellwon_db import get_postgres_config, start_databases, stop_databases

    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    try:
        assert await count_connections(db_env.main, "wellwon_db:main") == 3
        assert await count_connections(db_env.reference, "wellwon_db:reference") == 1
        # Neither pool's connections land on the other server.
        assert await count_connections(db_env.main, "wellwon_db:reference") == 0
        assert await count_connections(db_env.reference, "wellwon_db:main") == 0

        main, reference = container.main_db(), container.reference_db()
        release = asyncio.Event()

        async def hold(client: MainDB | ReferenceDB) -> None:
            async with client.transaction() as tx:
                await tx.execute("SELECT 1")
                await release.wait()

        holders = [asyncio.create_task(hold(main)) for _ in range(10)]
        holders += [asyncio.create_task(hold(reference)) for _ in range(5)]
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while main.pool.get_stats()["in_use"] < 6 or reference.pool.get_stats()["in_use"] < 2:
                assert asyncio.get_running_loop().time() < deadline, "pools never filled up"
                await asyncio.sleep(0.01)
            assert await count_connections(db_env.main, "wellwon_db:main") == 6
            assert await count_connections(db_env.reference, "wellwon_db:reference") == 2
            assert main.pool.get_stats()["waiting"] == 4
            assert reference.pool.get_stats()["waiting"] == 3
        finally:
            release.set()
            await asyncio.gather(*holders)
    finally:
        await stop_databases(container)
    assert await count_connections(db_env.main, "wellwon_db:main") == 0
    assert await count_connections(db_env.reference, "wellwon_db:reference") == 0
