"""The owned pool's slot accounting, close races and misuse (``_leases.py``/``_pool.py``)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.helpers import MAIN_DB, SECRET, Servers, count_connections, pool_config, wait_until
from wellwon_db import (
    Database,
    DatabasePool,
    PoolClosedError,
    PoolState,
)
from wellwon_db.pool._session import SessionEffect
from wellwon_db.testing import TcpProxy


async def test_broken_release_counts_one_retirement(db_env: Servers) -> None:
    config = pool_config(min_size=1, max_size=2, capacity_check="off")
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        connection = await pool.acquire_connection()
        await pool.release_connection(connection, SessionEffect.BROKEN)
        stats = pool.get_stats()
        assert stats["connections_retired"] == 1


async def test_close_during_capacity_check_fails_open_with_pool_closed(db_env: Servers) -> None:
    async with TcpProxy(db_env.main.host, db_env.main.port) as proxy:
        reached = asyncio.Event()

        class Probe(DatabasePool):
            async def _check_capacity(self) -> None:
                proxy.go_deaf()  # the capacity query stays in flight
                reached.set()
                await super()._check_capacity()

        config = pool_config(min_size=1, max_size=2, capacity_check="warn", command_timeout=5.0)
        pool = Probe(Database.MAIN, proxy.dsn(MAIN_DB, password=SECRET), config)
        opening = asyncio.create_task(pool.open())
        await asyncio.wait_for(reached.wait(), 5)
        await pool.close()
        proxy.restore()
        with pytest.raises(PoolClosedError, match="closed while it was opening"):
            await asyncio.wait_for(opening, 5)


async def test_connect_finishing_after_close_leaves_no_negative_slot_count(
    db_env: Servers,
) -> None:
    name = "review:late-connect"
    async with TcpProxy(db_env.main.host, db_env.main.port) as proxy:
        config = pool_config(min_size=0, max_size=2, capacity_check="off", application_name=name)
        pool = DatabasePool(Database.MAIN, proxy.dsn(MAIN_DB, password=SECRET), config)
        await pool.open()
        proxy.go_deaf()
        acquiring = asyncio.create_task(pool.acquire_connection())

        async def opening() -> bool:
            return pool.leases.slots.count == 1

        await wait_until(opening)
        await pool.close(timeout=0.05)  # the connect is still hanging: not drained
        proxy.restore()  # the connect completes, after the pool closed
        with pytest.raises(PoolClosedError):
            await asyncio.wait_for(acquiring, 5)

        async def none_left() -> bool:
            return await count_connections(db_env.main, name) == 0

        await wait_until(none_left)
        assert pool.leases.slots.count == 0
        assert pool.get_stats()["reserved"] == 0


async def test_double_release_never_hands_one_connection_to_two_callers(
    db_env: Servers,
) -> None:
    config = pool_config(min_size=1, max_size=2, capacity_check="off")
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        connection = await pool.acquire_connection()
        await pool.release_connection(connection)
        with pytest.raises(asyncpg.InterfaceError, match="already released"):
            await pool.release_connection(connection)  # a caller's bug
        first = await pool.acquire_connection()
        second = await pool.acquire_connection()
        assert first is not second
        await pool.release_connection(first)
        await pool.release_connection(second)


async def test_min_size_is_restored_after_a_dead_idle_connection_is_replaced(
    db_env: Servers,
) -> None:
    name = "review:replaced"
    config = pool_config(
        min_size=2, max_size=2, validation_idle=0, capacity_check="off", application_name=name
    )
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        assert len(pool.leases.slots.idle) == 2
        # Dead (as after a failed ping, or a lost socket whose listener has not run yet):
        pool.leases.slots.idle[-1].connection.terminate()  # type: ignore[union-attr]
        connection = await pool.acquire_connection()  # replaced by the other idle one
        await pool.release_connection(connection)

        async def back_to_min() -> bool:
            return pool.leases.slots.count == 2 and await count_connections(db_env.main, name) == 2

        await wait_until(back_to_min, timeout=3)


async def test_a_second_close_waits_for_the_first_to_finish(db_env: Servers) -> None:
    config = pool_config(min_size=1, max_size=1, capacity_check="off")
    pool = DatabasePool(Database.MAIN, db_env.main_dsn, config)
    await pool.open()
    held = await pool.acquire_connection()
    first = asyncio.create_task(pool.close(timeout=5))

    async def draining() -> bool:
        return pool.state is PoolState.CLOSING

    await wait_until(draining)
    second = asyncio.create_task(pool.close())
    await asyncio.sleep(0)  # let the second close() reach its wait
    assert not second.done(), "a second close() returned while the first still drains"
    await pool.release_connection(held)
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert pool.state is PoolState.CLOSED
