"""The application-facing fakes of ``wellwon_db.testing`` and ``override_with_fakes``."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from dependency_injector import containers, providers
from dependency_injector.wiring import Provide, inject

from tests.helpers import Servers, count_connections, wait_until
from wellwon_db import (
    Database,
    DatabaseClient,
    DatabaseContainer,
    MainDB,
    Notification,
    NotificationGap,
    ReferenceDB,
    TransactionScope,
    get_postgres_config,
    resolve,
    start_databases,
    stop_databases,
)
from wellwon_db.testing import (
    FakeCall,
    FakeDatabases,
    FakeMainDB,
    FakeRecord,
    FakeReferenceDB,
    UnscriptedQueryError,
    override_with_fakes,
)

# -- the fakes are the real types ---------------------------------------------


def test_fakes_are_the_typed_clients() -> None:
    main, reference = FakeMainDB(), FakeReferenceDB()
    assert isinstance(main, MainDB)
    assert isinstance(main, DatabaseClient)
    assert not isinstance(main, ReferenceDB)
    assert isinstance(reference, ReferenceDB)
    assert not isinstance(reference, MainDB)
    assert main.database is Database.MAIN
    assert reference.database is Database.REFERENCE
    assert repr(main) == "<FakeMainDB 0 calls>"


# -- scripted results ---------------------------------------------------------


async def test_scripted_rows_for_each_query_method() -> None:
    db = FakeMainDB()
    rows = [{"id": 1, "name": "ada"}, {"id": 2, "name": "linus"}]
    db.script("SELECT id, name FROM users", rows)
    db.script("SELECT count(*) FROM users", 2)
    db.script("DELETE FROM users", "DELETE 2")

    fetched = await db.fetch("SELECT id, name FROM users")
    assert [dict(row) for row in fetched] == rows
    row = await db.fetchrow("SELECT id, name FROM users")
    assert row is not None
    assert (row["id"], row["name"]) == (1, "ada")
    assert await db.fetchval("SELECT id, name FROM users") == 1
    assert await db.fetchval("SELECT id, name FROM users", column=1) == "ada"
    assert await db.fetchval("SELECT count(*) FROM users") == 2
    assert await db.execute("DELETE FROM users") == "DELETE 2"


async def test_a_single_dict_is_one_row() -> None:
    db = FakeReferenceDB()
    db.script("SELECT code FROM dc_customs WHERE country = $1", {"code": "GB-HMRC"})
    (row,) = await db.fetch("SELECT code FROM dc_customs WHERE country = $1", "GB")
    assert row["code"] == "GB-HMRC"
    assert await db.fetchval("SELECT code FROM dc_customs WHERE country = $1", "GB") == ("GB-HMRC")


async def test_unscripted_queries_answer_empty() -> None:
    db = FakeMainDB()
    assert await db.fetch("SELECT 1") == []
    assert await db.fetchrow("SELECT 1") is None
    assert await db.fetchval("SELECT 1") is None
    assert await db.execute("UPDATE t SET x = 1") == "OK"
    await db.executemany("INSERT INTO t VALUES ($1)", [])  # no rows: no call, no error
    assert len(db.calls) == 4
    db.script("SELECT 2", [])
    assert await db.fetchrow("SELECT 2") is None
    assert await db.fetchval("SELECT 2") is None


async def test_exact_text_matching_ignores_whitespace_only() -> None:
    db = FakeMainDB(strict=True)
    db.script("SELECT id\n  FROM users\n  WHERE id = $1", [{"id": 7}])
    assert await db.fetchval("SELECT id FROM users WHERE id = $1", 7) == 7
    assert await db.fetchval("  SELECT   id\tFROM users WHERE id = $1  ", 7) == 7
    with pytest.raises(UnscriptedQueryError):
        await db.fetchval("SELECT id FROM users WHERE id = $2", 7)
    with pytest.raises(UnscriptedQueryError):
        await db.fetchval("select id from users where id = $1", 7)


async def test_regex_scripts_match_anywhere_in_the_text() -> None:
    db = FakeMainDB(strict=True)
    db.script(re.compile(r"FROM\s+users\b", re.IGNORECASE), [{"n": 3}])
    assert await db.fetchval("SELECT count(*) AS n FROM users") == 3
    assert await db.fetchval("select n from   users where active") == 3
    with pytest.raises(UnscriptedQueryError):
        await db.fetchval("SELECT n FROM users_archive")


async def test_times_limits_a_script_and_the_latest_script_wins() -> None:
    db = FakeMainDB()
    db.script("SELECT status FROM jobs", "queued")
    db.script("SELECT status FROM jobs", "running", times=2)
    answers = [await db.fetchval("SELECT status FROM jobs") for _ in range(4)]
    assert answers == ["running", "running", "queued", "queued"]


async def test_times_exhausted_falls_back_to_unscripted() -> None:
    db = FakeMainDB(strict=True)
    db.script("SELECT 1", 1, times=1)
    assert await db.fetchval("SELECT 1") == 1
    with pytest.raises(UnscriptedQueryError, match="SELECT 1"):
        await db.fetchval("SELECT 1")


async def test_callable_results_receive_the_query_args() -> None:
    db = FakeMainDB()
    seen: list[tuple[Any, ...]] = []

    def lookup(user_id: int, active: bool) -> list[dict[str, Any]]:
        seen.append((user_id, active))
        return [{"id": user_id, "active": active}]

    db.script("SELECT * FROM users WHERE id = $1 AND active = $2", lookup)
    row = await db.fetchrow("SELECT * FROM users WHERE id = $1 AND active = $2", 42, True)
    assert row is not None
    assert dict(row) == {"id": 42, "active": True}
    assert seen == [(42, True)]

    db.script("SELECT $1::int * 2", lambda value: value * 2)
    assert await db.fetchval("SELECT $1::int * 2", 21) == 42


async def test_exception_results_are_raised() -> None:
    db = FakeMainDB()
    db.script("INSERT INTO users (name) VALUES ($1)", asyncpg.UniqueViolationError("dup"))
    with pytest.raises(asyncpg.UniqueViolationError, match="dup"):
        await db.execute("INSERT INTO users (name) VALUES ($1)", "ada")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.fetch("INSERT INTO users (name) VALUES ($1)", "ada")

    db.script("SELECT fail($1)", lambda reason: RuntimeError(reason))
    with pytest.raises(RuntimeError, match="boom"):
        await db.fetchval("SELECT fail($1)", "boom")
    # The raising calls were still recorded.
    assert [call.method for call in db.calls] == ["execute", "fetch", "fetchval"]


async def test_rows_for_a_fetch_must_be_dicts() -> None:
    db = FakeMainDB()
    db.script("SELECT name FROM users", "ada")
    with pytest.raises(TypeError, match="list of dicts"):
        await db.fetch("SELECT name FROM users")
    # fetchval takes a scalar as it is.
    assert await db.fetchval("SELECT name FROM users") == "ada"


async def test_strict_mode_raises_on_unscripted_queries() -> None:
    db = FakeReferenceDB(strict=True)
    db.script("SELECT 1", 1)
    assert await db.fetchval("SELECT 1") == 1
    with pytest.raises(UnscriptedQueryError, match=r"FakeReferenceDB.*SELECT 2") as info:
        await db.fetch("SELECT 2")
    assert isinstance(info.value, AssertionError)  # pytest reports it as a failure
    for call in (db.fetchrow, db.fetchval, db.execute):
        with pytest.raises(UnscriptedQueryError):
            await call("SELECT 3")
    with pytest.raises(UnscriptedQueryError):
        await db.executemany("INSERT INTO t VALUES ($1)", [(1,)])


async def test_executemany_records_one_call_per_row() -> None:
    db = FakeMainDB()
    await db.executemany("INSERT INTO t (a, b) VALUES ($1, $2)", [(1, "x"), [2, "y"]])
    assert db.calls == [
        FakeCall("executemany", "INSERT INTO t (a, b) VALUES ($1, $2)", (1, "x")),
        FakeCall("executemany", "INSERT INTO t (a, b) VALUES ($1, $2)", (2, "y")),
    ]

    def reject_negative(value: int) -> object:
        return ValueError("negative") if value < 0 else None

    db.script("INSERT INTO t (a) VALUES ($1)", reject_negative)
    with pytest.raises(ValueError, match="negative"):
        await db.executemany("INSERT INTO t (a) VALUES ($1)", [(1,), (-1,), (2,)])
    assert [call.args for call in db.calls[2:]] == [(1,), (-1,)]


# -- recorded calls -----------------------------------------------------------


async def test_calls_and_queries_are_recorded_in_order() -> None:
    db = FakeMainDB()
    await db.fetch("SELECT a FROM t WHERE id = $1", 1)
    await db.fetchrow("SELECT b FROM t")
    await db.fetchval("SELECT c FROM t", column=0, timeout=3)
    await db.execute("UPDATE t SET a = $1", 5)
    assert db.calls == [
        FakeCall("fetch", "SELECT a FROM t WHERE id = $1", (1,), False),
        FakeCall("fetchrow", "SELECT b FROM t", (), False),
        FakeCall("fetchval", "SELECT c FROM t", (), False),
        FakeCall("execute", "UPDATE t SET a = $1", (5,), False),
    ]
    assert db.queries == [
        "SELECT a FROM t WHERE id = $1",
        "SELECT b FROM t",
        "SELECT c FROM t",
        "UPDATE t SET a = $1",
    ]
    assert repr(db) == "<FakeMainDB 4 calls>"

    db.script("SELECT 1", 1)
    db.reset()
    assert db.calls == []
    assert db.queries == []
    assert await db.fetchval("SELECT 1") is None  # the script went too


async def test_transaction_commit_is_recorded() -> None:
    db = FakeMainDB()
    db.script("SELECT balance FROM accounts WHERE id = $1", 100)
    await db.execute("SELECT 'before'")
    async with db.transaction(isolation="serializable", readonly=True) as tx:
        assert await tx.fetchval("SELECT balance FROM accounts WHERE id = $1", 1) == 100
        await tx.execute("UPDATE accounts SET balance = $1", 75)
        await tx.executemany("INSERT INTO log VALUES ($1)", [(1,)])
        assert await tx.fetch("SELECT 1") == []
        assert await tx.fetchrow("SELECT 1") is None
    await db.execute("SELECT 'after'")

    assert [(call.method, call.in_transaction) for call in db.calls] == [
        ("execute", False),
        ("begin", True),
        ("fetchval", True),
        ("execute", True),
        ("executemany", True),
        ("fetch", True),
        ("fetchrow", True),
        ("commit", True),
        ("execute", False),
    ]
    begin = db.calls[1]
    assert dict(begin.args) == {"isolation": "serializable", "readonly": True, "deferrable": False}
    # begin/commit carry no query text: `queries` lists statements only.
    assert db.queries[0] == "SELECT 'before'"
    assert db.queries[-1] == "SELECT 'after'"
    assert len(db.queries) == 7


async def test_transaction_rollback_is_recorded_and_the_error_propagates() -> None:
    db = FakeMainDB()

    async def transfer() -> None:
        async with db.transaction() as tx:
            await tx.execute("UPDATE accounts SET balance = balance - 1000")
            raise RuntimeError("insufficient funds")

    with pytest.raises(RuntimeError, match="insufficient funds"):
        await transfer()
    assert [call.method for call in db.calls] == ["begin", "execute", "rollback"]
    assert all(call.in_transaction for call in db.calls)


async def test_scripted_error_inside_a_transaction_rolls_it_back() -> None:
    db = FakeMainDB()
    db.script("INSERT INTO users VALUES ($1)", asyncpg.UniqueViolationError("dup"))
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO users VALUES ($1)", "ada")
    assert [call.method for call in db.calls] == ["begin", "execute", "rollback"]


async def test_savepoints_are_recorded() -> None:
    db = FakeMainDB()

    async def failing_savepoint(tx: TransactionScope) -> None:
        async with tx.transaction() as inner:
            await inner.execute("INSERT INTO b VALUES (1)")
            raise ValueError("nested")

    async with db.transaction() as tx:
        async with tx.transaction() as inner:
            assert inner is tx
            await inner.execute("INSERT INTO a VALUES (1)")
        with pytest.raises(ValueError, match="nested"):
            await failing_savepoint(tx)
        await tx.execute("INSERT INTO c VALUES (1)")
    assert [(call.method, call.query) for call in db.calls] == [
        ("begin", ""),
        ("savepoint", ""),
        ("execute", "INSERT INTO a VALUES (1)"),
        ("release_savepoint", ""),
        ("savepoint", ""),
        ("execute", "INSERT INTO b VALUES (1)"),
        ("rollback_to_savepoint", ""),
        ("execute", "INSERT INTO c VALUES (1)"),
        ("commit", ""),
    ]
    assert all(call.in_transaction for call in db.calls)


async def test_fakes_have_no_raw_connections() -> None:
    db = FakeMainDB()
    with pytest.raises(NotImplementedError, match=r"FakeMainDB.*acquire\(\).*PostgresServer"):
        db.acquire()
    async with db.transaction() as tx:
        with pytest.raises(NotImplementedError, match="no raw connection"):
            _ = tx.connection


# -- FakeRecord ---------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    id: int
    name: str


async def test_fakes_map_rows_to_models() -> None:
    fake = FakeMainDB()
    fake.script("SELECT id, name FROM items", [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    assert await fake.fetch("SELECT id, name FROM items", model=Item) == [
        Item(1, "a"),
        Item(2, "b"),
    ]
    assert await fake.fetchrow("SELECT id, name FROM items", model=Item) == Item(1, "a")
    assert await fake.fetchrow("SELECT nothing", model=Item) is None
    row, _ = await fake.fetch("SELECT id, name FROM items", record_class=asyncpg.Record)
    assert isinstance(row, FakeRecord)  # record_class is not built by a fake
    async with fake.transaction() as tx:
        assert await tx.fetch("SELECT id, name FROM items", model=Item) == [
            Item(1, "a"),
            Item(2, "b"),
        ]
    with pytest.raises(TypeError, match="not both"):
        await fake.fetch("SELECT 1", model=Item, record_class=asyncpg.Record)  # type: ignore[call-overload]


async def test_fake_cursors_stream_the_scripted_rows() -> None:
    fake = FakeMainDB()
    fake.script("SELECT id, name FROM items", [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    async with fake.cursor("SELECT id, name FROM items", prefetch=1, model=Item) as rows:
        assert [item async for item in rows] == [Item(1, "a"), Item(2, "b")]
    async with fake.transaction() as tx:
        assert [r["id"] async for r in tx.cursor("SELECT id, name FROM items")] == [1, 2]
    assert [call.method for call in fake.calls] == [
        "begin",
        "cursor",
        "commit",
        "begin",
        "cursor",
        "commit",
    ]
    with pytest.raises(TypeError, match=r"async with client\.cursor"):
        async for _ in fake.cursor("SELECT 1"):  # type: ignore[attr-defined]
            pass


async def test_fake_copy_is_recorded() -> None:
    fake = FakeMainDB()
    status = await fake.copy_records_to_table("items", records=[(1, "a"), (2, "b")])
    assert status == "COPY 2"
    fake.script("COPY items TO STDOUT", "COPY 7")
    assert await fake.copy_from_table("items", output=bytearray()) == "COPY 7"
    async with fake.transaction() as tx:
        assert await tx.copy_from_query("SELECT 1", output=None) == "COPY 0"
    copy_in = fake.calls[0]
    assert (copy_in.method, copy_in.query) == ("copy_records_to_table", "COPY items FROM STDIN")
    assert copy_in.args == ((1, "a"), (2, "b"))
    assert fake.calls[-2].query == "COPY (SELECT 1) TO STDOUT"
    assert fake.calls[-2].in_transaction


async def test_fake_listen_is_fed_by_the_test() -> None:
    fake = FakeMainDB()
    async with fake.listen("orders") as notifications:
        assert fake.notify("orders", "o1") == 1
        assert fake.notify("elsewhere", "x") == 0
        fake.simulate_reconnect()
        fake.notify("orders", "o2")
        items = [await anext(notifications) for _ in range(3)]
    assert items[0] == Notification("orders", "o1", 0)
    assert isinstance(items[1], NotificationGap)
    assert items[1].reason == "reconnected"
    assert items[2] == Notification("orders", "o2", 0)
    assert fake.calls == [FakeCall("listen", args=("orders",))]
    assert fake.notify("orders") == 0  # the block ended


def test_fake_record_reads_like_a_record() -> None:
    row = FakeRecord({"id": 1, "name": "ada", "country": "GB"})
    assert row["name"] == "ada"
    assert row[0] == 1
    assert row[2] == "GB"
    assert row[-1] == "GB"
    assert dict(row) == {"id": 1, "name": "ada", "country": "GB"}
    assert list(row.keys()) == ["id", "name", "country"]
    assert list(row.values()) == [1, "ada", "GB"]
    assert list(row.items())[1] == ("name", "ada")
    assert len(row) == 3
    assert row.get("name") == "ada"
    assert row.get("missing", "default") == "default"
    assert "name" in row
    assert repr(row) == "<FakeRecord id=1 name='ada' country='GB'>"
    with pytest.raises(KeyError):
        row["missing"]
    with pytest.raises(IndexError):
        row[3]


def test_fake_record_copies_its_values() -> None:
    values = {"id": 1}
    row = FakeRecord(values)
    values["id"] = 2
    assert row["id"] == 1


RECORD_BEHAVIOURS: list[Any] = [
    pytest.param(lambda row: row["a"], id="by-name"),
    pytest.param(lambda row: row[1], id="by-index"),
    pytest.param(lambda row: row[-1], id="negative-index"),
    pytest.param(dict, id="dict"),
    pytest.param(lambda row: list(row.keys()), id="keys"),
    pytest.param(lambda row: list(row.values()), id="values"),
    pytest.param(lambda row: list(row.items()), id="items"),
    pytest.param(lambda row: row.get("b"), id="get"),
    pytest.param(len, id="len"),
    pytest.param(lambda row: "a" in row, id="contains-name"),
    pytest.param(
        list,
        id="iterate",
    ),
    pytest.param(
        lambda row: (1 in row, 5 in row),
        id="contains-non-name",
    ),
    pytest.param(
        lambda row: row[0:2],
        id="slice",
    ),
]


@pytest.mark.parametrize("behaviour", RECORD_BEHAVIOURS)
async def test_fake_record_matches_a_real_record(
    servers: Servers, behaviour: Callable[[Any], Any]
) -> None:
    connection = await asyncpg.connect(servers.main.dsn(), timeout=10)
    try:
        real = await connection.fetchrow("SELECT 1 AS a, 'x'::text AS b")
    finally:
        await connection.close()
    fake = FakeRecord({"a": 1, "b": "x"})
    assert behaviour(fake) == behaviour(real)


# -- override_with_fakes ------------------------------------------------------


class AppContainer(containers.DeclarativeContainer):
    """An application container embedding the library's, as the README shows."""

    db = providers.Container(DatabaseContainer)


@inject
async def user_report(
    user_id: int,
    main: MainDB = Provide[AppContainer.db.main_db],
    reference: ReferenceDB = Provide[AppContainer.db.reference_db],
) -> dict[str, Any]:
    """An application handler: a user from main, its customs code from reference."""
    user = await main.fetchrow("SELECT name, country FROM users WHERE id = $1", user_id)
    assert user is not None
    code = await reference.fetchval(
        "SELECT customs_code FROM dc_customs WHERE country = $1", user["country"]
    )
    return {"name": user["name"], "customs": code, "main": main, "reference": reference}


@inject
async def injected_databases(
    main: MainDB = Provide[AppContainer.db.main_db],
    reference: ReferenceDB = Provide[AppContainer.db.reference_db],
) -> tuple[MainDB, ReferenceDB]:
    """What the application container injects right now."""
    return main, reference


def test_override_with_fakes_on_a_bare_container() -> None:
    container = DatabaseContainer()
    mine = FakeDatabases(main=FakeMainDB(strict=True))
    with override_with_fakes(container, mine) as fakes:
        assert fakes is mine
        assert container.main_db() is mine.main
        assert container.reference_db() is mine.reference
        assert container.main_pool() is None
        assert container.reference_pool() is None
        assert fakes.for_database("reference") is mine.reference
        assert fakes.for_database(Database.MAIN) is mine.main
    assert not container.main_db.overridden
    assert not container.main_pool.overridden
    assert not container.reference_db.overridden
    assert not container.reference_pool.overridden


async def test_override_with_fakes_in_an_application_container(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside the override no pool opens, even with real DSNs set; afterwards all is real."""
    monkeypatch.setenv("POSTGRES_DSN", servers.main_dsn)
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", servers.reference_dsn)
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "2")
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "2")
    get_postgres_config.cache_clear()

    app = AppContainer()
    app.wire(modules=[sys.modules[__name__]])
    try:
        with override_with_fakes(app.db) as fakes:
            fakes.main.script(
                "SELECT name, country FROM users WHERE id = $1",
                lambda user_id: {"name": f"user-{user_id}", "country": "FI"},
            )
            fakes.reference.script(
                "SELECT customs_code FROM dc_customs WHERE country = $1", "FI-TULLI"
            )
            await start_databases(app.db)
            try:
                report = await user_report(7)
                assert await resolve(app.db.main_db) is fakes.main
                # The servers saw nothing: no pool was opened for either database.
                assert await count_connections(servers.main, "wellwon_db:main") == 0
                assert await count_connections(servers.reference, "wellwon_db:reference") == 0
            finally:
                await stop_databases(app.db)
            assert report["main"] is fakes.main
            assert report["reference"] is fakes.reference
            assert (report["name"], report["customs"]) == ("user-7", "FI-TULLI")
            assert fakes.main.calls == [
                FakeCall("fetchrow", "SELECT name, country FROM users WHERE id = $1", (7,))
            ]
            assert fakes.reference.calls[0].args == ("FI",)

        # Out of the override, the real providers are back and do open pools.
        main = app.db.main_db()
        assert not isinstance(main, FakeMainDB)
        assert isinstance(main, MainDB)
        assert not isinstance(app.db.reference_db(), FakeReferenceDB)
        await start_databases(app.db)
        try:
            assert await count_connections(servers.main, "wellwon_db:main") == 1
            assert await count_connections(servers.reference, "wellwon_db:reference") == 1
            assert await main.fetchval("SELECT current_database()") == "wellwon_main"
            injected_main, injected_reference = await injected_databases()
            assert injected_main is main
            assert await injected_reference.fetchval("SELECT current_database()") == (
                "wellwon_reference"
            )
        finally:
            await stop_databases(app.db)

        async def main_pool_gone() -> bool:
            return await count_connections(servers.main, "wellwon_db:main") == 0

        await wait_until(main_pool_gone)
    finally:
        app.unwire()
