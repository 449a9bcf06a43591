"""Streaming cursors: prefetch batches, the transaction bounds, errors and telemetry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from opentelemetry.trace import SpanKind

from tests.helpers import install_otel_sdk
from wellwon_db import (
    CircuitOpenError,
    DatabaseContainer,
    DatabaseUnavailableError,
    MainDB,
    RowStream,
)


@dataclass(frozen=True)
class Number:
    n: int
    square: int


@pytest.fixture
async def main(container: DatabaseContainer) -> MainDB:
    client: MainDB = container.main_db()
    return client


@pytest.fixture
async def sequence(main: MainDB) -> AsyncIterator[str]:
    name = f"seq_{uuid.uuid4().hex[:10]}"
    await main.execute(f"CREATE SEQUENCE {name}")
    yield name
    await main.execute(f"DROP SEQUENCE {name}")


#: The transaction's own operations, which have spans of their own.
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")


async def test_rows_are_fetched_a_batch_at_a_time(main: MainDB, sequence: str) -> None:
    """Each row calls nextval when the server produces it: the sequence tells how far it got."""
    seen: list[int] = []
    async with main.transaction() as tx:
        stream = tx.cursor(
            f"SELECT nextval('{sequence}') AS n FROM generate_series(1, 100000)", prefetch=10
        )
        assert await main.fetchval(f"SELECT last_value FROM {sequence}") == 1  # nothing sent
        async for row in stream:
            seen.append(row["n"])
            if len(seen) == 25:
                break
        # Three batches of ten produced, out of 100,000.
        assert await main.fetchval(f"SELECT last_value FROM {sequence}") == 30
    assert seen == list(range(1, 26))
    assert main.pool.get_stats()["in_use"] == 0


async def test_every_row_arrives_mapped(main: MainDB) -> None:
    query = "SELECT g AS n, g * g AS square FROM generate_series(1, $1::int) AS g"
    async with main.transaction() as tx:
        numbers = [number async for number in tx.cursor(query, 203, prefetch=7, model=Number)]
    assert numbers == [Number(n, n * n) for n in range(1, 204)]
    async with main.cursor(query, 5, prefetch=2, model=Number, readonly=True) as rows:
        assert isinstance(rows, RowStream)
        assert [number.square async for number in rows] == [1, 4, 9, 16, 25]


async def test_a_client_cursor_is_a_block_with_a_transaction_of_its_own(main: MainDB) -> None:
    async with main.cursor("SELECT g FROM generate_series(1, 1000) AS g", prefetch=50) as rows:
        async for row in rows:
            assert await main.fetchval("SELECT 1") == 1  # the pool serves others meanwhile
            if row["g"] == 3:
                break
        assert main.pool.get_stats()["in_use"] == 1
    assert main.pool.get_stats()["in_use"] == 0
    with pytest.raises(asyncpg.InterfaceError, match="transaction ended"):
        await anext(rows)
    with pytest.raises(TypeError, match=r"async with client\.cursor"):
        async for _ in main.cursor("SELECT 1"):  # type: ignore[attr-defined]
            pass
    with pytest.raises(ValueError, match="prefetch"):
        main.cursor("SELECT 1", prefetch=0)


async def test_an_open_breaker_refuses_a_client_cursor(main: MainDB) -> None:
    main.breaker.force_open()
    try:
        with pytest.raises(CircuitOpenError):
            async with main.cursor("SELECT 1"):
                pytest.fail("entered")
    finally:
        main.breaker.reset()


async def test_errors_in_a_stream(main: MainDB) -> None:
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with main.cursor(
            "SELECT 1 / (g - 3) FROM generate_series(1, 10) g", prefetch=1
        ) as r:
            async for _ in r:
                pass
    with pytest.raises(asyncpg.InterfaceError, match="a fetch failed"):
        await anext(r)
    with pytest.raises(DatabaseUnavailableError) as lost:
        async with main.transaction() as tx:
            pid = await tx.fetchval("SELECT pg_backend_pid()")
            stream = tx.cursor("SELECT g FROM generate_series(1, 100) g", prefetch=5)
            assert (await anext(stream))["g"] == 1
            await main.fetchval("SELECT pg_terminate_backend($1)", pid)
            async for _ in stream:
                pass
    assert lost.value.may_have_run is False  # rolled back with its transaction
    assert await main.fetchval("SELECT 1") == 1
    assert main.pool.get_stats()["in_use"] == 0


async def test_a_stream_is_one_span(main: MainDB) -> None:
    exporter, _ = install_otel_sdk()
    async with main.transaction() as tx:
        exporter.clear()
        total = 0
        async for row in tx.cursor("SELECT g FROM generate_series(1, 30) g", prefetch=4):
            total += row["g"]
    assert total == 465
    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.name not in TRANSACTION_CONTROL
    ]
    assert span.name == "SELECT"
    assert dict(span.attributes or {})["db.query.summary"] == "SELECT"
    exporter.clear()
    async with main.transaction() as tx:
        async for _ in tx.cursor("SELECT g FROM generate_series(1, 30) g", prefetch=4):
            break  # ended (its span too) with the transaction
    assert [
        s.name
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.name not in TRANSACTION_CONTROL
    ] == ["SELECT"]
