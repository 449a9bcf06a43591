"""Traces, metrics and logs from real queries, read back through the SDK's in-memory exporters.

The OpenTelemetry providers are process-global and can be set once; this
module sets them for the rest of the session (other tests then run with an
SDK recording, which they do not notice).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.helpers import (
    MAIN_DB,
    OTEL_EXPORTER,
    OTEL_READER,
    SECRET,
    Servers,
    install_otel_sdk,
    wait_until,
)
from wellwon_db import (
    CircuitOpenError,
    DatabaseContainer,
    MainDB,
    PoolTimeoutError,
    ReferenceDB,
    get_postgres_config,
    start_databases,
    stop_databases,
)

_exporter, _reader = OTEL_EXPORTER, OTEL_READER


@pytest.fixture(scope="module")
def sdk() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    return install_otel_sdk()


@pytest.fixture
async def dbs(
    sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
    db_env: Servers,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[MainDB, ReferenceDB]]:
    monkeypatch.setenv("PG_BREAKER_MIN_CALLS", "2")
    monkeypatch.setenv("PG_LOG_SLOW_QUERY_SEC", "0.2")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    sdk[0].clear()
    yield container.main_db(), container.reference_db()
    await stop_databases(container)


def _spans(name_prefix: str = "") -> list[ReadableSpan]:
    return [s for s in _exporter.get_finished_spans() if s.name.startswith(name_prefix)]


def _metrics() -> dict[str, list[Any]]:
    data = _reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_query_span_follows_semantic_conventions(
    dbs: tuple[MainDB, ReferenceDB], db_env: Servers
) -> None:
    main, _ = dbs
    await main.fetchval("SELECT $1::int + 40 /* answer */", 2)
    (span,) = _spans("SELECT")
    assert span.name == "SELECT"  # the summary: no table read
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["db.namespace"] == MAIN_DB
    assert attributes["db.query.summary"] == "SELECT"
    assert "db.operation.name" not in attributes  # not guessed from the text
    # Parameterised: recorded as given (the conventions say not to sanitise it further).
    assert attributes["db.query.text"] == "SELECT $1::int + 40 /* answer */"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == db_env.main.port
    assert attributes["wellwon.db.database"] == "main"
    assert "error.type" not in attributes
    assert [e.name for e in span.events] == ["wellwon.db.connection.acquired"]
    (event,) = span.events
    assert all(not key.startswith("db.") for key in (event.attributes or {}))


async def test_summaries_name_spans_and_literals_are_sanitised(
    dbs: tuple[MainDB, ReferenceDB],
) -> None:
    main, _ = dbs
    await main.execute("CREATE TABLE IF NOT EXISTS orders (id int, note text)")
    _exporter.clear()
    await main.execute("INSERT INTO orders SELECT 1, 'secret note' WHERE 2 > 1")
    await main.fetch("WITH x AS (SELECT * FROM orders) SELECT * FROM x WHERE id = $1", 1)
    names = [s.name for s in _exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert names == ["INSERT orders SELECT", "SELECT orders SELECT x"]
    (insert,) = _spans("INSERT")
    assert dict(insert.attributes or {})["db.query.text"] == (
        "INSERT INTO orders SELECT ?, ? WHERE ? > ?"
    )
    summaries = {
        p.attributes.get("db.query.summary")
        for p in _metrics()["db.client.operation.duration"]
        if p.attributes["wellwon.db.database"] == "main"
    }
    assert {"CREATE orders", "INSERT orders SELECT", "SELECT orders SELECT x"} <= summaries


async def test_failed_query_records_sqlstate(dbs: tuple[MainDB, ReferenceDB]) -> None:
    main, _ = dbs
    with pytest.raises(asyncpg.UndefinedTableError):
        await main.fetch("SELECT * FROM no_such_table WHERE id = 7")
    (span,) = _spans("SELECT")
    attributes = dict(span.attributes or {})
    assert attributes["db.response.status_code"] == "42P01"
    assert attributes["error.type"] == "42P01"
    assert span.status.status_code is StatusCode.ERROR
    assert attributes["db.query.text"] == "SELECT * FROM no_such_table WHERE id = ?"
    durations = _metrics()["db.client.operation.duration"]
    failed = [p for p in durations if p.attributes.get("error.type") == "42P01"]
    assert failed
    assert failed[0].attributes["db.response.status_code"] == "42P01"
    assert failed[0].attributes["wellwon.db.database"] == "main"


async def test_transaction_groups_its_statements(dbs: tuple[MainDB, ReferenceDB]) -> None:
    main, _ = dbs
    async with main.transaction() as tx:
        await tx.execute("CREATE TEMP TABLE t (x int)")
        await tx.execute("INSERT INTO t VALUES ($1)", 1)
    (transaction,) = _spans("TRANSACTION")
    statements = [s for s in _exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [s.name.split()[0] for s in statements] == ["BEGIN", "CREATE", "INSERT", "COMMIT"]
    for statement in statements:
        assert statement.parent is not None
        assert statement.parent.span_id == transaction.context.span_id
    assert dict(transaction.attributes or {})["wellwon.db.transaction.outcome"] == "commit"
    # BEGIN and COMMIT are operations the client names itself: db.operation.name is set.
    begin, commit = statements[0], statements[-1]
    assert dict(begin.attributes or {})["db.operation.name"] == "BEGIN"
    assert dict(commit.attributes or {})["db.operation.name"] == "COMMIT"
    assert "db.operation.name" not in dict(statements[1].attributes or {})  # never guessed


async def test_a_rolled_back_transaction_shows_its_rollback(
    dbs: tuple[MainDB, ReferenceDB],
) -> None:
    main, _ = dbs
    with pytest.raises(ZeroDivisionError):
        async with main.transaction() as tx:
            await tx.execute("SELECT 1")
            raise ZeroDivisionError
    (transaction,) = _spans("TRANSACTION")
    names = [s.name for s in _exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert names == ["BEGIN", "SELECT", "ROLLBACK"]
    (rollback,) = _spans("ROLLBACK")
    assert rollback.parent is not None
    assert rollback.parent.span_id == transaction.context.span_id
    durations = {
        p.attributes.get("db.operation.name")
        for p in _metrics()["db.client.operation.duration"]
        if p.attributes["wellwon.db.database"] == "main"
    }
    assert {"BEGIN", "ROLLBACK", "COMMIT"} <= durations


async def test_a_retried_call_is_one_span_with_an_event_per_failed_attempt(
    dbs: tuple[MainDB, ReferenceDB], db_env: Servers
) -> None:
    main, _ = dbs
    query = "SELECT 42 FROM pg_sleep(0.3) AS retried_once"

    async def kill_the_first_run() -> None:
        admin = await asyncpg.connect(db_env.main_dsn)
        try:

            async def running() -> bool:
                return bool(
                    await admin.fetchval(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE query = $1 AND state = 'active'",
                        query,
                    )
                )

            await wait_until(running)
        finally:
            await admin.close()

    kill = asyncio.create_task(kill_the_first_run())

    async def sleep_then_answer() -> int:
        return int(await main.fetchval(query, idempotent=True))

    _exporter.clear()
    assert await sleep_then_answer() == 42
    await kill
    spans = [s for s in _exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [s.name for s in spans] == ["SELECT"]  # one operation, both attempts
    (span,) = spans
    events = [e for e in span.events if e.name == "exception"]
    assert len(events) == 1
    # The connection's loss: its SQLSTATE (admin shutdown, or "connection does not exist").
    assert (events[0].attributes or {})["exception.type"] in {"57P01", "08003"}
    assert span.status.is_ok
    assert "error.type" not in dict(span.attributes or {})


async def test_batch_operation_name(dbs: tuple[MainDB, ReferenceDB]) -> None:
    main, _ = dbs
    await main.execute("CREATE TEMP TABLE IF NOT EXISTS b (x int)")
    await main.executemany("SELECT $1::int", [(1,), (2,)])
    (span,) = _spans("BATCH")
    attributes = dict(span.attributes or {})
    assert attributes["db.query.summary"] == "BATCH SELECT"
    assert attributes["db.operation.batch.size"] == 2
    _exporter.clear()
    await main.executemany("SELECT $1::int", [(1,)])  # one parameter set: not a batch
    (span,) = _spans("SELECT")
    assert "db.operation.batch.size" not in dict(span.attributes or {})


async def test_lease_histograms_are_recorded_only_where_enabled(
    sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
    db_env: Servers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PG_REFERENCE_POOL_LEASE_METRICS", "true")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    try:
        main, reference = container.main_db(), container.reference_db()
        await asyncio.gather(main.fetchval("SELECT 1"), reference.fetchval("SELECT 1"))
        found = _metrics()
    finally:
        await stop_databases(container)
    for name in ("db.client.connection.wait_time", "db.client.connection.use_time"):
        pools = {p.attributes["db.client.connection.pool.name"] for p in found.get(name, [])}
        assert "wellwon_db:reference" in pools, name
        assert "wellwon_db:main" not in pools, name  # off by default


async def test_connection_metrics_per_pool(dbs: tuple[MainDB, ReferenceDB]) -> None:
    main, reference = dbs
    await asyncio.gather(main.fetchval("SELECT 1"), reference.fetchval("SELECT 1"))
    found = _metrics()
    for name in (
        "db.client.connection.count",
        "db.client.connection.max",
        "db.client.connection.idle.max",
        "db.client.connection.idle.min",
        "db.client.connection.pending_requests",
        "db.client.connection.timeouts",
        "db.client.connection.create_time",
        "db.client.operation.duration",
        "wellwon.db.breaker.state",
    ):
        assert name in found, name
    counts = {
        (
            p.attributes["db.client.connection.pool.name"],
            p.attributes["db.client.connection.state"],
        ): p.value
        for p in found["db.client.connection.count"]
    }
    # db_env: main min 2 / max 5, reference min 1 / max 3 — each pool reports its own.
    assert counts[("wellwon_db:main", "idle")] + counts[("wellwon_db:main", "used")] >= 2
    assert counts[("wellwon_db:reference", "used")] == 0
    maxima = {
        p.attributes["db.client.connection.pool.name"]: p.value
        for p in found["db.client.connection.max"]
    }
    assert maxima["wellwon_db:main"] == 5
    assert maxima["wellwon_db:reference"] == 3
    states = {
        (p.attributes["wellwon.db.database"], p.attributes["wellwon.db.breaker.state"]): p.value
        for p in found["wellwon.db.breaker.state"]
    }
    assert states[("main", "closed")] == 1
    assert states[("main", "open")] == 0


async def test_pool_timeout_is_visible(
    sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
    db_env: Servers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_POOL_TIMEOUT_SEC", "0.1")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    try:
        reference: ReferenceDB = container.reference_db()
        _exporter.clear()
        async with reference.transaction():
            with pytest.raises(PoolTimeoutError):
                await reference.fetchval("SELECT 1")
        timeouts = {
            p.attributes["db.client.connection.pool.name"]: p.value
            for p in _metrics()["db.client.connection.timeouts"]
        }
        assert timeouts["wellwon_db:reference"] == 1
        (span,) = _spans("SELECT")
        assert dict(span.attributes or {})["error.type"] == "wellwon_db.errors.PoolTimeoutError"
    finally:
        await stop_databases(container)


async def test_breaker_transition_is_counted(dbs: tuple[MainDB, ReferenceDB]) -> None:
    main, _ = dbs
    main.breaker.force_open()
    with pytest.raises(CircuitOpenError):
        await main.fetchval("SELECT 1")
    main.breaker.reset()
    transitions = [
        (p.attributes["wellwon.db.breaker.from"], p.attributes["wellwon.db.breaker.to"], p.value)
        for p in _metrics()["wellwon.db.breaker.transitions"]
        if p.attributes["wellwon.db.database"] == "main"
    ]
    assert ("closed", "forced_open", 1) in transitions or any(
        t[:2] == ("closed", "forced_open") and t[2] >= 1 for t in transitions
    )
    # Refused without reaching the database: no operation, no 0 s duration; counted apart.
    assert _spans("SELECT") == []
    refused = {
        (p.attributes["wellwon.db.database"], p.attributes["wellwon.db.refused.reason"]): p.value
        for p in _metrics()["wellwon.db.client.refused"]
    }
    assert refused[("main", "breaker_open")] >= 1


async def test_slow_query_log_has_structure_and_no_values(
    dbs: tuple[MainDB, ReferenceDB], caplog: pytest.LogCaptureFixture
) -> None:
    main, _ = dbs
    with caplog.at_level(logging.WARNING, logger="wellwon_db.slow"):
        await main.fetchval("SELECT pg_sleep(0.25), $1::text", "top-secret-value")
    (record,) = [r for r in caplog.records if r.name == "wellwon_db.slow"]
    assert record.database == "main"  # type: ignore[attr-defined]
    assert record.operation == "SELECT"  # type: ignore[attr-defined]
    assert record.duration_ms >= 250  # type: ignore[attr-defined]
    assert record.query == "SELECT pg_sleep(?), $1::text"  # type: ignore[attr-defined]
    assert "top-secret-value" not in record.getMessage()


async def test_pool_pressure_warns_once_per_episode(
    sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
    db_env: Servers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "2")
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_EXHAUSTION_WARN_SEC", "0.2")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    try:
        main: MainDB = container.main_db()
        with caplog.at_level(logging.INFO, logger="wellwon_db.pool"):
            # Two connections busy for 0.6 s under a stream of queries: one episode.
            await asyncio.gather(
                *(main.fetchval("SELECT pg_sleep(0.05)") for _ in range(24)),
            )

            async def pressure_over() -> bool:
                return main.pool.get_stats()["in_use"] == 0

            await wait_until(pressure_over)
            await main.fetchval("SELECT 1")  # a release without pressure ends the episode
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "under pressure" in warnings[0].getMessage()
        assert any("no longer under pressure" in r.getMessage() for r in caplog.records)
        assert "PG_POOL_MAX_SIZE" in warnings[0].getMessage()
        episodes = [
            p.value
            for p in _metrics()["wellwon.db.client.connection.pool.exhausted"]
            if p.attributes["db.client.connection.pool.name"] == "wellwon_db:main"
        ]
        assert episodes
        assert episodes[0] >= 1
    finally:
        await stop_databases(container)


async def test_a_pool_wait_is_not_a_slow_query(
    sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
    db_env: Servers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A quick statement that waited for a connection: a long operation, not a slow query."""
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_LOG_SLOW_QUERY_SEC", "0.2")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    try:
        main: MainDB = container.main_db()
        sdk[0].clear()
        with caplog.at_level(logging.WARNING, logger="wellwon_db.slow"):
            async with main.transaction():
                queued = asyncio.create_task(main.fetchval("SELECT 42"))

                async def queued_up() -> bool:
                    return main.pool.get_stats()["waiting"] == 1

                await wait_until(queued_up)
                await asyncio.sleep(0.3)  # the holder's work: the queued call waits it out
            assert await queued == 42
            await main.fetchval("SELECT pg_sleep(0.25)")  # slow on the server: logged
        slow = [r.getMessage() for r in caplog.records if r.name == "wellwon_db.slow"]
        assert len(slow) == 1, slow
        assert "pg_sleep" in slow[0]
        (span,) = [
            span
            for span in _spans("SELECT")
            for event in span.events
            if event.name == "wellwon.db.connection.acquired"
            and (event.attributes or {})["wellwon.db.connection.wait_time"] >= 0.25
        ]
        assert span.end_time is not None
        assert span.start_time is not None
        assert (span.end_time - span.start_time) / 1e9 >= 0.25  # the operation includes the wait
    finally:
        await stop_databases(container)


async def test_a_stuck_pool_warns_without_any_lease_event(
    db_env: Servers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every connection held, one caller queued, nothing returned: the warning still comes."""
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_TIMEOUT_SEC", "30")
    monkeypatch.setenv("PG_POOL_EXHAUSTION_WARN_SEC", "0.2")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    try:
        main: MainDB = container.main_db()
        with caplog.at_level(logging.WARNING, logger="wellwon_db.pool"):
            async with main.transaction():
                queued = asyncio.create_task(main.fetchval("SELECT 1"))

                async def warned() -> bool:
                    return any("under pressure" in r.getMessage() for r in caplog.records)

                await wait_until(warned, timeout=5.0)
                (warning,) = [r for r in caplog.records if "under pressure" in r.getMessage()]
                assert "1 of 1 connections in use, 1 tasks waiting" in warning.getMessage()
                assert not queued.done()
            assert await queued == 1
    finally:
        await stop_databases(container)


async def test_no_secret_or_parameter_value_anywhere(
    dbs: tuple[MainDB, ReferenceDB], caplog: pytest.LogCaptureFixture
) -> None:
    main, reference = dbs
    with caplog.at_level(logging.DEBUG, logger="wellwon_db"):
        await main.fetchval("SELECT $1::text, pg_sleep(0.25)", "param-value-123")
        await main.execute("SELECT 'inline-literal-456'")
        with pytest.raises(asyncpg.PostgresError):
            await reference.fetchval("SELECT length($1::text) / 0", "ref-param-789")
        async with main.transaction() as tx:
            await tx.fetchval("SELECT $1::text", "tx-param-000")
    dumped = json.dumps(
        [
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "events": [dict(e.attributes or {}) for e in s.events],
            }
            for s in _exporter.get_finished_spans()
        ],
        default=str,
    )
    dumped += _reader.get_metrics_data().to_json()  # type: ignore[union-attr]
    dumped += "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (SECRET, "param-value-123", "inline-literal-456", "ref-param-789", "tx-param"):
        assert secret not in dumped, secret


async def test_semconv_dup_adds_the_old_attribute_names(
    sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
    db_env: Servers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,database/dup")
    container = DatabaseContainer()
    await start_databases(container)
    try:
        _exporter.clear()
        await container.main_db().fetchval("SELECT 1")
        (span,) = _spans("SELECT")
        attributes = dict(span.attributes or {})
        assert attributes["db.system"] == "postgresql"
        assert attributes["db.statement"] == "SELECT ?"
        assert attributes["db.name"] == MAIN_DB
        assert attributes["db.system.name"] == "postgresql"  # the stable names stay
    finally:
        await stop_databases(container)


def test_the_fast_tracing_check_agrees_with_the_public_api(
    sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    """The per-call check reads the API's global; it must say what the public call says."""
    from wellwon_db.telemetry._telemetry import _tracing_off, _tracing_off_fast

    assert _tracing_off() is False  # the module fixture set a provider
    assert _tracing_off_fast() is _tracing_off()
