"""Fault injection against real servers: kill, restart, cancel, exhaust.

Each test gets two servers of its own, so it can stop one and keep the other.
Waits poll state with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from tests.helpers import wait_until
from wellwon_db import (
    BreakerState,
    CircuitOpenError,
    DatabaseContainer,
    DatabaseUnavailableError,
    MainDB,
    PoolTimeoutError,
    ReferenceDB,
    RetryConfig,
    get_postgres_config,
    start_databases,
    stop_databases,
)
from wellwon_db.testing import PostgresServer, TcpProxy

pytestmark = pytest.mark.fault

OPEN_SEC = 0.5


@dataclass
class Cluster:
    main: PostgresServer
    reference: PostgresServer
    container: DatabaseContainer = field(default_factory=DatabaseContainer)

    @property
    def main_db(self) -> MainDB:
        client: MainDB = self.container.main_db()
        return client

    @property
    def reference_db(self) -> ReferenceDB:
        client: ReferenceDB = self.container.reference_db()
        return client


@pytest.fixture
def own_servers() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    main, reference = PostgresServer("fault-main"), PostgresServer("fault-ref")
    try:
        yield main.start(), reference.start()
    finally:
        main.cleanup()
        reference.cleanup()


@pytest.fixture
def fault_env(
    own_servers: tuple[PostgresServer, PostgresServer], monkeypatch: pytest.MonkeyPatch
) -> Cluster:
    main, reference = own_servers
    monkeypatch.setenv("POSTGRES_DSN", main.dsn())
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", reference.dsn())
    for prefix in ("PG_", "PG_REFERENCE_"):
        monkeypatch.setenv(f"{prefix}POOL_MIN_SIZE", "2")
        monkeypatch.setenv(f"{prefix}POOL_MAX_SIZE", "5")
        monkeypatch.setenv(f"{prefix}POOL_TIMEOUT_SEC", "2")
        monkeypatch.setenv(f"{prefix}POOL_CONNECT_TIMEOUT_SEC", "2")
        monkeypatch.setenv(f"{prefix}BREAKER_MIN_CALLS", "5")
        monkeypatch.setenv(f"{prefix}BREAKER_OPEN_SEC", str(OPEN_SEC))
        monkeypatch.setenv(f"{prefix}BREAKER_OPEN_MAX_SEC", str(OPEN_SEC))
        monkeypatch.setenv(f"{prefix}BREAKER_HALF_OPEN_CALLS", "1")
        monkeypatch.setenv(f"{prefix}RETRY_BACKOFF_SEC", "0.01")
        monkeypatch.setenv(f"{prefix}RETRY_BACKOFF_MAX_SEC", "0.05")
    get_postgres_config.cache_clear()
    return Cluster(main, reference)


@pytest.fixture
async def cluster(fault_env: Cluster) -> AsyncIterator[Cluster]:
    await start_databases(fault_env.container)
    yield fault_env
    await stop_databases(fault_env.container)


@dataclass
class Load:
    """Concurrent queries against one client until stopped; counts outcomes."""

    client: MainDB | ReferenceDB
    ok: int = 0
    errors: list[BaseException] = field(default_factory=list)
    stopping: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, workers: int = 4) -> Load:
        self.tasks = [asyncio.create_task(self._work()) for _ in range(workers)]
        return self

    async def _work(self) -> None:
        while not self.stopping:
            try:
                await self.client.fetchval("SELECT 1")
                self.ok += 1
            except (DatabaseUnavailableError, TimeoutError) as exc:
                self.errors.append(exc)
                await asyncio.sleep(0.005)  # pace a failing worker, keep the loop responsive

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks)


async def test_kill_reference_db_verify_main_still_works(cluster: Cluster) -> None:
    """The seed's fault test: the reference server dies under load; main never notices."""
    main_load = Load(cluster.main_db).start()
    ref_load = Load(cluster.reference_db).start()
    try:

        async def both_serving() -> bool:
            return main_load.ok > 20 and ref_load.ok > 20

        await wait_until(both_serving)
        cluster.reference.kill()

        async def reference_open() -> bool:
            return cluster.reference_db.breaker.state is BreakerState.OPEN

        await wait_until(reference_open, timeout=10)

        # Open: reference calls fail at once, without waiting on any timeout.
        started = time.monotonic()
        with pytest.raises(CircuitOpenError):
            await cluster.reference_db.fetchval("SELECT 1")
        assert time.monotonic() - started < 0.05

        main_before = main_load.ok

        async def main_progresses() -> bool:
            return main_load.ok > main_before + 50

        await wait_until(main_progresses)

        restarted = time.monotonic()
        cluster.reference.start()

        async def reference_back() -> bool:
            try:
                return await cluster.reference_db.fetchval("SELECT 1") == 1
            except DatabaseUnavailableError:
                return False

        await wait_until(reference_back, timeout=10)
        # Healed within the open time plus one probe (and some scheduling slack).
        assert time.monotonic() - restarted < OPEN_SEC + 2.0
        ref_before = ref_load.ok

        async def reference_load_back() -> bool:
            return ref_load.ok > ref_before + 20

        await wait_until(reference_load_back)
    finally:
        await main_load.stop()
        await ref_load.stop()
    assert main_load.errors == []
    assert main_load.ok > 100
    assert any(isinstance(e, CircuitOpenError) for e in ref_load.errors)
    assert cluster.main_db.breaker.state is BreakerState.CLOSED


async def test_main_server_restart_heals_the_pool(cluster: Cluster) -> None:
    main = cluster.main_db
    old_pids = {await main.fetchval("SELECT pg_backend_pid()") for _ in range(5)}
    cluster.main.restart()

    async def serving() -> bool:
        try:
            return await main.fetchval("SELECT 1") == 1
        except DatabaseUnavailableError:
            return False

    await wait_until(serving, timeout=10)
    results = await asyncio.gather(*(main.fetchval("SELECT pg_backend_pid()") for _ in range(20)))
    assert not set(results) & old_pids, "a stale connection was handed out again"
    assert main.pool.get_stats()["in_use"] == 0
    assert await cluster.reference_db.fetchval("SELECT 1") == 1


async def test_terminated_connections_are_replaced(cluster: Cluster) -> None:
    main = cluster.main_db
    await asyncio.gather(*(main.fetchval("SELECT pg_sleep(0.05)") for _ in range(5)))
    assert main.pool.get_stats()["size"] == 5
    killed = await main.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'wellwon_db:main' AND pid <> pg_backend_pid()"
    )
    assert killed == 4

    # Capacity recovers: max_size concurrent queries run on fresh backends.
    async def full_capacity() -> bool:
        try:
            pids = await asyncio.gather(
                *(main.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)") for _ in range(5))
            )
        except DatabaseUnavailableError:
            return False
        return len(set(pids)) == 5

    await wait_until(full_capacity, timeout=10)
    assert main.pool.get_stats()["in_use"] == 0


async def test_five_hundred_cancelled_queries_leave_the_pool_clean(cluster: Cluster) -> None:
    main = cluster.main_db
    tasks = [
        asyncio.create_task(main.fetchval("SELECT pg_sleep(10) /* wellwon-cancel */"))
        for _ in range(500)
    ]
    tx_tasks = []

    async def in_transaction() -> None:
        async with main.transaction() as tx:
            await tx.execute("SET search_path = pg_catalog")
            await tx.fetchval("SELECT pg_sleep(10) /* wellwon-cancel */")

    tx_tasks = [asyncio.create_task(in_transaction()) for _ in range(20)]

    async def all_busy() -> bool:
        return main.pool.get_stats()["in_use"] == 5

    await wait_until(all_busy)
    for task in tasks + tx_tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, *tx_tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)

    async def settled() -> bool:
        stats = main.pool.get_stats()
        return stats["in_use"] == 0 and stats["waiting"] == 0

    await wait_until(settled)

    async def nothing_running_on_server() -> bool:
        running = await main.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE query LIKE '%wellwon-cancel%' AND state = 'active' "
            "AND pid <> pg_backend_pid()"
        )
        return bool(running == 0)

    await wait_until(nothing_running_on_server)
    # Every connection is usable and clean (no transaction, no leaked SET).
    rows = await asyncio.gather(
        *(
            main.fetchrow("SELECT current_setting('search_path') AS path, pg_sleep(0.02) AS _")
            for _ in range(5)
        )
    )
    assert all(row is not None and row["path"] == '"$user", public' for row in rows)
    assert main.breaker.state is BreakerState.CLOSED


async def test_pool_exhaustion_times_out_and_recovers(
    fault_env: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_POOL_TIMEOUT_SEC", "0.2")
    monkeypatch.setenv("PG_BREAKER_MIN_CALLS", "100")
    get_postgres_config.cache_clear()
    await start_databases(fault_env.container)
    try:
        main = fault_env.main_db
        release = asyncio.Event()

        async def hold() -> None:
            async with main.transaction():
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(5)]

        async def full() -> bool:
            return main.pool.get_stats()["in_use"] == 5

        await wait_until(full)
        with pytest.raises(PoolTimeoutError) as caught:
            await main.fetchval("SELECT 1")
        assert caught.value.max_size == 5
        assert "main" in str(caught.value)
        release.set()
        await asyncio.gather(*holders)
        assert await main.fetchval("SELECT 1") == 1
    finally:
        await stop_databases(fault_env.container)


async def test_start_while_reference_is_down_then_heal(
    fault_env: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_REFERENCE_STARTUP_REQUIRED", "false")
    get_postgres_config.cache_clear()
    fault_env.reference.stop()
    await start_databases(fault_env.container)
    try:
        assert await fault_env.main_db.fetchval("SELECT 1") == 1
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError):
            await fault_env.reference_db.fetchval("SELECT 1")
        assert time.monotonic() - started < 0.5  # fails fast, no connect timeout
        fault_env.reference.start()

        async def reference_serving() -> bool:
            try:
                return await fault_env.reference_db.fetchval("SELECT 1") == 1
            except DatabaseUnavailableError:
                return False

        await wait_until(reference_serving, timeout=15)
    finally:
        await stop_databases(fault_env.container)


async def test_required_database_down_fails_start_up(fault_env: Cluster) -> None:
    fault_env.reference.stop()
    with pytest.raises(DatabaseUnavailableError) as caught:
        await start_databases(fault_env.container)
    assert caught.value.database == "reference"
    assert not fault_env.container.main_pool.initialized


async def test_start_up_waits_for_a_booting_database(
    fault_env: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_REFERENCE_STARTUP_WAIT_SEC", "20")
    get_postgres_config.cache_clear()
    fault_env.reference.stop()
    loop = asyncio.get_running_loop()
    starting = asyncio.create_task(start_databases(fault_env.container))

    async def attempted_while_down() -> bool:
        return not starting.done()

    await wait_until(attempted_while_down)
    # The server boots while start-up is retrying.
    await loop.run_in_executor(None, fault_env.reference.start)
    await asyncio.wait_for(starting, 20)
    try:
        assert await fault_env.reference_db.fetchval("SELECT 1") == 1
    finally:
        await stop_databases(fault_env.container)


@pytest.fixture
async def proxied(
    fault_env: Cluster, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Cluster, TcpProxy]]:
    """The reference database reached through a proxy we can cut or silence."""
    async with TcpProxy(fault_env.reference.host, fault_env.reference.port) as proxy:
        monkeypatch.setenv("POSTGRES_REFERENCE_DSN", proxy.dsn("postgres"))
        monkeypatch.setenv("PG_REFERENCE_POOL_COMMAND_TIMEOUT_SEC", "0.5")
        monkeypatch.setenv("PG_REFERENCE_POOL_CONNECT_TIMEOUT_SEC", "0.5")
        get_postgres_config.cache_clear()
        await start_databases(fault_env.container)
        try:
            yield fault_env, proxy
        finally:
            proxy.restore()
            await stop_databases(fault_env.container)


async def test_silent_network_trips_the_breaker_in_bounded_time(
    proxied: tuple[Cluster, TcpProxy],
) -> None:
    cluster, proxy = proxied
    reference = cluster.reference_db
    assert await reference.fetchval("SELECT 1") == 1
    main_load = Load(cluster.main_db).start()
    ref_load = Load(reference).start(workers=8)
    try:
        proxy.go_deaf()
        started = time.monotonic()

        async def reference_open() -> bool:
            return reference.breaker.state is BreakerState.OPEN

        # Every call is bounded by the 0.5 s command or connect timeout; five
        # failures open the breaker, whatever the network does.
        await wait_until(reference_open, timeout=10)
        assert time.monotonic() - started < 5
        with pytest.raises(CircuitOpenError):
            await reference.fetchval("SELECT 1")
    finally:
        proxy.restore()
        await main_load.stop()
        await ref_load.stop()
    assert main_load.errors == []
    assert all(isinstance(e, DatabaseUnavailableError | TimeoutError) for e in ref_load.errors)


async def test_refused_connection_is_retried_until_the_link_returns(
    proxied: tuple[Cluster, TcpProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, proxy = proxied
    reference = cluster.reference_db
    proxy.cut()  # existing connections reset, new ones refused

    async def pool_saw_the_cut() -> bool:
        return reference.pool.get_stats()["size"] == 0

    await wait_until(pool_saw_the_cut)
    failures: list[float] = []
    reference._slot.retry.config = RetryConfig(
        attempts=50, backoff=0.02, backoff_max=0.05, deadline=10
    )
    reference.breaker.disable()  # this test is about the retry policy alone

    async def first_failures() -> bool:
        return len(failures) >= 1

    async def query() -> int:
        value: int = await reference.fetchval("SELECT 42")
        return value

    import logging

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            failures.append(time.monotonic())

    handler = Counter(level=logging.INFO)
    retry_logger = logging.getLogger("wellwon_db.retry")
    retry_logger.addHandler(handler)
    old_level = retry_logger.level
    retry_logger.setLevel(logging.INFO)
    try:
        task = asyncio.create_task(query())
        await wait_until(first_failures)
        proxy.restore()
        assert await asyncio.wait_for(task, 10) == 42
    finally:
        retry_logger.removeHandler(handler)
        retry_logger.setLevel(old_level)
    assert failures, "the call never failed, so it proves nothing about retries"


async def _silent_past_validation(proxy: TcpProxy, client: ReferenceDB) -> None:
    """Silence the link, then wait until the pool's idle connections are due a check."""
    proxy.go_deaf()
    deadline = time.monotonic() + client.pool.config.validation_idle

    async def idle_long_enough() -> bool:
        return time.monotonic() > deadline

    await wait_until(idle_long_enough)


async def test_idle_connections_are_validated_before_use(
    proxied: tuple[Cluster, TcpProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, proxy = proxied
    reference = cluster.reference_db
    assert await reference.fetchval("SELECT 1") == 1
    # The link goes silent: nothing tells the pool its idle connections are dead.
    await _silent_past_validation(proxy, reference)
    reference.breaker.disable()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        await reference.fetchval("SELECT 1")
    # The ping failed within its timeout; the statement itself was never sent.
    assert caught.value.may_have_run is False
    assert time.monotonic() - started < 5
    assert reference.pool.get_stats()["validations_failed"] >= 1
    proxy.restore()

    async def serving() -> bool:
        try:
            return await reference.fetchval("SELECT 1") == 1
        except DatabaseUnavailableError:
            return False

    await wait_until(serving)


async def test_cancelled_caller_on_a_silent_link_returns_at_once(
    fault_env: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with TcpProxy(fault_env.reference.host, fault_env.reference.port) as proxy:
        monkeypatch.setenv("POSTGRES_REFERENCE_DSN", proxy.dsn("postgres"))
        monkeypatch.setenv("PG_REFERENCE_POOL_COMMAND_TIMEOUT_SEC", "5")
        monkeypatch.setenv("PG_REFERENCE_POOL_CONNECT_TIMEOUT_SEC", "5")
        get_postgres_config.cache_clear()
        await start_databases(fault_env.container)
        try:
            reference = fault_env.reference_db
            assert await reference.fetchval("SELECT 1") == 1
            proxy.go_deaf()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reference.fetchval("SELECT 2"), 0.3)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    async with reference.transaction() as tx:
                        await tx.fetchval("SELECT 3")
            # Not the 5 s the connection needs to settle: the caller is free at once.
            assert time.monotonic() - started < 2.0
            proxy.restore()

            async def settled() -> bool:
                stats = reference.pool.get_stats()
                return stats["in_use"] == 0

            await wait_until(settled, timeout=15)
            assert await reference.fetchval("SELECT 4") == 4
        finally:
            proxy.restore()
            await stop_databases(fault_env.container)


async def test_no_reservation_leaks_through_dead_connections(
    proxied: tuple[Cluster, TcpProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation failures, replacements and timeouts hand every reservation back."""
    cluster, proxy = proxied
    reference = cluster.reference_db
    reference.breaker.disable()
    assert await reference.fetchval("SELECT 1") == 1
    await _silent_past_validation(proxy, reference)
    results = await asyncio.gather(
        *(reference.fetchval("SELECT 1") for _ in range(12)), return_exceptions=True
    )
    assert all(isinstance(r, DatabaseUnavailableError | TimeoutError) for r in results)
    proxy.restore()

    async def settled() -> bool:
        stats = reference.pool.get_stats()
        return stats["reserved"] == 0 and stats["waiting"] == 0

    await wait_until(settled, timeout=15)
    # Full capacity again: max_size concurrent statements, none waiting forever.
    max_size = reference.pool.config.max_size
    pids = await asyncio.wait_for(
        asyncio.gather(
            *(
                reference.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)")
                for _ in range(max_size)
            )
        ),
        10,
    )
    assert len(set(pids)) == max_size
    assert reference.pool.get_stats()["reserved"] == 0
