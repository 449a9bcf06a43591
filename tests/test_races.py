"""Races against the pool lifecycle and cancellation at each await of a lease.

Each test reproduces a bug once found in review: close() racing open() or
background releases, cancellation during release or COMMIT, dead connections
on a silent link.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from tests.helpers import Servers, count_connections, pool_config, wait_until
from wellwon_db import (
    Database,
    DatabasePool,
    PoolClosedError,
    PoolState,
)
from wellwon_db.testing import TcpProxy


async def test_close_drains_work_that_finishes_in_time(
    db_env: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    pool = DatabasePool(Database.MAIN, db_env.main_dsn, pool_config(min_size=1, max_size=2))
    await pool.open()
    connection = await pool.acquire_connection()

    async def work() -> None:
        await connection.fetchval("SELECT pg_sleep(0.2)")
        await pool.release_connection(connection)

    task = asyncio.create_task(work())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="wellwon_db.pool"):
        await pool.close(timeout=3)
    took = time.monotonic() - started
    await task
    assert "did not drain" not in caplog.text
    assert took < 1.5, f"close() took {took:.1f}s for work that finished after 0.2s"


async def test_close_while_opening_leaves_the_pool_closed(db_env: Servers) -> None:
    pool = DatabasePool(
        Database.MAIN,
        db_env.main_dsn,
        pool_config(min_size=3, max_size=3, application_name="review:close-opening"),
    )
    opening = asyncio.create_task(pool.open())
    await asyncio.sleep(0)  # open() is now connecting
    assert pool.state is PoolState.OPENING
    await pool.close()
    assert pool.state is PoolState.CLOSED
    try:
        with pytest.raises(PoolClosedError, match="closed while it was opening"):
            await opening
    finally:
        state = pool.state
    assert state is PoolState.CLOSED, f"close()d pool came back as {state}"

    async def none_left() -> bool:
        return await count_connections(db_env.main, "review:close-opening") == 0

    await wait_until(none_left)


async def test_cancel_during_release_frees_the_half_open_probe(
    container: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wellwon_db import BreakerConfig, BreakerState, CircuitOpenError

    client = container.main_db()  # type: ignore[attr-defined]
    breaker = client.breaker
    breaker.reconfigure(
        BreakerConfig(min_calls=1, failure_rate=50, open_sec=0.05, half_open_calls=1)
    )
    breaker.allow()
    breaker.record_failure(0.0)  # trip
    assert breaker.state is BreakerState.OPEN
    await asyncio.sleep(0.1)  # open time elapsed: the next call is the probe

    # Model a slow reset round trip (slow network) so the cancellation lands
    # deterministically while the successful call's connection is released.
    pool = client.pool
    resetting = asyncio.Event()
    real_reset = pool._connector.reset

    async def slow_reset(connection: object) -> None:
        resetting.set()
        await asyncio.sleep(1)
        await real_reset(connection)

    monkeypatch.setattr(pool._connector, "reset", slow_reset)
    probe = asyncio.create_task(client.execute("SET application_name = 'probe'"))
    await asyncio.wait_for(resetting.wait(), 5)  # the statement succeeded; release runs
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    monkeypatch.undo()

    # The probe ended without a verdict: its slot must be free again.
    try:
        assert await client.fetchval("SELECT 1") == 1
    except CircuitOpenError:
        pytest.fail(
            f"half-open probe slot leaked: breaker stuck in {breaker.state} "
            f"(snapshot {breaker.snapshot()})"
        )


async def _one_connection_pool(proxy: TcpProxy, **overrides: Any) -> DatabasePool:
    """An open one-connection pool behind ``proxy``: short connect timeout, no idle check."""
    settings: dict[str, Any] = {
        "min_size": 1,
        "max_size": 1,
        "connect_timeout": 0.5,
        "command_timeout": 6.0,
        "validation_idle": 0,
        "capacity_check": "off",
        **overrides,
    }
    pool = DatabasePool(Database.MAIN, proxy.dsn("postgres"), pool_config(**settings))
    await pool.open()
    return pool


async def test_dead_idle_connection_on_a_silent_link_is_bounded_by_the_acquire_timeout(
    db_env: Servers,
) -> None:
    from wellwon_db import DatabaseUnavailableError

    async with TcpProxy(db_env.main.host, db_env.main.port) as proxy:
        pool = await _one_connection_pool(proxy, timeout=1.0, validation_idle=0.1)
        try:
            await asyncio.sleep(0.3)  # idle past validation_idle
            proxy.go_deaf()
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailableError):
                await pool.acquire_connection()
            took = time.monotonic() - started
        finally:
            proxy.cut()
            await pool.close(timeout=1)
    assert took < 3, f"acquire took {took:.1f}s (timeout 1s, connect timeout 0.5s)"


async def test_caller_cancelled_during_commit_on_a_silent_link_returns_at_once(
    db_env: Servers,
) -> None:
    from wellwon_db.client._slot import PoolSlot
    from wellwon_db.client._transaction import Transaction

    async with TcpProxy(db_env.main.host, db_env.main.port) as proxy:
        pool = await _one_connection_pool(proxy)
        slot = PoolSlot(Database.MAIN)
        slot.pool = pool
        in_commit = asyncio.Event()

        async def work() -> None:
            async with Transaction(slot, None, False, False) as tx:
                await tx.fetchval("SELECT 1")
                proxy.go_deaf()  # the link dies silently: COMMIT gets no answer
                in_commit.set()

        try:
            task = asyncio.create_task(work())
            await asyncio.wait_for(in_commit.wait(), 5)
            await asyncio.sleep(0.2)  # COMMIT is in flight
            task.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await task
            took = time.monotonic() - started
        finally:
            proxy.cut()
            await pool.close(timeout=1)
    assert took < 1, f"cancelled caller waited {took:.1f}s in Transaction.__aexit__"


async def test_close_with_zero_drain_timeout_does_not_wait_for_background_releases(
    db_env: Servers,
) -> None:
    from wellwon_db.client._guarded import run_guarded
    from wellwon_db.client._slot import PoolSlot
    from wellwon_db.client._transaction import fetchrow_call

    async with TcpProxy(db_env.main.host, db_env.main.port) as proxy:
        pool = await _one_connection_pool(proxy)
        slot = PoolSlot(Database.MAIN)
        slot.pool = pool
        try:
            proxy.go_deaf()
            query = asyncio.create_task(
                run_guarded(slot, fetchrow_call, "SELECT 1", (), None, False)
            )
            await asyncio.sleep(0.2)
            query.cancel()  # its release now settles in the background
            with pytest.raises(asyncio.CancelledError):
                await query
            started = time.monotonic()
            await pool.close(timeout=0)
            took = time.monotonic() - started
        finally:
            proxy.cut()
    assert took < 1, f"close(timeout=0) waited {took:.1f}s for a background release"
