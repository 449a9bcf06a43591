"""Multi-worker concerns on real servers: fork safety, capacity check, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator

import pytest

from tests.helpers import MAIN_DB, Servers, count_connections, wait_until
from wellwon_db import (
    ConfigurationError,
    DatabaseContainer,
    PoolClosedError,
    close_pools,
    fetchval_for_db,
    get_postgres_config,
    init_pool_for_db,
    start_databases,
    stop_databases,
)
from wellwon_db.testing import PostgresServer

pytestmark = [
    pytest.mark.slow,
    # Python 3.12+ warns on fork() in a threaded process; the child here runs no threads.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def _in_child(check: object) -> int:
    """Fork; run ``check()`` (a coroutine function) on a fresh loop in the child; its exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            loop = asyncio.new_event_loop()
            code = loop.run_until_complete(check())  # type: ignore[operator]
            loop.close()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_forked_child_refuses_parent_pool_then_reopens(
    db_env: Servers, loop: asyncio.AbstractEventLoop
) -> None:
    container = DatabaseContainer()
    loop.run_until_complete(start_databases(container))
    main = container.main_db()
    parent_pid = loop.run_until_complete(main.fetchval("SELECT pg_backend_pid()"))

    async def child() -> int:
        try:
            await main.fetchval("SELECT 1")
        except PoolClosedError as exc:
            if "forked" not in str(exc):
                return 3
        else:
            return 2  # used the parent's connection: the bug this guards against
        await stop_databases(container)  # abandons, does not close the parent's sessions
        await start_databases(container)
        try:
            ok = await main.fetchval("SELECT current_database()") == MAIN_DB
            child_pid = await main.fetchval("SELECT pg_backend_pid()")
        finally:
            await stop_databases(container)
        return 0 if ok and child_pid != parent_pid else 4

    try:
        assert _in_child(child) == 0
        # The parent's pool and sessions are untouched by the child.
        assert loop.run_until_complete(main.fetchval("SELECT pg_backend_pid()")) == parent_pid
        assert loop.run_until_complete(main.fetchval("SELECT 1")) == 1
    finally:
        loop.run_until_complete(stop_databases(container))


def test_seed_functions_reopen_transparently_in_a_forked_child(
    db_env: Servers, loop: asyncio.AbstractEventLoop
) -> None:
    parent_pid = loop.run_until_complete(fetchval_for_db("SELECT pg_backend_pid()"))

    async def child() -> int:
        pid = await fetchval_for_db("SELECT pg_backend_pid()")
        await close_pools()
        return 0 if pid != parent_pid else 5

    try:
        assert _in_child(child) == 0
        assert loop.run_until_complete(fetchval_for_db("SELECT pg_backend_pid()")) == parent_pid
    finally:
        loop.run_until_complete(close_pools())


def test_init_pool_for_db_gives_a_forked_child_its_own_pool(
    db_env: Servers, loop: asyncio.AbstractEventLoop
) -> None:
    """Regression: the child got the parent's pool, which raised PoolClosedError on use."""
    parent_pool = loop.run_until_complete(init_pool_for_db())
    parent_pid = loop.run_until_complete(fetchval_for_db("SELECT pg_backend_pid()"))

    async def child() -> int:
        pool = await init_pool_for_db()
        if pool is parent_pool or not pool.opened_in_this_process:
            return 6
        async with pool.acquire() as connection:
            pid = await connection.fetchval("SELECT pg_backend_pid()")
        await close_pools()
        return 0 if pid != parent_pid else 5

    try:
        assert _in_child(child) == 0
        assert loop.run_until_complete(init_pool_for_db()) is parent_pool
        assert loop.run_until_complete(fetchval_for_db("SELECT pg_backend_pid()")) == parent_pid
    finally:
        loop.run_until_complete(close_pools())


@pytest.fixture
def small_server() -> Iterator[PostgresServer]:
    server = PostgresServer("small", settings={"max_connections": "20"})
    try:
        yield server.start()
    finally:
        server.cleanup()


async def test_capacity_check_warns_or_refuses(
    small_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", small_server.dsn())
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", small_server.dsn())
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "5")
    monkeypatch.setenv("PG_POOL_WORKERS", "8")  # 40 connections wanted, 17 free
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "2")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    with caplog.at_level(logging.WARNING, logger="wellwon_db.pool"):
        await start_databases(container)
    await stop_databases(container)
    (warning,) = [r for r in caplog.records if "cannot hold" in r.getMessage()]
    message = warning.getMessage()
    assert "8 workers x max_size 5 = 40" in message
    assert "PG_POOL_BUDGET" in message

    monkeypatch.setenv("PG_POOL_CAPACITY_CHECK", "refuse")
    get_postgres_config.cache_clear()
    with pytest.raises(ConfigurationError, match="cannot hold"):
        await start_databases(container)
    assert await count_connections(small_server, "wellwon_db:main") == 0

    # A budget that fits: 8 workers share 16 connections, 2 each.
    monkeypatch.setenv("PG_POOL_BUDGET", "16")
    get_postgres_config.cache_clear()
    await start_databases(container)
    try:
        assert container.main_db().pool.config.max_size == 2
    finally:
        await stop_databases(container)


async def test_drain_terminates_stragglers_and_names_them(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PG_POOL_DRAIN_TIMEOUT_SEC", "0.3")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    main = container.main_db()
    finished = asyncio.Event()

    async def well_behaved() -> None:
        async with main.transaction() as tx:
            await tx.fetchval("SELECT pg_sleep(0.1)")
        finished.set()

    async def leaky() -> None:
        connection = await main.pool.acquire_connection()  # never released
        await connection.fetchval("SELECT 1")
        await asyncio.Event().wait()

    polite = asyncio.create_task(well_behaved())
    leak = asyncio.create_task(leaky(), name="leaky-report-job")

    async def both_holding() -> bool:
        return main.pool.get_stats()["in_use"] == 2

    await wait_until(both_holding)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="wellwon_db.pool"):
        await stop_databases(container)
    assert time.monotonic() - started < 3  # never hangs on the leak
    assert finished.is_set()  # in-flight work was allowed to finish
    await polite
    (warning,) = [r for r in caplog.records if "did not drain" in r.getMessage()]
    assert "leaky-report-job" in warning.getMessage()
    leak.cancel()

    async def gone() -> bool:
        return await count_connections(db_env.main, "wellwon_db:main") == 0

    await wait_until(gone)


def test_config_command_shows_the_per_worker_numbers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from wellwon_db.cli._cli import main

    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    monkeypatch.setenv("PG_POOL_BUDGET", "40")
    monkeypatch.setenv("PG_REFERENCE_POOL_PGBOUNCER", "true")
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://app:pw@db-main/app")
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", "postgresql://ref:pw@pgbouncer/ref")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "per worker" in line]
    assert "budget 40" in lines[0]
    assert "max size per worker 10" in lines[0]
    assert "max connections all workers 40" in lines[0]
    assert "statement cache size 0" in lines[1]  # PgBouncer mode
