"""``close()`` leaves nothing of the pool running on the server.

Past the drain deadline, statements still running are cancelled on the
server and connections still busy are terminated there, so no backend of
the closed pool keeps running or holding locks.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import asyncpg
import pytest

from tests.helpers import Servers, count_connections, pool_config, wait_until
from wellwon_db import Database, DatabaseClient, DatabasePool, DatabaseUnavailableError
from wellwon_db.testing import PgBouncerServer, PostgresServer, find_pgbouncer


async def test_close_past_its_drain_deadline_stops_statements_and_frees_locks(
    db_env: Servers,
) -> None:
    name = "test:close-on-server"
    admin = await asyncpg.connect(db_env.main_dsn)
    try:
        await admin.execute(
            "DROP TABLE IF EXISTS close_lock; CREATE TABLE close_lock (id int PRIMARY KEY);"
            "INSERT INTO close_lock VALUES (1)"
        )
        config = pool_config(min_size=2, max_size=3, application_name=name, capacity_check="off")
        pool = DatabasePool(Database.MAIN, db_env.main_dsn, config)
        await pool.open()
        client = DatabaseClient(pool)
        locked, hold = asyncio.Event(), asyncio.Event()

        async def holds_a_row_lock() -> None:
            async with client.transaction() as tx:
                await tx.execute("SELECT * FROM close_lock WHERE id = 1 FOR UPDATE")
                locked.set()
                await hold.wait()  # never set: the transaction stays open

        sleeper = asyncio.create_task(client.fetchval("SELECT pg_sleep(60) /* close-sleep */"))
        locker = asyncio.create_task(holds_a_row_lock())
        await asyncio.wait_for(locked.wait(), 5)

        async def both_busy() -> bool:
            return pool.get_stats()["in_use"] == 2

        await wait_until(both_busy)
        started = time.monotonic()
        await pool.close(timeout=1)
        took = time.monotonic() - started
        assert took < 5, f"close() took {took:.1f}s"

        # Within a second of close() returning: no backend of the pool, the lock is free.
        async def no_backend_left() -> bool:
            return await count_connections(db_env.main, name) == 0

        await wait_until(no_backend_left, timeout=1)
        await admin.execute("SET lock_timeout = '500ms'")
        async with admin.transaction():
            assert await admin.fetchval("SELECT id FROM close_lock WHERE id = 1 FOR UPDATE") == 1
        running = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%close-sleep%' "
            "AND state = 'active' AND pid <> pg_backend_pid()"
        )
        assert running == 0
        # The holders learn that their connections are gone (the locker when it commits).
        hold.set()
        for task in (sleeper, locker):
            with pytest.raises(
                (asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailableError)
            ):
                await asyncio.wait_for(task, 5)
    finally:
        await admin.close()


async def test_close_under_load_leaves_no_backend_and_never_exceeds_max_size(
    db_env: Servers,
) -> None:
    """A restart under load: the new pool never shares the server with the old one's backends."""
    name = "test:close-under-load"
    max_size = 4
    config = pool_config(
        min_size=2, max_size=max_size, application_name=name, capacity_check="off", timeout=2.0
    )
    stop = asyncio.Event()
    seen: list[int] = []
    current: list[DatabaseClient] = []

    async def work() -> None:
        while not stop.is_set():
            client = current[-1]
            try:
                if random.random() < 0.3:
                    async with client.transaction() as tx:
                        await tx.fetchval("SELECT pg_sleep($1::float8)", random.random() * 3)
                else:
                    await client.fetchval("SELECT pg_sleep($1::float8)", random.random() * 3)
            except Exception:
                await asyncio.sleep(0.01)  # the pool closed under it: try the next one

    async def sample() -> None:
        while not stop.is_set():
            seen.append(await count_connections(db_env.main, name))

    async def open_pool() -> DatabasePool:
        pool = DatabasePool(Database.MAIN, db_env.main_dsn, config)
        await pool.open()
        current.append(DatabaseClient(pool))
        return pool

    pool = await open_pool()
    workers = [asyncio.create_task(work()) for _ in range(16)]
    sampler = asyncio.create_task(sample())
    try:
        for _ in range(3):

            async def busy(pool: DatabasePool = pool) -> bool:
                return pool.get_stats()["in_use"] == max_size

            await wait_until(busy)
            await pool.close(timeout=0.2)  # statements of up to 3 s are still running
            pool = await open_pool()
    finally:
        await pool.close(timeout=0.2)

        async def none_left() -> bool:
            return await count_connections(db_env.main, name) == 0

        await wait_until(none_left, timeout=1)
        stop.set()
        await asyncio.gather(*workers, sampler)
    assert len(seen) > 10
    assert max(seen) <= max_size, f"the server saw {max(seen)} of our backends (max {max_size})"


@pytest.fixture
def bouncer(postgres_server: PostgresServer) -> Iterator[PgBouncerServer]:
    try:
        find_pgbouncer()
    except RuntimeError as exc:  # .ci/run installs it; a bare dev machine may not have it
        pytest.skip(str(exc))
    server = PgBouncerServer(postgres_server, pool_mode="transaction", default_pool_size=4)
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.mark.slow
async def test_behind_pgbouncer_close_stops_statements_and_frees_locks(
    bouncer: PgBouncerServer, postgres_server: PostgresServer
) -> None:
    """No backend ids to end: the cancel request goes through PgBouncer, which closes
    the server connection of a client that left mid-transaction."""
    admin = await asyncpg.connect(postgres_server.dsn())
    try:
        await admin.execute(
            "CREATE TABLE close_lock (id int PRIMARY KEY); INSERT INTO close_lock VALUES (1)"
        )
        config = pool_config(min_size=1, max_size=3, pgbouncer=True, capacity_check="off")
        pool = DatabasePool(Database.MAIN, bouncer.dsn("postgres"), config)
        await pool.open()
        client = DatabaseClient(pool)
        locked, hold = asyncio.Event(), asyncio.Event()

        async def holds_a_row_lock() -> None:
            async with client.transaction() as tx:
                await tx.execute("SELECT * FROM close_lock WHERE id = 1 FOR UPDATE")
                locked.set()
                await hold.wait()

        sleeper = asyncio.create_task(client.fetchval("SELECT pg_sleep(60) /* bounced-sleep */"))
        locker = asyncio.create_task(holds_a_row_lock())
        await asyncio.wait_for(locked.wait(), 5)

        async def sleeping() -> bool:
            running = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%bounced-sleep%' "
                "AND state = 'active' AND pid <> pg_backend_pid()"
            )
            return bool(running == 1)

        await wait_until(sleeping)
        await pool.close(timeout=1)

        async def stopped_and_unlocked() -> bool:
            if await sleeping():
                return False
            await admin.execute("SET lock_timeout = '100ms'")
            try:
                async with admin.transaction():
                    await admin.fetchval("SELECT id FROM close_lock WHERE id = 1 FOR UPDATE")
            except asyncpg.LockNotAvailableError:
                return False
            return True

        await wait_until(stopped_and_unlocked, timeout=2)
        hold.set()
        await asyncio.gather(sleeper, locker, return_exceptions=True)
    finally:
        await admin.close()
