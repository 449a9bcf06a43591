"""The breaker against a real crash: open within a second, fail fast, notice the return at once.

A reference server SIGKILLed under load (after 10 s of successful traffic,
so the rate window is full of successes): the consecutive-failure rule opens
the breaker within a second, open calls fail in well under a millisecond,
callers queued on the pool fail at once instead of waiting out their acquire
timeout, and the server check while open notices the restarted server
within about a probe interval, however long the outage and the open time.
The measured numbers are printed (``pytest -s``) and written up in
docs/resilience.md.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.helpers import wait_until
from tests.test_faults import Load
from wellwon_db import (
    BreakerState,
    CircuitOpenError,
    DatabaseContainer,
    DatabaseUnavailableError,
    ReferenceDB,
    get_postgres_config,
    start_databases,
    stop_databases,
)
from wellwon_db.testing import PostgresServer

pytestmark = pytest.mark.fault


@pytest.fixture
def servers_of_our_own() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    main, reference = PostgresServer("crash-main"), PostgresServer("crash-ref")
    try:
        yield main.start(), reference.start()
    finally:
        main.cleanup()
        reference.cleanup()


def _environment(
    monkeypatch: pytest.MonkeyPatch,
    servers: tuple[PostgresServer, PostgresServer],
    **breaker: str,
) -> None:
    main, reference = servers
    monkeypatch.setenv("POSTGRES_DSN", main.dsn())
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", reference.dsn())
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "2")
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "4")
    monkeypatch.setenv("PG_REFERENCE_POOL_CONNECT_TIMEOUT_SEC", "2")
    for name, value in breaker.items():
        monkeypatch.setenv(f"PG_REFERENCE_BREAKER_{name.upper()}", value)
    get_postgres_config.cache_clear()


@pytest.fixture
async def container() -> AsyncIterator[DatabaseContainer]:
    container = DatabaseContainer()
    yield container
    await stop_databases(container)


async def _opened(reference: ReferenceDB) -> None:
    async def is_open() -> bool:
        return reference.breaker.state is BreakerState.OPEN

    await wait_until(is_open, timeout=10, interval=0.005)


async def _answers(reference: ReferenceDB) -> bool:
    try:
        return await reference.fetchval("SELECT 1") == 1
    except DatabaseUnavailableError:
        return False


async def test_callers_queued_on_the_pool_fail_when_the_breaker_opens(
    servers_of_our_own: tuple[PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
    container: DatabaseContainer,
) -> None:
    _environment(monkeypatch, servers_of_our_own)
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_POOL_TIMEOUT_SEC", "30")
    get_postgres_config.cache_clear()
    await start_databases(container)
    reference = container.reference_db()
    async with reference.transaction():
        queued = [asyncio.create_task(reference.fetchval("SELECT 1")) for _ in range(3)]

        async def all_queued() -> bool:
            return reference.pool.get_stats()["waiting"] == 3

        await wait_until(all_queued)
        started = time.monotonic()
        reference.breaker.force_open()
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert time.monotonic() - started < 1.0  # not their 30 s acquire timeout
    assert all(isinstance(result, CircuitOpenError) for result in results), results
    assert reference.pool.get_stats()["waiting"] == 0
    reference.breaker.reset()
    assert await reference.fetchval("SELECT 1") == 1  # the pool serves on


async def test_a_returning_server_is_noticed_whatever_the_open_time(
    servers_of_our_own: tuple[PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
    container: DatabaseContainer,
) -> None:
    # An open time of a minute: without the check, the breaker would refuse for that long.
    _environment(
        monkeypatch,
        servers_of_our_own,
        open_sec="60",
        open_max_sec="60",
        probe_interval_sec="0.3",
    )
    await start_databases(container)
    reference = container.reference_db()
    reference_server = servers_of_our_own[1]
    reference_server.kill()
    for _ in range(10):
        if reference.breaker.state is BreakerState.OPEN:
            break
        await _answers(reference)
    await _opened(reference)
    assert (reference.breaker.snapshot()["retry_in_sec"] or 0) > 30
    reference_server.start()
    restarted = time.monotonic()

    async def back() -> bool:
        return await _answers(reference)

    await wait_until(back, timeout=5, interval=0.01)
    assert time.monotonic() - restarted < 2.0

    async def closed() -> bool:  # the half-open probes succeed
        await _answers(reference)
        return reference.breaker.state is BreakerState.CLOSED

    await wait_until(closed, timeout=5)


@pytest.mark.slow
async def test_a_crash_under_load_opens_fast_fails_fast_and_recovers_fast(
    servers_of_our_own: tuple[PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
    container: DatabaseContainer,
) -> None:
    """The issue's scenario, measured: defaults but a maximum open time shorter than the outage."""
    _environment(monkeypatch, servers_of_our_own, open_sec="1", open_max_sec="3")
    await start_databases(container)
    reference = container.reference_db()
    reference_server = servers_of_our_own[1]
    load = Load(reference).start(workers=4)
    try:
        # 10 s of successes first: the rate window is full of them.
        until = time.monotonic() + 10

        async def ten_seconds_of_traffic() -> bool:
            return time.monotonic() >= until

        await wait_until(ten_seconds_of_traffic, timeout=15, interval=0.1)
        assert load.ok > 500
        assert load.errors == []

        reference_server.kill()
        killed = time.monotonic()
        await _opened(reference)
        time_to_open = time.monotonic() - killed

        # Open: calls fail at once.
        latencies = []
        for _ in range(200):
            started = time.perf_counter()
            with pytest.raises(CircuitOpenError):
                await reference.fetchval("SELECT 1")
            latencies.append(time.perf_counter() - started)
        failing_p50 = statistics.median(latencies)
        failing_p99 = sorted(latencies)[int(len(latencies) * 0.99)]

        # An outage longer than the maximum open time (3 s), the load going on.
        outage_until = killed + 5

        async def outage_over() -> bool:
            return time.monotonic() >= outage_until

        await wait_until(outage_over, timeout=10, interval=0.1)
        reference_server.start()
        restarted = time.monotonic()
        before = load.ok

        async def serving_again() -> bool:
            return load.ok > before

        await wait_until(serving_again, timeout=10, interval=0.005)
        time_to_recover = time.monotonic() - restarted
    finally:
        await load.stop()
    print(
        f"\ntime to open {time_to_open * 1000:.0f} ms; failing call p50 "
        f"{failing_p50 * 1e6:.0f} µs, p99 {failing_p99 * 1e6:.0f} µs; time to recover "
        f"{time_to_recover * 1000:.0f} ms"
    )
    assert time_to_open < 1.0
    assert failing_p99 < 0.001
    assert time_to_recover < 2.5
