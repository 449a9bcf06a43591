"""Read replicas on real streaming replication: routing, lag, read-your-writes, failures.

The module starts a primary (``synchronous_commit = on``, as in production)
and two hot standbys made with ``pg_basebackup``; replay is paused and
resumed on a standby to make lag on demand. Tests that kill a server start
their own.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import pytest

from tests.helpers import install_otel_sdk, metric_points, wait_until
from wellwon_db import (
    BreakerState,
    DatabaseContainer,
    DatabaseUnavailableError,
    MainDB,
    MainReplicaDB,
    close_pools,
    database_lifespan,
    fetchval_for_db,
    read_after,
    write_token,
)
from wellwon_db.testing import PostgresServer, override_with_fakes

pytestmark = pytest.mark.slow

DB = "wellwon_repl"
_T = TypeVar("_T")

SCHEMA = "CREATE TABLE items (id bigserial PRIMARY KEY, batch text NOT NULL, n int NOT NULL)"


def _primary(name: str) -> PostgresServer:
    server = PostgresServer(name, settings={"synchronous_commit": "on"}).start()
    server.execute(f"CREATE DATABASE {DB}")
    server.execute(SCHEMA, database=DB)
    return server


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[PostgresServer, PostgresServer, PostgresServer]]:
    primary = _primary("repl-primary")
    first = PostgresServer.standby_of(primary, "repl-standby-1").start()
    second = PostgresServer.standby_of(primary, "repl-standby-2").start()
    try:
        yield primary, first, second
    finally:
        for server in (second, first, primary):
            server.cleanup()


def _env(
    monkeypatch: pytest.MonkeyPatch,
    primary: PostgresServer,
    *standbys: PostgresServer,
    max_lag: float = 60.0,
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", primary.dsn(DB))
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "4")
    if standbys:
        monkeypatch.setenv("POSTGRES_MAIN_REPLICA_DSN", " ".join(s.dsn(DB) for s in standbys))
    monkeypatch.setenv("PG_MAIN_REPLICA_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_MAIN_REPLICA_POOL_MAX_SIZE", "4")
    monkeypatch.setenv("PG_MAIN_REPLICA_LAG_CHECK_SEC", "0.1")
    monkeypatch.setenv("PG_MAIN_REPLICA_MAX_LAG_SEC", str(max_lag))


@pytest.fixture
async def dbs(
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[MainDB, MainReplicaDB]]:
    """Main and its replica client, with the first standby as the only replica."""
    primary, standby, _ = cluster
    _env(monkeypatch, primary, standby)
    container = DatabaseContainer()
    async with database_lifespan(container):
        yield container.main_db(), container.main_replica_db()


async def _in_fresh_context(coro: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``coro()`` in a task with an empty context: one that wrote nothing."""
    return await asyncio.create_task(coro(), context=contextvars.Context())


async def _in_recovery(replica: MainReplicaDB) -> bool:
    answered: bool = await replica.fetchval("SELECT pg_is_in_recovery()")
    return answered


# -- 1. routing -------------------------------------------------------------------------


async def test_reads_go_to_a_replica_that_keeps_up(
    dbs: tuple[MainDB, MainReplicaDB],
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
) -> None:
    _, replica = dbs
    standby = cluster[1]
    row = await replica.fetchrow("SELECT pg_is_in_recovery(), inet_server_port()")
    assert row is not None
    assert (row[0], row[1]) == (True, standby.port)
    async with replica.transaction() as tx:
        assert await tx.fetchval("SELECT pg_is_in_recovery()") is True
        assert await tx.fetchval("SHOW transaction_read_only") == "on"
    assert not hasattr(replica, "execute")
    assert not hasattr(replica, "executemany")


async def test_replica_sessions_are_read_only(
    dbs: tuple[MainDB, MainReplicaDB],
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
) -> None:
    """default_transaction_read_only is the session's own (a standby's recovery would refuse
    writes anyway, but not a promoted one or a replica that is no standby): a stray write
    through the replica client fails at the server."""
    _, replica = dbs
    row = await replica.fetchrow(
        "SELECT current_setting('default_transaction_read_only'), inet_server_port()"
    )
    assert row is not None
    assert (row[0], row[1]) == ("on", cluster[1].port)
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await replica.fetchval("INSERT INTO items (batch, n) VALUES ('stray', 1) RETURNING id")
    main, _ = dbs
    assert await main.fetchval("SHOW default_transaction_read_only") == "off"


async def test_reads_are_spread_over_several_replicas(
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary, first, second = cluster
    _env(monkeypatch, primary, first, second)
    container = DatabaseContainer()
    async with database_lifespan(container):
        replica = container.main_replica_db()
        ports = {await replica.fetchval("SELECT inet_server_port()") for _ in range(10)}
    assert ports == {first.port, second.port}


async def test_no_replica_configured_reads_from_the_primary(
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary = cluster[0]
    _env(monkeypatch, primary)
    container = DatabaseContainer()
    async with database_lifespan(container):
        replica = container.main_replica_db()
        assert await _in_recovery(replica) is False
        assert await replica.fetchval("SELECT inet_server_port()") == primary.port
        report = await container.health().check()
    assert report.unconfigured["main_replica"] == "POSTGRES_MAIN_REPLICA_DSN"
    assert "main_replica" not in report.databases


# -- 3. lag -----------------------------------------------------------------------------


async def test_a_lagging_replica_is_skipped_and_taken_back(
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary, standby, _ = cluster
    _env(monkeypatch, primary, standby, max_lag=1.0)
    container = DatabaseContainer()
    async with database_lifespan(container):
        main, replica = container.main_db(), container.main_replica_db()
        assert await _in_recovery(replica)
        await standby.apause_replay()
        try:
            await main.execute("INSERT INTO items (batch, n) VALUES ('lag', 1)")
            wrote_at = time.monotonic()

            async def skipped() -> bool:
                return not await _in_fresh_context(lambda: _in_recovery(replica))

            await wait_until(skipped, timeout=10)
            # Skipped once past the limit (1 s), within a few measurements of it.
            assert 1.0 <= time.monotonic() - wrote_at < 4.0
            (endpoint,) = replica.replicas.endpoints
            assert endpoint.state == "lagging"
            assert endpoint.lag_bytes is not None
            assert endpoint.lag_bytes > 0
        finally:
            await standby.aresume_replay()

        async def taken_back() -> bool:
            return await _in_fresh_context(lambda: _in_recovery(replica))

        await wait_until(taken_back, timeout=10)
        assert replica.replicas.endpoints[0].state == "ok"


async def test_an_idle_caught_up_replica_is_not_lagging(
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``now() - pg_last_xact_replay_timestamp()`` grows on an idle replica; WAL lag does not."""
    primary, standby, _ = cluster
    _env(monkeypatch, primary, standby, max_lag=0.3)
    container = DatabaseContainer()
    async with database_lifespan(container):
        replica = container.main_replica_db()
        connection = await asyncpg.connect(standby.dsn(DB))
        try:

            async def idle_longer_than_the_limit() -> bool:
                age: float | None = await connection.fetchval(
                    "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
                )
                return age is not None and age > 1.0

            await wait_until(idle_longer_than_the_limit, timeout=15)
        finally:
            await connection.close()
        (endpoint,) = replica.replicas.endpoints
        assert (endpoint.state, endpoint.lag_sec, endpoint.lag_bytes) == ("ok", 0.0, 0)
        assert await _in_recovery(replica)


# -- 4. read-your-writes ---------------------------------------------------------------


async def test_read_your_writes_while_replay_is_paused(
    dbs: tuple[MainDB, MainReplicaDB],
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
) -> None:
    main, replica = dbs
    standby = cluster[1]
    batch = uuid.uuid4().hex
    await standby.apause_replay()
    try:
        for n in range(30):
            await main.execute("INSERT INTO items (batch, n) VALUES ($1, $2)", batch, n)
            seen = await replica.fetchval(
                "SELECT count(*) FROM items WHERE batch = $1 AND n = $2", batch, n
            )
            assert seen == 1, f"write {n} not seen by the next read in its context"

        async def elsewhere() -> tuple[bool, int]:
            row = await replica.fetchrow(
                "SELECT pg_is_in_recovery(), count(*) FROM items WHERE batch = $1", batch
            )
            assert row is not None
            return row[0], row[1]

        # A context that wrote nothing keeps reading the paused standby, without the rows.
        assert await _in_fresh_context(elsewhere) == (True, 0)
        # A transaction that wrote counts too.
        async with main.transaction() as tx:
            await tx.execute("INSERT INTO items (batch, n) VALUES ($1, 100)", batch)
        assert (
            await replica.fetchval(
                "SELECT count(*) FROM items WHERE batch = $1 AND n = 100", batch
            )
            == 1
        )
    finally:
        await standby.aresume_replay()


async def test_a_token_carries_the_position_across_contexts(
    dbs: tuple[MainDB, MainReplicaDB],
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
) -> None:
    main, replica = dbs
    standby = cluster[1]
    batch = uuid.uuid4().hex
    await standby.apause_replay()
    try:

        async def request_that_writes() -> str | None:
            await main.execute("INSERT INTO items (batch, n) VALUES ($1, 1)", batch)
            return write_token()

        token = await _in_fresh_context(request_that_writes)
        assert token is not None
        assert token.startswith("main:")

        async def next_request(with_token: bool) -> int:
            query = "SELECT count(*) FROM items WHERE batch = $1"
            if with_token:
                with read_after(token):
                    count: int = await replica.fetchval(query, batch)
                    return count
            return await replica.fetchval(query, batch)

        assert await _in_fresh_context(lambda: next_request(True)) == 1
        assert await _in_fresh_context(lambda: next_request(False)) == 0
    finally:
        await standby.aresume_replay()


async def test_writes_that_never_happened_set_no_position(
    dbs: tuple[MainDB, MainReplicaDB],
) -> None:
    main, _ = dbs

    async def rolled_back() -> str | None:
        with pytest.raises(RuntimeError):
            async with main.transaction() as tx:
                await tx.execute("INSERT INTO items (batch, n) VALUES ('rollback', 1)")
                raise RuntimeError("roll back")
        return write_token()

    async def read_only() -> str | None:
        async with main.transaction(readonly=True) as tx:
            await tx.fetchval("SELECT count(*) FROM items")
        await main.fetch("SELECT * FROM items LIMIT 1")
        return write_token()

    assert await _in_fresh_context(rolled_back) is None
    assert await _in_fresh_context(read_only) is None


# -- 5. failures ------------------------------------------------------------------------


async def test_a_killed_replica_costs_no_errors_and_is_used_again(
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary = cluster[0]
    standby = PostgresServer.standby_of(primary, "repl-doomed").start()
    try:
        _env(monkeypatch, primary, standby)
        container = DatabaseContainer()
        async with database_lifespan(container):
            replica = container.main_replica_db()
            answers: list[bool] = []
            errors: list[BaseException] = []
            stop = asyncio.Event()

            async def reader() -> None:
                while not stop.is_set():
                    try:
                        answers.append(await _in_fresh_context(lambda: _in_recovery(replica)))
                    except Exception as exc:
                        errors.append(exc)
                    await asyncio.sleep(0.005)

            readers = [asyncio.create_task(reader()) for _ in range(4)]
            try:
                await wait_until(lambda: _true(len(answers) > 20))
                standby.kill()
                before = len(answers)
                await wait_until(lambda: _true(answers[before:].count(False) > 20))
            finally:
                stop.set()
                await asyncio.gather(*readers)
            assert errors == []
            assert replica.replicas.endpoints[0].state == "down"
            # Its breaker open too (as when reads failed on it): reads skip the
            # replica, so only the lag measurement can find it back.
            breaker = replica.replicas.endpoints[0].slot.breaker
            for _ in range(20):
                if breaker.state is BreakerState.OPEN:
                    break
                breaker.record_failure(0.0)
            assert breaker.state is BreakerState.OPEN

            standby.start()

            async def used_again() -> bool:
                return await _in_fresh_context(lambda: _in_recovery(replica))

            await wait_until(used_again, timeout=20)
    finally:
        standby.cleanup()


async def test_primary_and_replica_down_is_the_usual_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary = _primary("repl-lonely")
    standby = PostgresServer.standby_of(primary, "repl-lonely-standby").start()
    try:
        _env(monkeypatch, primary, standby)
        container = DatabaseContainer()
        async with database_lifespan(container):
            replica = container.main_replica_db()
            assert await _in_recovery(replica)
            standby.kill()
            primary.kill()
            with pytest.raises(DatabaseUnavailableError):
                await replica.fetchval("SELECT 1")
    finally:
        standby.cleanup()
        primary.cleanup()


# -- 6, 7. observable, faked, seed API --------------------------------------------------


async def test_lag_and_routing_are_measured(
    dbs: tuple[MainDB, MainReplicaDB],
) -> None:
    install_otel_sdk()
    main, replica = dbs
    await replica.fetchval("SELECT 1")  # to the replica

    async def after_a_write() -> None:
        await main.execute("INSERT INTO items (batch, n) VALUES ('metrics', 1)")
        await replica.fetchval("SELECT 1")

    await after_a_write()
    points = metric_points()
    reads = {
        (p.attributes["wellwon.db.replica.target"], p.attributes["wellwon.db.replica.reason"])
        for p in points["wellwon.db.replica.reads"]
        if p.attributes["wellwon.db.database"] == "main_replica"
    }
    assert ("replica", "replica") in reads
    lags = [
        p
        for p in points["wellwon.db.replica.lag"]
        if p.attributes["wellwon.db.database"] == "main_replica"
    ]
    assert lags
    assert all(p.value >= 0 for p in lags)
    assert points["wellwon.db.replica.lag_bytes"]


async def test_health_shows_each_replica(dbs: tuple[MainDB, MainReplicaDB]) -> None:
    _, replica = dbs
    container_health = replica.replicas
    assert container_health.usable
    from wellwon_db import HealthChecker, PostgresConfig

    checker = HealthChecker(
        PostgresConfig.load(),
        {"main_replica": replica.replicas},
        {"main_replica": replica},
    )
    report = await checker.check()
    health = report.databases["main_replica"]
    assert health.status == "ok"
    assert health.replicas is not None
    (entry,) = health.replicas
    assert entry["state"] == "ok"
    assert entry["lag_sec"] == 0.0 or entry["lag_sec"] < 60
    assert entry["pool"]["max_size"] == 4


def test_fakes_cover_the_replica_clients() -> None:
    container = DatabaseContainer()
    with override_with_fakes(container) as fakes:
        fakes["main_replica"].script("SELECT name FROM users WHERE id = $1", [{"name": "ann"}])
        replica = container.main_replica_db()
        assert isinstance(replica, MainReplicaDB)
        assert asyncio.run(replica.fetchval("SELECT name FROM users WHERE id = $1", 7)) == "ann"
        assert fakes.main_replica.calls[0].args == (7,)


async def test_seed_api_routes_to_the_replicas(
    cluster: tuple[PostgresServer, PostgresServer, PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary, standby, _ = cluster
    _env(monkeypatch, primary, standby)
    try:
        assert await fetchval_for_db("SELECT pg_is_in_recovery()", database="main_replica")
        assert not await fetchval_for_db("SELECT pg_is_in_recovery()", database="main")
        from wellwon_db import ConfigurationError, execute_for_db

        with pytest.raises(ConfigurationError, match="read-only"):
            await execute_for_db("SELECT 1", database="main_replica")
    finally:
        await close_pools()


async def _true(value: bool) -> bool:
    return value
