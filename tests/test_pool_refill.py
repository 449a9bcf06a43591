"""After an outage the pool is back to ``min_size`` promptly, without hammering a dead server.

Each test stops a server of its own (``PostgresServer.kill()``) and starts it
again; waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator

import asyncpg
import pytest

from tests.helpers import count_connections, pool_config, wait_until
from wellwon_db import Database, DatabaseClient, DatabasePool, DatabaseUnavailableError
from wellwon_db.testing import PostgresServer

pytestmark = [pytest.mark.fault, pytest.mark.slow]

NAME = "test:refill"


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    server = PostgresServer("refill")
    try:
        yield server.start()
    finally:
        server.cleanup()


async def _answers(server: PostgresServer) -> bool:
    try:
        connection = await asyncpg.connect(server.dsn(), timeout=1)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


async def _at_min(pool: DatabasePool, server: PostgresServer) -> bool:
    return (
        pool.get_stats()["size"] == pool.config.min_size
        and await count_connections(server, NAME) == pool.config.min_size
    )


async def _lose_every_connection(pool: DatabasePool, server: PostgresServer) -> None:
    assert await count_connections(server, NAME) == pool.config.min_size
    await asyncio.get_running_loop().run_in_executor(None, server.kill)

    async def emptied() -> bool:
        return pool.get_stats()["size"] == 0

    await wait_until(emptied)


async def test_back_to_min_size_within_a_backoff_step_of_the_restart(
    server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = pool_config(
        min_size=4,
        max_size=6,
        application_name=NAME,
        capacity_check="off",
        connect_timeout=1.0,
        reconnect_backoff_max=0.5,
    )
    async with DatabasePool(Database.MAIN, server.dsn(), config) as pool:
        await _lose_every_connection(pool, server)
        with caplog.at_level(logging.DEBUG, logger="wellwon_db.pool"):
            down_since = time.monotonic()

            async def two_seconds_down() -> bool:
                return time.monotonic() - down_since > 2.0

            await wait_until(two_seconds_down)
        attempts = sum("could not restore" in r.getMessage() for r in caplog.records)
        # Backoff from 50 ms doubling up to 0.5 s: about 8 attempts in 2 s, not a loop.
        assert 2 <= attempts <= 12, f"{attempts} refill attempts in 2 s against a dead server"

        await asyncio.get_running_loop().run_in_executor(None, server.start)
        await wait_until(lambda: _answers(server))
        answering = time.monotonic()

        await wait_until(lambda: _at_min(pool, server), timeout=5)
        took = time.monotonic() - answering
        assert took < 0.5 + 1.0, f"back to min_size {took:.2f}s after the server answered"
        pool.leases.slots.check()


async def test_the_first_successful_connect_ends_the_refill_backoff(
    server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = pool_config(
        min_size=3,
        max_size=5,
        application_name=NAME,
        capacity_check="off",
        connect_timeout=1.0,
        reconnect_backoff_max=30.0,
    )
    async with DatabasePool(Database.MAIN, server.dsn(), config) as pool:
        client = DatabaseClient(pool)
        await _lose_every_connection(pool, server)
        wakes_at: list[float] = []

        def refill_sleeps_long() -> bool:
            """The refill's latest failure: when it will try again (wall clock)."""
            for record in caplog.records:
                match = re.search(r"next try in ([0-9.]+)s", record.getMessage())
                if match and float(match.group(1)) >= 3.0:
                    wakes_at.append(record.created + float(match.group(1)))
            return bool(wakes_at)

        async def backing_off_for_long() -> bool:
            return refill_sleeps_long()

        with caplog.at_level(logging.DEBUG, logger="wellwon_db.pool"):
            await wait_until(backing_off_for_long, timeout=20)
        await asyncio.get_running_loop().run_in_executor(None, server.start)

        async def query_succeeds() -> bool:
            try:
                return await client.fetchval("SELECT 1") == 1
            except DatabaseUnavailableError:
                return False

        await wait_until(query_succeeds)
        connected = time.monotonic()
        await wait_until(lambda: _at_min(pool, server), timeout=10)
        took = time.monotonic() - connected
        assert took < 1.0, f"min_size restored {took:.2f}s after a caller's connect succeeded"
        assert time.time() < wakes_at[-1], "restored only when the refill woke by itself"
