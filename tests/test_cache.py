"""The reference-data cache on real servers: hits without I/O, invalidation in every process,
no stale set, a lost listener, serving through an outage, bounds, refusals."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import (
    REFERENCE_DB,
    Servers,
    install_otel_sdk,
    metric_points,
    run_cli,
    wait_until,
)
from wellwon_db import (
    CircuitOpenError,
    ConfigurationError,
    DatabaseContainer,
    DatabaseUnavailableError,
    ReferenceDB,
    database_lifespan,
)
from wellwon_db.client._cached import install_triggers
from wellwon_db.testing import PostgresServer, override_with_fakes

ROOT = Path(__file__).resolve().parent.parent
QUERY = "SELECT code FROM {table} WHERE country = $1"


async def _make_table(dsn: str, table: str, *, install: bool = True) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            f"CREATE TABLE {table} (country text PRIMARY KEY, code text NOT NULL)"
        )
        await connection.executemany(
            f"INSERT INTO {table} VALUES ($1, $2)", [("GB", "GB-HMRC"), ("FI", "FI-TULLI")]
        )
        if install:
            await install_triggers(connection, [table], "wellwon_db_invalidation")
    finally:
        await connection.close()


async def _update(dsn: str, table: str, code: str) -> float:
    """Change GB's code from another connection; the time the commit returned."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"UPDATE {table} SET code = $1 WHERE country = 'GB'", code)
        return time.time()
    finally:
        await connection.close()


@pytest.fixture
def table() -> str:
    return f"customs_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def reference(db_env: Servers, table: str) -> AsyncIterator[ReferenceDB]:
    await _make_table(db_env.reference_dsn, table)
    container = DatabaseContainer()
    async with database_lifespan(container):
        client = container.reference_db()
        await client.cached.install_invalidation(table)  # also waits until it listens
        yield client


async def test_hits_cost_no_io(reference: ReferenceDB, table: str) -> None:
    query = QUERY.format(table=table)
    assert await reference.cached.fetchval(query, "GB") == "GB-HMRC"
    acquired = reference.pool.get_stats()["acquired"]
    for _ in range(200):
        assert await reference.cached.fetchval(query, "GB") == "GB-HMRC"
        row = await reference.cached.fetchrow(query, "GB")
        assert row is not None
    rows = await reference.cached.fetch(query, "FI")
    rows.append(rows[0])  # the caller's list is a copy
    assert len(await reference.cached.fetch(query, "FI")) == 1
    assert reference.pool.get_stats()["acquired"] == acquired + 1  # only the FI miss
    assert reference.cached.cache.stats["hits"] >= 400


async def test_concurrent_misses_run_one_query(reference: ReferenceDB, table: str) -> None:
    query = f"SELECT code FROM {table} WHERE country = $1 AND pg_sleep(0.2) IS NOT NULL"
    acquired = reference.pool.get_stats()["acquired"]
    values = await asyncio.gather(*(reference.cached.fetchval(query, "GB") for _ in range(50)))
    assert values == ["GB-HMRC"] * 50
    assert reference.pool.get_stats()["acquired"] == acquired + 1


async def test_a_change_is_seen_at_once_and_a_slow_read_does_not_store_stale(
    reference: ReferenceDB, db_env: Servers, table: str
) -> None:
    query = QUERY.format(table=table)
    assert await reference.cached.fetchval(query, "GB") == "GB-HMRC"
    await _update(db_env.reference_dsn, table, "CHANGED")

    async def sees_the_change() -> bool:
        return await reference.cached.fetchval(query, "GB") == "CHANGED"

    await wait_until(sees_the_change, timeout=2)

    # A slow read that began before a change must not store its (old) result.
    slow = f"SELECT code FROM {table}, pg_sleep(0.6) WHERE country = $1"
    invalidations = reference.cached.cache.stats["invalidations"]
    reading = asyncio.create_task(reference.cached.fetchval(slow, "GB", tables=[table]))
    await asyncio.sleep(0.05)  # the read is on the server, past its snapshot
    await _update(db_env.reference_dsn, table, "NEWEST")

    async def notified() -> bool:
        return reference.cached.cache.stats["invalidations"] > invalidations

    await wait_until(notified, timeout=2)
    assert await reading == "CHANGED"  # what the read saw when it began
    assert await reference.cached.fetchval(slow, "GB", tables=[table]) == "NEWEST"


@pytest.mark.slow
def test_every_worker_process_sees_a_change(db_env: Servers, table: str, tmp_path: Path) -> None:
    """Two worker processes cache a value; a third connection changes it 15 times."""
    asyncio.run(_make_table(db_env.reference_dsn, table))
    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(
            f"""
            import asyncio, json, sys, time
            from wellwon_db import DatabaseContainer, database_lifespan

            async def main():
                container = DatabaseContainer()
                async with database_lifespan(container):
                    cached = container.reference_db().cached
                    await cached.install_invalidation({table!r})
                    query = "SELECT code FROM {table} WHERE country = $1"
                    last = await cached.fetchval(query, "GB")
                    print(json.dumps({{"ready": last}}), flush=True)
                    while True:
                        value = await cached.fetchval(query, "GB")
                        if value != last:
                            print(json.dumps({{"seen": value, "at": time.time()}}), flush=True)
                            last = value
                            if value == "v14":
                                return
                        await asyncio.sleep(0.001)

            asyncio.run(main())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POSTGRES_REFERENCE_DSN": db_env.reference_dsn}
    env["POSTGRES_DSN"] = db_env.main_dsn
    workers = [
        subprocess.Popen(
            [sys.executable, str(worker)], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )
        for _ in range(2)
    ]
    try:
        for process in workers:
            assert process.stdout is not None
            assert json.loads(process.stdout.readline()) == {"ready": "GB-HMRC"}
        committed = {}
        for n in range(15):
            committed[f"v{n}"] = asyncio.run(_update(db_env.reference_dsn, table, f"v{n}"))
            time.sleep(0.05)  # paces the updates only; nothing is awaited by this
        lags = []
        for process in workers:
            out, _ = process.communicate(timeout=30)
            seen = [json.loads(line) for line in out.splitlines() if line]
            assert [entry["seen"] for entry in seen][-1] == "v14"
            lags += [entry["at"] - committed[entry["seen"]] for entry in seen]
    finally:
        for process in workers:
            process.kill()
    assert statistics.median(lags) < 0.05, lags
    assert max(lags) < 1.0, lags


async def test_a_lost_listener_never_serves_stale(
    reference: ReferenceDB, db_env: Servers, table: str
) -> None:
    query = QUERY.format(table=table)
    assert await reference.cached.fetchval(query, "GB") == "GB-HMRC"
    listener = reference.cached.cache
    admin = await asyncpg.connect(db_env.reference.dsn(REFERENCE_DB))
    try:
        # Every client connection of this process to the reference database, listener included.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name LIKE 'wellwon_db:reference%' "
            "AND pid <> pg_backend_pid()",
            REFERENCE_DB,
        )
        await admin.execute(f"UPDATE {table} SET code = 'AFTER' WHERE country = 'GB'")
    finally:
        await admin.close()
    assert await reference.cached.fetchval(query, "GB") == "AFTER"
    assert await reference.cached.fetchval(query, "GB") == "AFTER"

    async def listening_again() -> bool:
        return listener.trusted

    await wait_until(listening_again, timeout=10)
    assert await reference.cached.fetchval(query, "GB") == "AFTER"


@pytest.mark.fault
async def test_warm_entries_answer_through_an_outage(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    dsn = postgres_server.dsn()
    await _make_table(dsn, table)
    monkeypatch.setenv("POSTGRES_DSN", dsn)
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", dsn)
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_CACHE_STALE_IF_ERROR_SEC", "30")
    query = QUERY.format(table=table)
    container = DatabaseContainer()
    async with database_lifespan(container):
        reference = container.reference_db()
        await reference.cached.install_invalidation(table)
        assert await reference.cached.fetchval(query, "GB") == "GB-HMRC"
        postgres_server.kill()
        errors: list[BaseException] = []
        cold_failures: list[float] = []
        for _ in range(30):
            try:
                assert await reference.cached.fetchval(query, "GB") == "GB-HMRC"
            except Exception as exc:
                errors.append(exc)
            started = time.perf_counter()
            with pytest.raises(DatabaseUnavailableError):
                await reference.cached.fetchval(query, "FI")
            cold_failures.append(time.perf_counter() - started)
        assert errors == []
        assert reference.breaker.state.value in ("open", "half_open")
        assert cold_failures[-1] < 0.01  # the breaker refuses at once
        with pytest.raises(CircuitOpenError):
            await reference.cached.fetchval(query, "FI")

        postgres_server.start()
        await _update(dsn, table, "RESTARTED")

        async def rebuilt() -> bool:
            try:
                return await reference.cached.fetchval(query, "GB") == "RESTARTED"
            except DatabaseUnavailableError:
                return False

        await wait_until(rebuilt, timeout=30)


async def test_memory_is_bounded(
    db_env: Servers, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _make_table(db_env.reference_dsn, table)
    monkeypatch.setenv("PG_REFERENCE_CACHE_MAX_ENTRIES", "5")
    container = DatabaseContainer()
    async with database_lifespan(container):
        cached = container.reference_db().cached
        await cached.install_invalidation(table)
        for n in range(12):
            await cached.fetchval(
                f"SELECT code || $2 FROM {table} WHERE country = $1", "GB", str(n)
            )
        assert len(cached.cache) == 5
        assert cached.cache.evictions == 7


async def test_refusals_name_the_fix(reference: ReferenceDB, db_env: Servers, table: str) -> None:
    with pytest.raises(ConfigurationError, match="cannot tell which tables"):
        await reference.cached.fetch("SELECT * FROM generate_series(1, 3)")
    with pytest.raises(ConfigurationError, match="cannot tell which tables"):
        await reference.cached.fetch(f"UPDATE {table} SET code = code RETURNING code")
    other = f"other_{uuid.uuid4().hex[:8]}"
    await _make_table(db_env.reference_dsn, other, install=False)
    with pytest.raises(ConfigurationError, match=f"install_invalidation\\('{other}'\\)"):
        await reference.cached.fetch(f"SELECT * FROM {table} JOIN {other} USING (country)")
    # A query reading only installed tables, with unhashable arguments: run uncached.
    assert (
        await reference.cached.fetchval(
            f"SELECT count(*) FROM {table} WHERE country = ANY($1)", ["GB", "FI"]
        )
        == 2
    )


async def test_the_cache_is_off_for_main_unless_enabled(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = DatabaseContainer()
    async with database_lifespan(container):
        with pytest.raises(ConfigurationError, match="PG_CACHE_ENABLED=true") as caught:
            await container.main_db().cached.fetchval("SELECT 1")
        assert caught.value.env_var == "PG_CACHE_ENABLED"
    monkeypatch.setenv("PG_CACHE_ENABLED", "true")
    container = DatabaseContainer()
    async with database_lifespan(container):
        assert container.main_db().cached.cache.trusted


async def test_concurrent_installs_do_not_collide(db_env: Servers, table: str) -> None:
    await _make_table(db_env.reference_dsn, table, install=False)
    connections = [await asyncpg.connect(db_env.reference_dsn) for _ in range(8)]
    try:
        results = await asyncio.gather(
            *(install_triggers(c, [table], "wellwon_db_invalidation") for c in connections)
        )
    finally:
        for connection in connections:
            await connection.close()
    assert all(table in installed for installed in results)


async def test_metrics_and_health_show_the_cache(reference: ReferenceDB, table: str) -> None:
    install_otel_sdk()
    query = QUERY.format(table=table)
    await reference.cached.fetchval(query, "GB")
    await reference.cached.fetchval(query, "GB")
    report = await _health_of(reference)
    assert report["listener"] == "listening"
    assert report["hits"] >= 1
    assert table in report["installed"]
    events = {
        point.attributes["wellwon.db.cache.event"]: point.value
        for point in metric_points()["wellwon.db.cache.events"]
        if point.attributes["wellwon.db.database"] == "reference"
    }
    assert events["hits"] >= 1
    assert events["misses"] >= 1


async def _health_of(reference: ReferenceDB) -> dict[str, object]:
    from wellwon_db import HealthChecker, PostgresConfig

    checker = HealthChecker(
        PostgresConfig.load(), {"reference": reference._slot}, {"reference": reference}
    )
    cache = (await checker.check()).databases["reference"].cache
    assert cache is not None
    return cache


def test_fakes_answer_cached_reads() -> None:
    container = DatabaseContainer()
    with override_with_fakes(container) as fakes:
        fakes.reference.script("SELECT code FROM dc_customs WHERE country = $1", "GB-HMRC")
        reference = container.reference_db()
        assert (
            asyncio.run(
                reference.cached.fetchval("SELECT code FROM dc_customs WHERE country = $1", "GB")
            )
            == "GB-HMRC"
        )
        asyncio.run(reference.cached.install_invalidation("dc_customs"))
        assert [call.method for call in fakes.reference.calls] == [
            "fetchval",
            "install_invalidation",
        ]


@pytest.mark.slow
def test_the_command_installs_and_prints(db_env: Servers, table: str, tmp_path: Path) -> None:
    asyncio.run(_make_table(db_env.reference_dsn, table, install=False))
    env: dict[str, str] = {"POSTGRES_REFERENCE_DSN": db_env.reference_dsn}
    printed = run_cli("cache", "install", "--print-sql", table, cwd=tmp_path, **env)
    assert printed.returncode == 0, printed.stderr
    assert f'ON "{table}" FOR EACH STATEMENT' in printed.stdout
    done = run_cli("cache", "install", "--database", "reference", table, cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert table in done.stdout
    missing = run_cli("cache", "install", "no_such_table", cwd=tmp_path, **env)
    assert missing.returncode == 70
    assert 'relation "no_such_table" does not exist' in missing.stderr
