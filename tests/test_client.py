"""The query API, transactions and errors, against the real servers."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.helpers import Servers, wait_until
from wellwon_db import (
    DatabaseClient,
    DatabaseContainer,
    MainDB,
    PoolClosedError,
    ReferenceDB,
    stop_databases,
)
from wellwon_db.errors import ConfigurationError


@pytest.fixture
async def main(container: DatabaseContainer) -> MainDB:
    client: MainDB = container.main_db()
    await client.execute("DROP TABLE IF EXISTS items")
    await client.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
    return client


async def test_query_methods(main: MainDB) -> None:
    assert await main.execute("INSERT INTO items VALUES ($1, $2)", 1, "one") == "INSERT 0 1"
    await main.executemany("INSERT INTO items VALUES ($1, $2)", [(2, "two"), (3, "three")])
    rows = await main.fetch("SELECT id, name FROM items ORDER BY id")
    assert [(r["id"], r["name"]) for r in rows] == [(1, "one"), (2, "two"), (3, "three")]
    row = await main.fetchrow("SELECT id, name FROM items WHERE id = $1", 2)
    assert row is not None
    assert row["name"] == "two"
    assert await main.fetchrow("SELECT * FROM items WHERE id = $1", 99) is None
    assert await main.fetchval("SELECT name FROM items WHERE id = $1", 3) == "three"
    assert await main.fetchval("SELECT id, name FROM items WHERE id = 1", column=1) == "one"
    assert await main.fetchval("SELECT name FROM items WHERE id = 99") is None
    assert await main.execute("UPDATE items SET name = upper(name)") == "UPDATE 3"


async def test_executemany_is_atomic(main: MainDB) -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        await main.executemany("INSERT INTO items VALUES ($1, $2)", [(1, "a"), (1, "dup")])
    assert await main.fetchval("SELECT count(*) FROM items") == 0


async def test_postgres_errors_pass_through_unchanged(main: MainDB) -> None:
    await main.execute("INSERT INTO items VALUES (1, 'one')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await main.execute("INSERT INTO items VALUES (1, 'again')")
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await main.fetch("SELEC 1")
    with pytest.raises(asyncpg.UndefinedTableError):
        await main.fetch("SELECT * FROM no_such_table")
    # The pool is still healthy afterwards.
    assert await main.fetchval("SELECT 1") == 1
    assert main.pool.get_stats()["in_use"] == 0


async def test_transaction_commits(main: MainDB) -> None:
    async with main.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES (1, 'one')")
        await tx.executemany("INSERT INTO items VALUES ($1, $2)", [(2, "two")])
        assert await tx.fetchval("SELECT count(*) FROM items") == 2
        # Not visible outside before commit.
        assert await main.fetchval("SELECT count(*) FROM items") == 0
    assert await main.fetchval("SELECT count(*) FROM items") == 2


async def test_transaction_rolls_back_on_exception(main: MainDB) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with main.transaction() as tx:
            await tx.execute("INSERT INTO items VALUES (1, 'one')")
            raise Boom
    assert await main.fetchval("SELECT count(*) FROM items") == 0
    with pytest.raises(asyncpg.UniqueViolationError):
        async with main.transaction() as tx:
            await tx.execute("INSERT INTO items VALUES (1, 'one')")
            await tx.execute("INSERT INTO items VALUES (1, 'one')")
    assert await main.fetchval("SELECT count(*) FROM items") == 0
    assert main.pool.get_stats()["in_use"] == 0


async def test_nested_transaction_is_a_savepoint(main: MainDB) -> None:
    async with main.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES (1, 'kept')")
        with pytest.raises(ValueError, match="inner"):
            async with tx.transaction() as inner:
                await inner.execute("INSERT INTO items VALUES (2, 'rolled back')")
                raise ValueError("inner")
        async with tx.transaction() as inner:
            await inner.execute("INSERT INTO items VALUES (3, 'released')")
    rows = await main.fetch("SELECT id FROM items ORDER BY id")
    assert [r["id"] for r in rows] == [1, 3]


async def test_transaction_options(main: MainDB) -> None:
    async with main.transaction(isolation="serializable", readonly=True, deferrable=True) as tx:
        assert await tx.fetchval("SHOW transaction_isolation") == "serializable"
        assert await tx.fetchval("SHOW transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await tx.execute("INSERT INTO items VALUES (1, 'x')")
    async with main.transaction(isolation="repeatable_read") as tx:
        assert await tx.fetchval("SHOW transaction_isolation") == "repeatable read"
    async with main.transaction() as tx:
        assert await tx.fetchval("SHOW transaction_isolation") == "read committed"


async def test_transaction_scope_unusable_after_block(main: MainDB) -> None:
    async with main.transaction() as tx:
        pass
    with pytest.raises(asyncpg.InterfaceError, match="released back to the pool"):
        await tx.fetchval("SELECT 1")


async def test_acquire_gives_a_raw_connection(main: MainDB) -> None:
    async with main.acquire() as connection:
        assert await connection.fetchval("SELECT 41 + 1") == 42
        async with connection.transaction():
            await connection.execute("INSERT INTO items VALUES (1, 'raw')")
    assert await main.fetchval("SELECT name FROM items") == "raw"
    assert main.pool.get_stats()["in_use"] == 0


async def test_command_timeout_cancels_on_the_server(
    container: DatabaseContainer, db_env: Servers
) -> None:
    main: MainDB = container.main_db()
    with pytest.raises(TimeoutError):
        await main.fetchval("SELECT pg_sleep(30) /* wellwon-timeout-probe */", timeout=0.3)

    async def statement_gone() -> bool:
        running = await main.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE query LIKE '%wellwon-timeout-probe%' AND state = 'active' "
            "AND pid <> pg_backend_pid()"
        )
        return bool(running == 0)

    await wait_until(statement_gone, timeout=5)
    assert await main.fetchval("SELECT 1") == 1


async def test_client_types_are_distinct(container: DatabaseContainer) -> None:
    main = container.main_db()
    reference = container.reference_db()
    assert type(main) is MainDB
    assert type(reference) is ReferenceDB
    assert not isinstance(main, ReferenceDB)
    assert isinstance(main, DatabaseClient)
    with pytest.raises(ConfigurationError, match="MainDB is for the main database"):
        MainDB(reference.pool)
    with pytest.raises(TypeError, match="needs a DatabasePool"):
        MainDB(object())  # type: ignore[arg-type]
    generic = DatabaseClient(reference.pool)
    assert await generic.fetchval("SELECT 1") == 1


async def test_client_of_a_stopped_container_says_so(container: DatabaseContainer) -> None:
    main: MainDB = container.main_db()
    await stop_databases(container)
    with pytest.raises(PoolClosedError, match=r"main database pool is not open.*start_databases"):
        await main.fetchval("SELECT 1")
    with pytest.raises(PoolClosedError):
        async with main.transaction():
            pass
    with pytest.raises(PoolClosedError):
        async with main.acquire():
            pass


async def test_concurrent_queries_share_the_pool(container: DatabaseContainer) -> None:
    main: MainDB = container.main_db()
    results = await asyncio.gather(*(main.fetchval("SELECT $1::int", i) for i in range(200)))
    assert results == list(range(200))
    stats = main.pool.get_stats()
    assert stats["size"] <= stats["max_size"] == 5
    assert stats["in_use"] == 0
