"""Connection set-up: the init hook, server settings and the JSON codec, on every connection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from dependency_injector import providers

from tests.helpers import Servers, wait_until
from wellwon_db import (
    ConfigurationError,
    ConnectionSetup,
    Database,
    DatabaseContainer,
    MainDB,
    PostgresConfig,
    get_postgres_config,
    start_databases,
    stop_databases,
)
from wellwon_db.config._connection import connection_setup_for

TIMEZONE = "Pacific/Chatham"


@contextlib.asynccontextmanager
async def started(container: DatabaseContainer) -> AsyncIterator[MainDB]:
    await start_databases(container)
    try:
        yield container.main_db()
    finally:
        await stop_databases(container)


def _tagged_uuid(text: str) -> str:
    return f"uuid:{text}"


async def test_every_connection_of_the_pool_is_set_up(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "3")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "4")
    set_up: list[int] = []

    async def init(connection: asyncpg.Connection[Any]) -> None:
        await connection.set_type_codec(
            "uuid", schema="pg_catalog", encoder=str, decoder=_tagged_uuid, format="text"
        )
        set_up.append(connection.get_server_pid())

    container = DatabaseContainer()
    container.connection_init.override(
        providers.Dict(
            main=ConnectionSetup(init=init, server_settings={"timezone": TIMEZONE}),
        )
    )
    async with started(container) as main:
        assert len(set_up) == 3  # min_size, each set up once
        release = asyncio.Event()
        seen: list[tuple[int, str, str]] = []

        async def hold() -> None:
            async with main.transaction() as tx:
                row = await tx.fetchrow(
                    "SELECT pg_backend_pid() AS pid, gen_random_uuid() AS id, "
                    "current_setting('timezone') AS tz"
                )
                assert row is not None
                seen.append((row["pid"], row["id"], row["tz"]))
                await release.wait()

        # Four at once: the three opened at start-up and one opened under load.
        holders = [asyncio.create_task(hold()) for _ in range(4)]

        async def all_held() -> bool:
            return len(seen) == 4

        await wait_until(all_held)
        release.set()
        await asyncio.gather(*holders)
        assert len({pid for pid, _, _ in seen}) == 4
        assert all(value.startswith("uuid:") for _, value, _ in seen)
        assert {tz for _, _, tz in seen} == {TIMEZONE}
        assert sorted(set_up) == sorted(pid for pid, _, _ in seen)

        # The pool's reset (RESET ALL after a SET) returns to the server settings.
        await main.execute("SET timezone = 'UTC'")
        for _ in range(8):
            assert await main.fetchval("SELECT current_setting('timezone')") == TIMEZONE

        # A replacement for a terminated connection is set up too.
        victim = seen[0][0]
        size = main.pool.get_stats()["size"]
        await main.fetchval("SELECT pg_terminate_backend($1)", victim)

        async def noticed() -> bool:
            return bool(main.pool.get_stats()["size"] < size)

        await wait_until(noticed)
        pids: list[int] = []
        async with contextlib.AsyncExitStack() as stack:
            scopes = [await stack.enter_async_context(main.transaction()) for _ in range(4)]
            for scope in scopes:
                pids.append(await scope.fetchval("SELECT pg_backend_pid()"))
                assert str(await scope.fetchval("SELECT gen_random_uuid()")).startswith("uuid:")
        assert victim not in pids
        assert set(pids) <= set(set_up)


async def test_a_failing_init_hook_fails_start_up_and_names_the_database(
    db_env: Servers,
) -> None:
    async def init(connection: asyncpg.Connection[Any]) -> None:
        raise RuntimeError("codec registry unavailable")

    container = DatabaseContainer()
    container.connection_init.override(providers.Dict(main=init))
    with pytest.raises(RuntimeError, match="codec registry unavailable") as caught:
        await start_databases(container)
    assert any("main database" in note for note in getattr(caught.value, "__notes__", []))
    assert container.main_slot().pool is None


def test_a_replica_database_gets_its_primarys_setup() -> None:
    async def init(connection: asyncpg.Connection[Any]) -> None:
        return None

    mapping = {"main": init}
    setup = connection_setup_for(mapping, "main_replica", "main")
    assert setup is not None
    assert setup.init is init
    assert connection_setup_for(mapping, "reference") is None
    assert connection_setup_for(None, "main") is None
    assert connection_setup_for({"MAIN": init}, "main") is not None  # names in any case


def test_a_setup_for_an_undeclared_database_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def init(connection: asyncpg.Connection[Any]) -> None:
        return None

    with caplog.at_level("WARNING", logger="wellwon_db.pool"):
        assert connection_setup_for({"mian": init}, "main") is None
    assert "'mian', which is no declared database" in caplog.text


def test_setup_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="PG_\\[<DB>_\\]POOL_APPLICATION_NAME"):
        ConnectionSetup(server_settings={"application_name": "mine"})
    with pytest.raises(ConfigurationError, match="string values"):
        ConnectionSetup(server_settings={"work_mem": 64})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="async function"):
        ConnectionSetup(init="SET work_mem = '64MB'")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ConnectionSetup or an async function"):
        connection_setup_for({"main": 42}, "main")
    with pytest.raises(ConfigurationError, match="database"):
        connection_setup_for({"no such db": print}, "main")
    given = {"work_mem": "64MB"}
    setup = ConnectionSetup(server_settings=given)
    given["work_mem"] = "1GB"
    assert setup.server_settings == {"work_mem": "64MB"}


def test_json_codec_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    config = PostgresConfig.load(env_file=None)
    assert config.get_pool_config(Database.MAIN).json_codec == "text"
    monkeypatch.setenv("PG_POOL_JSON_CODEC", "python")
    config = PostgresConfig.load(env_file=None)
    assert config.get_pool_config(Database.MAIN).json_codec == "python"
    assert config.get_pool_config(Database.REFERENCE).json_codec == "text"
    # A replica answers as its primary unless set on its own.
    assert config.get_pool_config(Database.MAIN_REPLICA).json_codec == "python"
    monkeypatch.setenv("PG_MAIN_REPLICA_POOL_JSON_CODEC", "text")
    config = PostgresConfig.load(env_file=None)
    assert config.get_pool_config(Database.MAIN_REPLICA).json_codec == "text"
    monkeypatch.setenv("PG_POOL_JSON_CODEC", "orjson")
    with pytest.raises(ConfigurationError, match="PG_POOL_JSON_CODEC") as caught:
        PostgresConfig.load(env_file=None)
    assert caught.value.env_var == "PG_POOL_JSON_CODEC"


@pytest.fixture
def table() -> str:
    return f"docs_{uuid.uuid4().hex[:10]}"


async def _make_json_table(main: MainDB, table: str) -> None:
    await main.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, doc jsonb, raw json)")


async def test_json_is_text_by_default(db_env: Servers, table: str) -> None:
    async with started(DatabaseContainer()) as main:
        await _make_json_table(main, table)
        await main.execute(
            f"INSERT INTO {table} VALUES (1, $1, $2)", '{"a": [1, 2]}', '{"b":  true}'
        )
        row = await main.fetchrow(f"SELECT doc, raw FROM {table}")
        assert row is not None
        assert row["doc"] == '{"a": [1, 2]}'  # jsonb's own text form
        assert row["raw"] == '{"b":  true}'  # json keeps the text as sent
        with pytest.raises(asyncpg.DataError):
            await main.execute(f"INSERT INTO {table} VALUES (2, $1, NULL)", {"a": 1})


async def test_json_as_python_values(
    db_env: Servers, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_POOL_JSON_CODEC", "python")
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "2")
    get_postgres_config.cache_clear()
    async with started(DatabaseContainer()) as main:
        await _make_json_table(main, table)
        document = {"name": "Zoë", "tags": ["a", "b"], "n": 1.5, "nested": {"ok": True}}
        await main.execute(f"INSERT INTO {table} VALUES (1, $1, $2)", document, [1, None])
        async with main.transaction() as tx:  # statements in a transaction too
            await tx.execute(f"INSERT INTO {table} VALUES (2, $1, $2)", [], "text")
        rows = await main.fetch(f"SELECT id, doc, raw FROM {table} ORDER BY id")
        assert [(r["doc"], r["raw"]) for r in rows] == [(document, [1, None]), ([], "text")]
        # A str argument is a JSON string now, not JSON text.
        assert await main.fetchval(f"SELECT raw #>> '{{}}' FROM {table} WHERE id = 2") == "text"
        assert await main.fetchval("SELECT $1::jsonb ->> 'k'", {"k": "v"}) == "v"
        # Every connection of the pool answers alike.
        async with main.transaction() as a, main.transaction() as b:
            assert await a.fetchval("SELECT '{\"x\": 1}'::jsonb") == {"x": 1}
            assert await b.fetchval("SELECT '{\"x\": 1}'::json") == {"x": 1}
        with pytest.raises(asyncpg.DataError, match="not JSON serializable"):
            await main.execute(f"INSERT INTO {table} VALUES (3, $1, NULL)", {"at": object()})


async def test_a_hook_failing_on_a_later_connection_fails_that_call_only(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "2")
    opened: list[int] = []

    async def init(connection: asyncpg.Connection[Any]) -> None:
        opened.append(connection.get_server_pid())
        if len(opened) == 2:
            raise LookupError("no such codec")

    container = DatabaseContainer()
    container.connection_init.override(providers.Dict(main=init))
    async with started(container) as main, main.transaction() as held:
        with pytest.raises(LookupError, match="no such codec") as caught:
            await main.fetchval("SELECT 1")  # needs a second connection
        assert any("main database" in note for note in caught.value.__notes__)
        assert await held.fetchval("SELECT 1") == 1
        assert await main.fetchval("SELECT 2") == 2  # the third attempt is set up fine
        assert main.pool.get_stats()["size"] == 2
        assert len(opened) == 3
