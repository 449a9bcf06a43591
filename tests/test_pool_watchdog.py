"""The command timeout: the pool's statement watchdog, and asyncpg's own timer for raw use.

Single statements of the clients run without asyncpg's per-statement timer;
the pool's watchdog cancels them past the command timeout, and the server
cancels them too. Connections lent for arbitrary use (``acquire()``,
transactions) get asyncpg's timer back for the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.helpers import Servers, pool_config, wait_until
from wellwon_db import Database, DatabaseClient, DatabasePool
from wellwon_db.pool._connector import use_driver_timeout

TIMEOUT = 0.3


@pytest.fixture
async def client(db_env: Servers) -> AsyncIterator[DatabaseClient]:
    config = pool_config(
        min_size=1, max_size=2, command_timeout=TIMEOUT, capacity_check="off", validation_idle=0
    )
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        yield DatabaseClient(pool)


async def _running(client: DatabaseClient, marker: str) -> int:
    """Statements with ``marker`` in their text still active on the server."""
    connection = await client.pool.acquire_connection()
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' "
            "AND pid <> pg_backend_pid()",
            f"%{marker}%",
        )
        return count
    finally:
        await client.pool.release_connection(connection)


async def test_a_statement_past_the_command_timeout_is_cancelled_on_the_server(
    client: DatabaseClient,
) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"command timeout of 0\.3s"):
        await client.fetchval("SELECT pg_sleep(30) /* wd-overdue */")
    took = time.monotonic() - started
    # The watchdog looks every tenth of the timeout: at most that much late.
    assert TIMEOUT <= took < TIMEOUT * 1.1 + 0.3, f"timed out after {took:.2f}s"

    async def gone_on_the_server() -> bool:
        return await _running(client, "wd-overdue") == 0

    await wait_until(gone_on_the_server, timeout=5)
    assert await client.fetchval("SELECT 1") == 1

    async def settled() -> bool:
        return client.pool.get_stats()["in_use"] == 0 and not client.pool.leases.releasing

    await wait_until(settled)
    client.pool.leases.slots.check()


async def test_an_explicit_timeout_overrides_the_command_timeout(client: DatabaseClient) -> None:
    assert await client.fetchval("SELECT 7 FROM pg_sleep(0.5)", timeout=5) == 7
    with pytest.raises(TimeoutError):
        await client.fetchval("SELECT pg_sleep(30) /* wd-explicit */", timeout=0.1)


async def test_a_statement_within_the_timeout_is_left_alone(client: DatabaseClient) -> None:
    assert await client.fetchval("SELECT 8 FROM pg_sleep(0.2)") == 8


async def test_a_caller_cancelled_before_the_timeout_sees_its_own_cancellation(
    client: DatabaseClient,
) -> None:
    task = asyncio.create_task(client.fetchval("SELECT pg_sleep(30) /* wd-cancel */"))

    async def running() -> bool:
        return await _running(client, "wd-cancel") == 1

    await wait_until(running)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def gone() -> bool:
        return await _running(client, "wd-cancel") == 0

    await wait_until(gone, timeout=5)


async def test_a_task_that_swallowed_a_cancellation_still_times_out(
    client: DatabaseClient,
) -> None:
    """As asyncio.timeout: the cancellation count at the start is the baseline."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(1)  # swallowed without uncancel(): cancelling() stays 1
    assert task.cancelling() == 1
    try:
        with pytest.raises(TimeoutError):
            await client.fetchval("SELECT pg_sleep(30) /* wd-swallowed */")
    finally:
        task.uncancel()


async def test_transactions_and_raw_connections_use_asyncpg_s_timer(
    client: DatabaseClient,
) -> None:
    with pytest.raises(TimeoutError):
        async with client.transaction() as tx:
            await tx.fetchval("SELECT pg_sleep(30) /* wd-tx */")
    with pytest.raises(TimeoutError):
        async with client.acquire() as connection:
            await connection.fetchval("SELECT pg_sleep(30) /* wd-raw */")

    async def gone() -> bool:
        return await _running(client, "wd-") == 0

    await wait_until(gone, timeout=5)


async def test_the_driver_timeout_is_on_only_while_lent_raw(client: DatabaseClient) -> None:
    """Pins asyncpg's private configuration field the switch relies on."""
    pool = client.pool
    async with client.acquire() as connection:
        assert connection._config.command_timeout == TIMEOUT
    idle = pool.leases.slots.idle[-1].connection
    assert idle is not None
    assert idle._config.command_timeout is None  # type: ignore[attr-defined]
    use_driver_timeout(idle, 5.0)
    assert idle._config.command_timeout == 5.0  # type: ignore[attr-defined]
    use_driver_timeout(idle, None)
    assert idle._config.command_timeout is None  # type: ignore[attr-defined]
