"""Row mapping: ``model=`` (dataclasses, pydantic) and ``record_class=``, typed for mypy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import NamedTuple

import asyncpg
import pydantic
import pytest

from wellwon_db import DatabaseContainer, MainDB, MainReplicaDB

ROOT = Path(__file__).resolve().parent.parent
QUERY = "SELECT 1 AS id, 'ann' AS name, DATE '2024-02-29' AS joined"


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    joined: date


class MemberModel(pydantic.BaseModel):
    id: int
    name: str
    joined: date


class MemberTuple(NamedTuple):
    id: int
    name: str
    joined: date


class MemberRecord(asyncpg.Record):
    def __getattr__(self, name: str) -> object:
        return self[name]


@pytest.fixture
async def main(container: DatabaseContainer) -> MainDB:
    client: MainDB = container.main_db()
    return client


@pytest.mark.parametrize("model", [Member, MemberModel, MemberTuple])
async def test_rows_become_models(main: MainDB, model: type[object]) -> None:
    expected = model(id=1, name="ann", joined=date(2024, 2, 29))
    assert await main.fetch(f"{QUERY} UNION ALL {QUERY}", model=model) == [expected, expected]
    assert await main.fetchrow(QUERY, model=model) == expected
    assert await main.fetchrow(f"{QUERY} WHERE false", model=model) is None
    async with main.transaction() as tx:
        assert await tx.fetch(QUERY, model=model) == [expected]
        assert await tx.fetchrow(QUERY, model=model) == expected


async def test_replica_clients_map_rows_too(container: DatabaseContainer) -> None:
    replica: MainReplicaDB = container.main_replica_db()  # no replicas: reads go to main
    assert await replica.fetch(QUERY, model=Member) == [Member(1, "ann", date(2024, 2, 29))]
    row = await replica.fetchrow(QUERY, record_class=MemberRecord)
    assert row is not None
    assert row.name == "ann"


async def test_record_class(main: MainDB) -> None:
    rows = await main.fetch(QUERY, record_class=MemberRecord)
    assert isinstance(rows[0], MemberRecord)
    assert rows[0].joined == date(2024, 2, 29)
    row = await main.fetchrow(QUERY, record_class=MemberRecord)
    assert row is not None
    assert row.id == 1
    async with main.transaction() as tx:
        (row,) = await tx.fetch(QUERY, record_class=MemberRecord)
        assert isinstance(row, MemberRecord)
    with pytest.raises(asyncpg.InterfaceError, match="record_class"):
        await main.fetch(QUERY, record_class=dict)  # type: ignore[type-var]


async def test_rows_that_do_not_fit(main: MainDB) -> None:
    with pytest.raises(TypeError, match=r"columns \(id, name\) to Member"):
        await main.fetch("SELECT 1 AS id, 'ann' AS name", model=Member)
    with pytest.raises(pydantic.ValidationError):
        await main.fetchrow("SELECT 'x' AS id, 'ann' AS name, now() AS joined", model=MemberModel)
    with pytest.raises(TypeError, match="not both"):
        await main.fetch(QUERY, model=Member, record_class=MemberRecord)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="model must be a class"):
        await main.fetch(QUERY, model=lambda **row: row)  # type: ignore[call-overload]
    assert main.pool.get_stats()["in_use"] == 0


SNIPPET = """
from dataclasses import dataclass

import asyncpg
import pydantic

from wellwon_db import MainDB, MainReplicaDB, TransactionScope


@dataclass
class Member:
    id: int


class MemberModel(pydantic.BaseModel):
    id: int


class MemberRecord(asyncpg.Record):
    pass


async def check(main: MainDB, replica: MainReplicaDB, tx: TransactionScope) -> None:
    reveal_type(await main.fetch("q", model=Member))
    reveal_type(await main.fetchrow("q", 1, model=MemberModel))
    reveal_type(await main.fetch("q", record_class=MemberRecord))
    reveal_type(await main.fetch("q"))
    reveal_type(await replica.fetch("q", model=Member))
    reveal_type(await tx.fetchrow("q", model=Member))
    async with main.cursor("q", model=Member) as rows:
        async for row in rows:
            reveal_type(row)
    async for item in tx.cursor("q", prefetch=10, record_class=MemberRecord):
        reveal_type(item)
    members: list[MemberModel] = await main.fetch("q", model=Member)  # WRONG
"""


@pytest.mark.slow
def test_mypy_infers_the_mapped_types(tmp_path: Path) -> None:
    source = tmp_path / "rows_check.py"
    source.write_text(textwrap.dedent(SNIPPET))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    revealed = [
        line.split("Revealed type is", 1)[1].strip().strip('"')
        for line in result.stdout.splitlines()
        if "Revealed type is" in line
    ]
    assert revealed == [
        "list[rows_check.Member]",
        "rows_check.MemberModel | None",
        "list[rows_check.MemberRecord]",
        "list[asyncpg.protocol.record.Record]",
        "list[rows_check.Member]",
        "rows_check.Member | None",
        "rows_check.Member",
        "rows_check.MemberRecord",
    ], result.stdout
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    wrong = [
        number
        for number, line in enumerate(source.read_text().splitlines(), start=1)
        if line.endswith("# WRONG")
    ]
    assert [int(line.split(":")[1]) for line in errors] == wrong, result.stdout
