"""COPY through the client and a transaction: breaker, timeouts, telemetry, on a real server."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from opentelemetry.trace import SpanKind

from tests.helpers import install_otel_sdk, metric_points
from wellwon_db import CircuitOpenError, DatabaseContainer, MainDB
from wellwon_db.client._copy import copy_statement


@pytest.fixture
async def main(container: DatabaseContainer) -> MainDB:
    client: MainDB = container.main_db()
    return client


@pytest.fixture
async def table(main: MainDB) -> AsyncIterator[str]:
    name = f"copy_{uuid.uuid4().hex[:10]}"
    await main.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, name text, score int)")
    yield name
    await main.execute(f"DROP TABLE {name}")


async def test_records_in_and_out(main: MainDB, table: str, tmp_path: Path) -> None:
    status = await main.copy_records_to_table(
        table, records=[("ann", 3), ("bob", None)], columns=["name", "score"]
    )
    assert status == "COPY 2"

    async def more() -> AsyncIterator[tuple[str, int]]:
        for index in range(3):
            yield (f"gen{index}", index)

    assert await main.copy_records_to_table(table, records=more(), columns=("name", "score"))
    rows = await main.fetch(f"SELECT name, score FROM {table} ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("ann", 3),
        ("bob", None),
        ("gen0", 0),
        ("gen1", 1),
        ("gen2", 2),
    ]

    out = io.BytesIO()
    status = await main.copy_from_table(
        table, output=out, columns=["name"], format="csv", header=True
    )
    assert status == "COPY 5"
    assert out.getvalue().decode().splitlines()[:2] == ["name", "ann"]

    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    status = await main.copy_from_query(
        f"SELECT name FROM {table} WHERE score >= $1 ORDER BY id", 2, output=sink, format="csv"
    )
    assert status == "COPY 2"
    assert b"".join(chunks).decode().split() == ["ann", "gen2"]

    source = tmp_path / "in.csv"
    source.write_text("name,score\ncsv1,7\n")
    status = await main.copy_to_table(
        table, source=source, columns=["name", "score"], format="csv", header=True
    )
    assert status == "COPY 1"
    assert await main.fetchval(f"SELECT score FROM {table} WHERE name = 'csv1'") == 7
    assert main.pool.get_stats()["in_use"] == 0


async def test_copy_in_a_transaction_rolls_back_with_it(main: MainDB, table: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with main.transaction() as tx:
            assert await tx.copy_records_to_table(table, records=[(1, "x", 1)]) == "COPY 1"
            assert await tx.fetchval(f"SELECT count(*) FROM {table}") == 1
            out = io.BytesIO()
            assert await tx.copy_from_query(f"SELECT * FROM {table}", output=out) == "COPY 1"
            raise Boom
    assert await main.fetchval(f"SELECT count(*) FROM {table}") == 0
    async with main.transaction() as tx:
        await tx.copy_to_table(table, source=io.BytesIO(b"5\ty\t2\n"))
        out = io.BytesIO()
        await tx.copy_from_table(table, output=out, columns=["name"])
    assert out.getvalue() == b"y\n"


async def test_an_open_breaker_refuses_copy_before_reading_anything(
    main: MainDB, table: str
) -> None:
    read: list[int] = []

    def records() -> Iterator[tuple[str]]:
        read.append(1)
        yield ("never",)

    main.breaker.force_open()
    try:
        with pytest.raises(CircuitOpenError):
            await main.copy_records_to_table(table, records=records(), columns=["name"])
        with pytest.raises(CircuitOpenError):
            await main.copy_from_query("SELECT 1", output=io.BytesIO())
    finally:
        main.breaker.reset()
    assert read == []
    assert await main.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_copy_is_a_span_and_a_metric_named_by_its_table(main: MainDB, table: str) -> None:
    exporter, _ = install_otel_sdk()
    exporter.clear()
    await main.copy_records_to_table(table, records=[("a",)], columns=["name"])
    await main.copy_from_query(f"SELECT * FROM {table} WHERE name = 'a'", output=io.BytesIO())
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [s.name for s in spans] == [f"COPY {table}", f"COPY SELECT {table}"]
    copy_in = dict(spans[0].attributes or {})
    assert copy_in["db.query.summary"] == f"COPY {table}"
    assert copy_in["db.query.text"] == f"COPY {table} (name) FROM STDIN"
    assert dict(spans[1].attributes or {})["db.query.text"] == (
        f"COPY (SELECT * FROM {table} WHERE name = ?) TO STDOUT"  # a literal is masked
    )
    summaries = {
        point.attributes.get("db.query.summary")
        for point in metric_points()["db.client.operation.duration"]
    }
    assert {f"COPY {table}", f"COPY SELECT {table}"} <= summaries


async def test_copy_takes_the_command_timeout(main: MainDB) -> None:
    with pytest.raises(TimeoutError):
        await main.copy_from_query("SELECT pg_sleep(5)", output=io.BytesIO(), timeout=0.2)
    assert await main.fetchval("SELECT 1") == 1


async def test_any_table_name_is_quoted(main: MainDB) -> None:
    name = 'odd "name"; DROP TABLE x; --'
    await main.execute('CREATE TABLE "odd ""name""; DROP TABLE x; --" ("Weird col" int)')
    try:
        status = await main.copy_records_to_table(name, records=[(1,)], columns=["Weird col"])
        assert status == "COPY 1"
        assert await main.fetchval('SELECT "Weird col" FROM "odd ""name""; DROP TABLE x; --"')
    finally:
        await main.execute('DROP TABLE "odd ""name""; DROP TABLE x; --"')


def test_copy_statement_text() -> None:
    assert copy_statement("items", None, None, "FROM STDIN") == "COPY items FROM STDIN"
    assert copy_statement("Items", "app", ["id", "user"], "TO STDOUT") == (
        'COPY app."Items" (id, "user") TO STDOUT'
    )
    with pytest.raises(ValueError, match="identifier"):
        copy_statement("", None, None, "FROM STDIN")


async def test_unknown_copy_options_are_refused_before_anything_is_sent(main: MainDB) -> None:
    with pytest.raises(TypeError, match="unknown COPY options formt"):
        await main.copy_from_query("SELECT 1", output=io.BytesIO(), formt="csv")
    with pytest.raises(asyncpg.UndefinedTableError):
        await main.copy_records_to_table("no_such_table", records=[(1,)])
