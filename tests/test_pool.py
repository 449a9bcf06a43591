"""DatabasePool: lifecycle, acquire timeout, unreachable servers, lifetimes, stats."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.helpers import SECRET, Servers, count_connections, free_port, pool_config, wait_until
from wellwon_db import (
    Database,
    DatabasePool,
    DatabaseUnavailableError,
    PoolClosedError,
    PoolState,
    PoolTimeoutError,
)


async def test_lifecycle_states(db_env: Servers) -> None:
    pool = DatabasePool(Database.MAIN, db_env.main_dsn, pool_config(min_size=1, max_size=2))
    assert pool.state is PoolState.NEW
    with pytest.raises(PoolClosedError, match="not been opened"):
        await pool.acquire_connection()
    async with pool:
        assert pool.state is PoolState.OPEN
        with pytest.raises(PoolClosedError, match="already opened"):
            await pool.open()
        connection = await pool.acquire_connection()
        assert await connection.fetchval("SELECT 1") == 1
        await pool.release_connection(connection)
    assert pool.state is PoolState.CLOSED
    with pytest.raises(PoolClosedError, match="is closed"):
        await pool.acquire_connection()
    await pool.close()  # idempotent


def test_repr_and_errors_hide_the_password(db_env: Servers) -> None:
    pool = DatabasePool(Database.MAIN, db_env.main_dsn, pool_config())
    assert SECRET not in repr(pool)
    assert "***" in repr(pool)
    assert pool.address == f"127.0.0.1:{db_env.main.port}"
    with pytest.raises(ValueError, match="reference database given for the main"):
        DatabasePool(Database.MAIN, db_env.main_dsn, pool_config(Database.REFERENCE))


async def test_acquire_timeout_names_database_size_and_waiters(db_env: Servers) -> None:
    pool = DatabasePool(
        Database.REFERENCE,
        db_env.reference_dsn,
        pool_config(Database.REFERENCE, min_size=1, max_size=1, timeout=0.2),
    )
    async with pool:
        held = await pool.acquire_connection()
        results = await asyncio.gather(
            pool.acquire_connection(), pool.acquire_connection(), return_exceptions=True
        )
        assert all(isinstance(r, PoolTimeoutError) for r in results)
        error = results[0]
        assert isinstance(error, PoolTimeoutError)
        assert isinstance(error, TimeoutError)
        assert (error.database, error.max_size, error.timeout) == ("reference", 1, 0.2)
        assert error.waiters == 2
        assert "reference" in str(error)
        assert "1 connections in use" in str(error)
        assert pool.get_stats()["timeouts"] == 2
        await pool.release_connection(held)
        # Capacity comes back once the holder releases.
        again = await pool.acquire_connection()
        await pool.release_connection(again)
        assert pool.get_stats()["waiting"] == 0


async def test_unreachable_server_raises_unavailable_without_secrets() -> None:
    dsn = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/x"
    pool = DatabasePool(Database.MAIN, dsn, pool_config(min_size=1, connect_timeout=2))
    with pytest.raises(DatabaseUnavailableError) as caught:
        await pool.open()
    assert caught.value.database == "main"
    assert SECRET not in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    assert pool.state is PoolState.CLOSED


async def test_silent_server_is_bounded_by_the_connect_timeout() -> None:
    # A listener that accepts TCP and never answers.
    writers: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = DatabasePool(
            Database.MAIN,
            f"postgresql://u@127.0.0.1:{port}/x",
            pool_config(min_size=1, connect_timeout=0.5),
        )
        started = asyncio.get_running_loop().time()
        with pytest.raises(DatabaseUnavailableError, match=r"connect timeout of 0\.5s"):
            await pool.open()
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_max_lifetime_replaces_old_connections(db_env: Servers) -> None:
    pool = DatabasePool(
        Database.MAIN, db_env.main_dsn, pool_config(min_size=1, max_size=1, max_lifetime=0.2)
    )
    async with pool:
        connection = await pool.acquire_connection()
        first_pid = connection.get_server_pid()
        await pool.release_connection(connection)

        async def replaced() -> bool:
            conn = await pool.acquire_connection()
            pid = conn.get_server_pid()
            await pool.release_connection(conn)
            return pid != first_pid

        await wait_until(replaced, timeout=5, interval=0.05)
        assert pool.get_stats()["connections_retired"] >= 1


async def test_application_name_and_min_size_seen_by_server(db_env: Servers) -> None:
    config = pool_config(Database.REFERENCE, min_size=2, max_size=4, application_name="svc-ref")
    async with DatabasePool(Database.REFERENCE, db_env.reference_dsn, config):
        assert await count_connections(db_env.reference, "svc-ref") == 2
    assert await count_connections(db_env.reference, "svc-ref") == 0


async def test_stats_snapshot_has_stable_keys(db_env: Servers) -> None:
    async with DatabasePool(Database.MAIN, db_env.main_dsn, pool_config(min_size=1)) as pool:
        stats = pool.get_stats()
    assert set(stats) == {
        "database",
        "state",
        "min_size",
        "max_size",
        "size",
        "idle",
        "in_use",
        "waiting",
        "reserved",
        "acquired",
        "timeouts",
        "connections_opened",
        "connections_retired",
        "resets",
        "validations_failed",
    }
    assert stats["database"] == "main"
    assert stats["connections_opened"] == 1


async def test_close_terminates_a_leaked_connection(db_env: Servers) -> None:
    pool = DatabasePool(Database.MAIN, db_env.main_dsn, pool_config(min_size=1, max_size=1))
    await pool.open()
    await pool.acquire_connection()  # never released
    await pool.close(timeout=0.3)
    assert pool.state is PoolState.CLOSED

    async def gone() -> bool:
        return await count_connections(db_env.main, "wellwon_db:main") == 0

    await wait_until(gone, timeout=5)


async def test_close_wakes_waiters_at_once(db_env: Servers) -> None:
    pool = DatabasePool(
        Database.MAIN, db_env.main_dsn, pool_config(min_size=1, max_size=1, timeout=30)
    )
    await pool.open()
    held = await pool.acquire_connection()
    waiter = asyncio.create_task(pool.acquire_connection())

    async def queued() -> bool:
        return pool.get_stats()["waiting"] == 1

    await wait_until(queued)
    closing = asyncio.create_task(pool.close(timeout=5))
    with pytest.raises(PoolClosedError):
        await asyncio.wait_for(waiter, 2)  # not the 30 s acquire timeout
    await pool.release_connection(held)
    await closing
    assert pool.state is PoolState.CLOSED


async def test_waiters_are_served_first_come_first_served(db_env: Servers) -> None:
    pool = DatabasePool(Database.MAIN, db_env.main_dsn, pool_config(min_size=1, max_size=1))
    async with pool:
        held = await pool.acquire_connection()
        order: list[int] = []

        async def take(i: int) -> None:
            connection = await pool.acquire_connection()
            order.append(i)
            await pool.release_connection(connection)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(take(i)))

            async def queued(n: int = i + 1) -> bool:
                return pool.get_stats()["waiting"] == n

            await wait_until(queued)
        await pool.release_connection(held)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        assert pool.get_stats()["waiting"] == 0


async def _terminate_backends(server_dsn: str, application_name: str) -> int:
    connection = await asyncpg.connect(server_dsn, timeout=10)
    try:
        killed: int = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND backend_type = 'client backend'",
            application_name,
        )
        return killed
    finally:
        await connection.close()


async def test_idle_connections_above_min_size_close_after_max_inactive_lifetime(
    db_env: Servers,
) -> None:
    name = "test:inactive"
    config = pool_config(min_size=1, max_size=4, max_inactive_lifetime=0.2, application_name=name)
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        held = [await pool.acquire_connection() for _ in range(4)]
        for connection in held:
            await pool.release_connection(connection)
        assert await count_connections(db_env.main, name) == 4

        async def shrunk_to_min() -> bool:
            return await count_connections(db_env.main, name) == 1

        await wait_until(shrunk_to_min, timeout=5)
        stats = pool.get_stats()
        assert (stats["size"], stats["idle"], stats["reserved"]) == (1, 1, 0)
        assert stats["connections_retired"] == 3
        assert await pool.acquire_connection() is not None


async def test_min_size_is_restored_after_the_server_kills_connections(
    db_env: Servers,
) -> None:
    name = "test:refill"
    config = pool_config(min_size=3, max_size=5, application_name=name)
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        assert await count_connections(db_env.main, name) == 3
        assert await _terminate_backends(db_env.main.dsn(), name) == 3

        async def idle_ones_left() -> bool:
            # The termination listener takes dead idle connections out at once.
            return pool.get_stats()["connections_retired"] >= 3

        await wait_until(idle_ones_left, timeout=5)

        async def refilled() -> bool:
            stats = pool.get_stats()
            return stats["size"] == 3 and await count_connections(db_env.main, name) == 3

        await wait_until(refilled, timeout=5)
        connection = await pool.acquire_connection()
        assert await connection.fetchval("SELECT 1") == 1
        await pool.release_connection(connection)


async def test_a_connection_is_replaced_after_max_queries_leases(db_env: Servers) -> None:
    config = pool_config(min_size=1, max_size=1, max_queries=3)
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        pids = []
        for _ in range(7):
            connection = await pool.acquire_connection()
            pids.append(connection.get_server_pid())
            await pool.release_connection(connection)
        assert len(set(pids[0:3])) == 1
        assert len(set(pids[3:6])) == 1
        assert pids[0] != pids[3] != pids[6]
        assert pool.get_stats()["connections_retired"] == 2


async def test_each_waiter_gets_its_whole_acquire_timeout(db_env: Servers) -> None:
    """Waiters share one timer; a later waiter must not inherit an earlier deadline."""
    config = pool_config(min_size=1, max_size=1, timeout=0.6)
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        held = await pool.acquire_connection()
        first = asyncio.create_task(pool.acquire_connection())

        async def first_queued() -> bool:
            return pool.get_stats()["waiting"] == 1

        await wait_until(first_queued)
        # A gap between the two deadlines (the scenario, not a wait for state):
        await asyncio.sleep(0.3)
        started_second = time.monotonic()
        second = asyncio.create_task(pool.acquire_connection())
        with pytest.raises(PoolTimeoutError):
            await first
        assert not second.done(), "the second waiter expired at the first one's deadline"
        with pytest.raises(PoolTimeoutError):
            await second
        assert time.monotonic() - started_second >= 0.55
        await pool.release_connection(held)
        assert pool.get_stats()["waiting"] == 0
        assert pool.get_stats()["timeouts"] == 2


async def test_raw_connection_refuses_use_after_its_block(db_env: Servers) -> None:
    async with DatabasePool(Database.MAIN, db_env.main_dsn, pool_config()) as pool:
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT 1") == 1
        with pytest.raises(asyncpg.InterfaceError, match="released back to the pool"):
            await connection.fetchval("SELECT 1")
        assert "released" in repr(connection)


async def test_rolling_lifetimes_never_exceed_max_size_on_the_server(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An expired connection keeps its slot until it is closed: never max_size + 1."""
    from wellwon_db.pool._connector import PooledConnection

    polite_close = PooledConnection.close

    async def slow_close(self: PooledConnection, *, timeout: float | None = None) -> None:
        await asyncio.sleep(0.2)  # a slow link: the old session lingers on the server
        await polite_close(self, timeout=timeout)

    monkeypatch.setattr(PooledConnection, "close", slow_close)
    name = "test:rolling"
    config = pool_config(min_size=2, max_size=2, max_lifetime=0.3, application_name=name)
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        born = time.monotonic()

        async def both_expired() -> bool:
            return time.monotonic() - born > 0.35

        await wait_until(both_expired)
        seen: list[int] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                seen.append(await count_connections(db_env.main, name))

        sampler = asyncio.create_task(sample())
        held = await asyncio.gather(pool.acquire_connection(), pool.acquire_connection())

        async def replaced_and_closed() -> bool:
            return pool.get_stats()["connections_retired"] >= 2 and not pool.leases.releasing

        await wait_until(replaced_and_closed, timeout=5)
        stop.set()
        await sampler
        for connection in held:
            await pool.release_connection(connection)
    assert seen
    assert max(seen) <= 2, f"the server saw {max(seen)} of our connections (max_size 2)"


async def test_a_healthy_idle_connection_passes_its_check(db_env: Servers) -> None:
    """Idle validation pings; a live connection must pass and be kept, not replaced."""
    config = pool_config(min_size=1, max_size=1, validation_idle=0.05)
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        connection = await pool.acquire_connection()
        pid = connection.get_server_pid()
        await pool.release_connection(connection)
        released = time.monotonic()

        async def idle_long_enough() -> bool:
            return time.monotonic() - released > 0.1

        await wait_until(idle_long_enough)
        connection = await pool.acquire_connection()  # validated first
        assert connection.get_server_pid() == pid
        await pool.release_connection(connection)
        stats = pool.get_stats()
        assert stats["validations_failed"] == 0
        assert stats["connections_opened"] == 1
