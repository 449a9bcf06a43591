"""Transactions under faults tell the truth: lost before COMMIT (safe to run again) vs unknown.

A backend terminated while the application pauses inside a transaction
raises ``DatabaseUnavailableError`` with ``during_commit`` false, counts as a
breaker failure, is retried by ``run_in_transaction`` and leaves
``commit_attempted`` false. A COMMIT that times out (synchronous replication
stalled) raises an unknown-outcome error that nothing re-runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from tests.helpers import Servers, wait_until
from wellwon_db import (
    DatabaseContainer,
    DatabaseUnavailableError,
    MainDB,
    database_lifespan,
    get_postgres_config,
)
from wellwon_db.client._transaction import Transaction, TransactionScope
from wellwon_db.testing import PostgresServer


async def _terminate(admin_dsn: str, pid: int) -> None:
    """Terminate backend ``pid`` and wait until it is gone from the server."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)

        async def gone() -> bool:
            return not await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            )

        await wait_until(gone)
    finally:
        await admin.close()


async def _lose_connection(tx: TransactionScope, admin_dsn: str) -> None:
    """Terminate the transaction's backend and wait until the client has seen it go."""
    pid = await tx.fetchval("SELECT pg_backend_pid()")
    raw = tx.connection
    await _terminate(admin_dsn, pid)

    async def noticed() -> bool:
        return bool(raw.is_closed())

    await wait_until(noticed)


@pytest.fixture
async def main(db_env: Servers, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MainDB]:
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "1")
    monkeypatch.setenv("PG_RETRY_BACKOFF_SEC", "0.01")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    async with database_lifespan(container):
        client: MainDB = container.main_db()
        await client.execute("DROP TABLE IF EXISTS moves; CREATE TABLE moves (n int)")
        yield client


async def test_a_statement_after_the_connection_was_lost_is_unavailable(
    main: MainDB, db_env: Servers
) -> None:
    transaction = main.transaction()
    assert isinstance(transaction, Transaction)
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with transaction as tx:
            await tx.execute("INSERT INTO moves VALUES (1)")
            await _lose_connection(tx, db_env.main_dsn)
            await tx.execute("INSERT INTO moves VALUES (2)")
    error = caught.value
    assert error.during_commit is False
    assert error.may_have_run is False
    assert "rolled back" in str(error)
    assert transaction.commit_attempted is False
    assert main.breaker.snapshot()["failures"] == 1
    assert await main.fetchval("SELECT count(*) FROM moves") == 0


async def test_a_block_ending_after_the_connection_was_lost_sends_no_commit(
    main: MainDB, db_env: Servers
) -> None:
    transaction = main.transaction()
    assert isinstance(transaction, Transaction)
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with transaction as tx:
            await tx.execute("INSERT INTO moves VALUES (1)")
            await _lose_connection(tx, db_env.main_dsn)
    assert caught.value.during_commit is False
    assert caught.value.may_have_run is False
    assert "before COMMIT" in str(caught.value)
    assert transaction.commit_attempted is False
    assert main.breaker.snapshot()["failures"] == 1
    assert await main.fetchval("SELECT count(*) FROM moves") == 0  # the pool replaced it


async def test_run_in_transaction_runs_again_after_a_lost_connection(
    main: MainDB, db_env: Servers
) -> None:
    attempts = 0

    async def move(tx: TransactionScope) -> int:
        nonlocal attempts
        attempts += 1
        await tx.execute("INSERT INTO moves VALUES ($1)", attempts)
        if attempts == 1:
            await _lose_connection(tx, db_env.main_dsn)
            await tx.execute("INSERT INTO moves VALUES (99)")
        return attempts

    assert await main.run_in_transaction(move) == 2
    assert await main.fetch("SELECT n FROM moves") == [(2,)]


def test_an_error_during_commit_always_may_have_run() -> None:
    error = DatabaseUnavailableError("x", database="main", may_have_run=False, during_commit=True)
    assert error.may_have_run is True


# -- COMMIT that times out ----------------------------------------------------------


@pytest.fixture(scope="module")
def stalled_server() -> Iterator[PostgresServer]:
    """A server whose commits wait for a synchronous standby that never connects."""
    server = PostgresServer("commit-stall", settings={"synchronous_commit": "on"}).start()
    server.execute("CREATE DATABASE stall")
    server.execute("ALTER SYSTEM SET synchronous_standby_names = 'never_connects'")
    server.execute("SELECT pg_reload_conf()")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def stalled(
    stalled_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MainDB]:
    monkeypatch.setenv("POSTGRES_DSN", stalled_server.dsn("stall"))
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "2")
    monkeypatch.setenv("PG_COMMAND_TIMEOUT_SEC", "0.5")
    get_postgres_config.cache_clear()
    admin = await asyncpg.connect(stalled_server.dsn("stall"))
    try:
        # Table set-up commits locally at once (not waiting for the standby).
        await admin.execute("SET synchronous_commit = local")
        await admin.execute("DROP TABLE IF EXISTS stalls; CREATE TABLE stalls (n int)")
    finally:
        await admin.close()
    container = DatabaseContainer()
    async with database_lifespan(container):
        yield container.main_db()


async def _committed_rows(server: PostgresServer) -> list[Any]:
    connection = await asyncpg.connect(server.dsn("stall"))
    try:
        return [row[0] for row in await connection.fetch("SELECT n FROM stalls ORDER BY n")]
    finally:
        await connection.close()


async def test_a_commit_that_times_out_has_an_unknown_outcome(
    stalled: MainDB, stalled_server: PostgresServer
) -> None:
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with stalled.transaction() as tx:
            await tx.execute("INSERT INTO stalls VALUES (1)")
    error = caught.value
    assert not isinstance(error, TimeoutError)
    assert error.during_commit is True
    assert error.may_have_run is True
    assert "outcome unknown" in str(error)
    assert isinstance(error.__cause__, TimeoutError)
    # And indeed it committed (visible once the abandoned wait for the standby
    # ends): running it again would have applied it twice.

    async def committed() -> bool:
        return await _committed_rows(stalled_server) == [1]

    await wait_until(committed)


async def test_run_in_transaction_never_reruns_an_unknown_commit(
    stalled: MainDB, stalled_server: PostgresServer
) -> None:
    calls = 0

    async def insert(tx: TransactionScope) -> None:
        nonlocal calls
        calls += 1
        await tx.execute("INSERT INTO stalls VALUES (2)")

    with pytest.raises(DatabaseUnavailableError) as caught:
        await stalled.run_in_transaction(insert, attempts=3)
    assert caught.value.during_commit is True
    assert calls == 1

    async def committed_once() -> bool:
        return (await _committed_rows(stalled_server)).count(2) == 1

    await wait_until(committed_once)
