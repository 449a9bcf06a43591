"""Callers queued on a real pool: each times out at its own deadline, and says so."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers import Servers, pool_config, wait_until
from wellwon_db import Database, DatabasePool, PoolTimeoutError


async def test_a_short_timeout_queued_behind_a_long_one_expires_on_time(db_env: Servers) -> None:
    config = pool_config(min_size=1, max_size=1, timeout=10.0, capacity_check="off")
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        held = await pool.acquire_connection()
        patient = asyncio.create_task(pool.acquire_connection(timeout=3.0))

        async def first_queued() -> bool:
            return pool.get_stats()["waiting"] == 1

        await wait_until(first_queued)
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError) as caught:
            await pool.acquire_connection(timeout=0.3)
        took = time.monotonic() - started
        assert 0.28 <= took < 0.8, f"the 0.3 s waiter gave up after {took:.2f}s"
        error = caught.value
        assert error.timeout == 0.3
        assert error.waited is not None
        assert abs(error.waited - took) < 0.1
        assert "within 0.3s" in str(error)
        assert f"waited {error.waited:.2f}s" in str(error)
        assert not patient.done(), "the 3 s waiter expired with the 0.3 s one"
        await pool.release_connection(held)
        connection = await asyncio.wait_for(patient, 2)  # served, not timed out
        await pool.release_connection(connection)
        assert pool.get_stats()["timeouts"] == 1
        pool.leases.slots.check()


async def test_a_caller_cancelled_after_being_served_passes_the_connection_on(
    db_env: Servers,
) -> None:
    config = pool_config(min_size=1, max_size=1, timeout=5.0, capacity_check="off")
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        held = await pool.acquire_connection()
        first = asyncio.create_task(pool.acquire_connection())
        second = asyncio.create_task(pool.acquire_connection())

        async def both_queued() -> bool:
            return pool.get_stats()["waiting"] == 2

        await wait_until(both_queued)
        await pool.release_connection(held)  # handed to the first waiter ...
        first.cancel()  # ... whose task is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        connection = await asyncio.wait_for(second, 2)  # the second one gets it
        await pool.release_connection(connection)
        stats = pool.get_stats()
        assert (stats["waiting"], stats["in_use"], stats["size"]) == (0, 0, 1)
        pool.leases.slots.check()
