"""Breaker and retry behaviour on the shared servers (nothing here stops a server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.helpers import Servers, wait_until
from wellwon_db import (
    BreakerState,
    CircuitOpenError,
    DatabaseContainer,
    DatabaseUnavailableError,
    MainDB,
    PoolTimeoutError,
    get_postgres_config,
    start_databases,
    stop_databases,
)
from wellwon_db.client._transaction import TransactionScope


@pytest.fixture
async def main(db_env: Servers, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MainDB]:
    monkeypatch.setenv("PG_BREAKER_MIN_CALLS", "3")
    monkeypatch.setenv("PG_BREAKER_OPEN_SEC", "0.5")
    monkeypatch.setenv("PG_RETRY_BACKOFF_SEC", "0.01")
    monkeypatch.setenv("PG_RETRY_BACKOFF_MAX_SEC", "0.05")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    client: MainDB = container.main_db()
    await client.execute(
        "DROP TABLE IF EXISTS accounts; "
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); "
        "INSERT INTO accounts VALUES (1, 100), (2, 100)"
    )
    yield client
    await stop_databases(container)


async def test_sql_errors_never_trip_the_breaker(main: MainDB) -> None:
    for _ in range(30):
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await main.fetch("SELEC 1")
        with pytest.raises(asyncpg.UniqueViolationError):
            await main.execute("INSERT INTO accounts VALUES (1, 0)")
        with pytest.raises(ZeroDivisionError):
            async with main.transaction() as tx:
                await tx.execute("SELECT 1")
                raise ZeroDivisionError
    assert main.breaker.state is BreakerState.CLOSED
    assert main.breaker.snapshot()["failures"] == 0
    assert main.breaker.snapshot()["calls"] >= 90


async def test_pool_timeouts_never_trip_the_breaker(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool the application holds says nothing of the database: no failure, no open breaker."""
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "1")
    monkeypatch.setenv("PG_POOL_TIMEOUT_SEC", "0.05")
    monkeypatch.setenv("PG_BREAKER_MIN_CALLS", "3")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    try:
        client: MainDB = container.main_db()
        async with client.transaction():
            for _ in range(12):
                with pytest.raises(PoolTimeoutError):
                    await client.fetchval("SELECT 1")
        assert client.breaker.state is BreakerState.CLOSED
        assert client.breaker.snapshot()["failures"] == 0
        assert client.breaker.snapshot()["consecutive_failures"] == 0
        assert await client.fetchval("SELECT 1") == 1
    finally:
        await stop_databases(container)


async def test_open_breaker_refuses_without_touching_the_pool(main: MainDB) -> None:
    main.breaker.force_open()
    acquired = main.pool.get_stats()["acquired"]
    with pytest.raises(CircuitOpenError) as caught:
        await main.fetchval("SELECT 1")
    assert caught.value.database == "main"
    with pytest.raises(CircuitOpenError):
        async with main.transaction():
            pass
    with pytest.raises(CircuitOpenError):
        async with main.acquire():
            pass
    assert main.pool.get_stats()["acquired"] == acquired
    main.breaker.reset()
    assert await main.fetchval("SELECT 1") == 1


async def test_serialization_failure_is_retried_to_success(main: MainDB) -> None:
    attempts = 0

    async def add_interest(tx: TransactionScope, account: int) -> int:
        nonlocal attempts
        attempts += 1
        balance: int = await tx.fetchval("SELECT balance FROM accounts WHERE id = $1", account)
        if attempts == 1:
            # A concurrent transaction commits a change to the same row.
            await main.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", account)
        await tx.execute("UPDATE accounts SET balance = $1 WHERE id = $2", balance * 2, account)
        return balance * 2

    result = await main.run_in_transaction(add_interest, 1, isolation="repeatable_read")
    assert attempts == 2
    assert result == 202
    assert await main.fetchval("SELECT balance FROM accounts WHERE id = 1") == 202


async def test_serialization_failure_without_retries_reaches_the_caller(main: MainDB) -> None:
    async def conflicting(tx: TransactionScope) -> None:
        await tx.fetchval("SELECT balance FROM accounts WHERE id = 2")
        await main.execute("UPDATE accounts SET balance = 0 WHERE id = 2")
        await tx.execute("UPDATE accounts SET balance = 1 WHERE id = 2")

    with pytest.raises(asyncpg.SerializationError):
        await main.run_in_transaction(conflicting, isolation="serializable", attempts=1)
    # transaction() on its own never retries.
    with pytest.raises(asyncpg.SerializationError):
        async with main.transaction(isolation="repeatable_read") as tx:
            await conflicting(tx)


async def test_deadlock_is_retried_to_success(main: MainDB) -> None:
    both_locked_first = asyncio.Barrier(2)
    runs = {"a": 0, "b": 0}

    async def transfer(tx: TransactionScope, name: str, first: int, second: int) -> None:
        runs[name] += 1
        await tx.execute("SET LOCAL deadlock_timeout = '50ms'")
        await tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = $1", first)
        if runs[name] == 1:
            await both_locked_first.wait()
        await tx.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", second)

    await asyncio.gather(
        main.run_in_transaction(transfer, "a", 1, 2),
        main.run_in_transaction(transfer, "b", 2, 1),
    )
    assert sorted(runs.values()) == [1, 2]  # exactly one of them was the deadlock victim
    rows = await main.fetch("SELECT balance FROM accounts ORDER BY id")
    assert [r["balance"] for r in rows] == [100, 100]


async def test_statement_killed_mid_flight_is_retried_only_when_idempotent(
    main: MainDB,
) -> None:
    async def kill_the_sleeper() -> None:
        async def sleeper_pid() -> bool:
            pids = await main.fetch(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%wellwon-kill-me%' "
                "AND state = 'active' AND pid <> pg_backend_pid()"
            )
            if pids:
                await main.execute("SELECT pg_terminate_backend($1)", pids[0]["pid"])
            return bool(pids)

        await wait_until(sleeper_pid, timeout=10)

    query = "SELECT pg_sleep(0.5) /* wellwon-kill-me */, 7"
    killer = asyncio.create_task(kill_the_sleeper())
    with pytest.raises(DatabaseUnavailableError) as caught:
        await main.fetchval(query, column=1)
    await killer
    assert caught.value.may_have_run is True
    assert isinstance(
        caught.value.__cause__, asyncpg.AdminShutdownError | asyncpg.ConnectionDoesNotExistError
    )

    killer = asyncio.create_task(kill_the_sleeper())
    assert await main.fetchval(query, column=1, idempotent=True) == 7
    await killer
    # The pool replaced the killed connections.
    assert await main.fetchval("SELECT 1") == 1
    assert main.pool.get_stats()["in_use"] == 0
