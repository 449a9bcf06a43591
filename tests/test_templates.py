"""``TemplateDatabases``: per-test copies of template databases, on a real server."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import wait_until
from wellwon_db import ConfigurationError
from wellwon_db.testing import PostgresServer
from wellwon_db.testing._templates import TemplateDatabases, ram_directory

SCHEMA = "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'a');"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer("templates") as server:
        yield server


async def _fetchval(dsn: str, query: str) -> object:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


async def _databases(server: PostgresServer, prefix: str) -> set[str]:
    connection = await asyncpg.connect(server.dsn(), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"
        )
        return {row["datname"] for row in rows}
    finally:
        await connection.close()


async def test_each_clone_is_a_fresh_copy_of_every_template(server: PostgresServer) -> None:
    templates = TemplateDatabases(server, {"main": SCHEMA, "reference": None}, prefix="fresh")
    try:
        first = templates.clone()
        assert set(first) == {"main", "reference"}
        assert await _fetchval(first["main"], "SELECT current_database()") == "fresh_1_main"
        assert await _fetchval(first["reference"], "SELECT current_database()") == (
            "fresh_1_reference"
        )
        assert await _fetchval(first["main"], "INSERT INTO items VALUES (2, 'b')") is None
        assert await _fetchval(first["main"], "SELECT count(*) FROM items") == 2
        assert await _fetchval(first["reference"], "SELECT to_regclass('items')") is None

        second = templates.clone()
        assert second["main"] != first["main"]
        assert await _fetchval(second["main"], "SELECT count(*) FROM items") == 1
    finally:
        templates.close()


async def test_dropped_copies_and_the_copy_made_ahead_go_away(server: PostgresServer) -> None:
    templates = TemplateDatabases(server, {"main": None}, prefix="gone")
    dsns = templates.clone()  # also starts gone_2_main, for the next test
    await wait_until(lambda: _has(server, "gone_2_main"))
    templates.drop(dsns)
    await wait_until(lambda: _lacks(server, "gone_1_main"))
    templates.close()
    # The template stays (the server is thrown away); no copy does.
    assert await _databases(server, "gone") == {"gone_template_main"}


async def _has(server: PostgresServer, name: str) -> bool:
    return name in await _databases(server, name)


async def _lacks(server: PostgresServer, name: str) -> bool:
    return name not in await _databases(server, name)


async def test_drop_ends_sessions_left_open(server: PostgresServer) -> None:
    templates = TemplateDatabases(server, {"main": None}, prefix="open")
    try:
        dsns = templates.clone()
        leftover = await asyncpg.connect(dsns["main"])
        templates.drop(dsns)
        await wait_until(lambda: _lacks(server, "open_1_main"))
        assert leftover.is_closed() or not await _alive(leftover)
    finally:
        templates.close()


async def _alive(connection: asyncpg.Connection) -> bool:
    try:
        await connection.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return False
    return True


async def test_setups_sql_file_sync_and_async_functions(
    server: PostgresServer, tmp_path: Path
) -> None:
    sql_file = tmp_path / "schema.sql"
    sql_file.write_text("CREATE TABLE from_file (x int);")
    seen: list[str] = []

    def sync_setup(dsn: str) -> None:
        # A migration tool that runs its own event loop, as alembic's async template does.
        seen.append(dsn)
        asyncio.run(_fetchval(dsn, "CREATE TABLE from_sync (x int)"))

    async def async_setup(dsn: str) -> None:
        await _fetchval(dsn, "CREATE TABLE from_async (x int)")

    templates = TemplateDatabases(
        server,
        {"main": sql_file, "reference": sync_setup, "audit": async_setup},
        prefix="kinds",
    )
    try:
        dsns = templates.clone()
        assert await _fetchval(dsns["main"], "SELECT to_regclass('from_file')::text") == (
            "from_file"
        )
        assert await _fetchval(dsns["reference"], "SELECT to_regclass('from_sync')::text") == (
            "from_sync"
        )
        assert await _fetchval(dsns["audit"], "SELECT to_regclass('from_async')::text") == (
            "from_async"
        )
        assert seen == [server.dsn("kinds_template_reference")]  # once, on the template
        templates.clone()
        assert len(seen) == 1
    finally:
        templates.close()


def test_a_setup_that_leaves_a_connection_open_does_not_block_copies(
    server: PostgresServer,
) -> None:
    loop = asyncio.new_event_loop()
    left_open: list[asyncpg.Connection] = []

    def setup(dsn: str) -> None:
        left_open.append(loop.run_until_complete(asyncpg.connect(dsn)))

    templates = TemplateDatabases(server, {"main": setup}, prefix="leftopen")
    try:
        dsns = templates.clone()
        assert asyncio.run(_fetchval(dsns["main"], "SELECT 1")) == 1
        assert left_open  # the set-up did leave its connection
    finally:
        templates.close()
        for connection in left_open:
            connection.terminate()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def test_a_failing_setup_names_the_database_then_fails_fast(server: PostgresServer) -> None:
    templates = TemplateDatabases(
        server, {"main": None, "reference": "CREATE TABLE broken ("}, prefix="failing"
    )
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError) as first:
            templates.clone()
        assert any(
            "setting up the reference database's template failing_template_reference" in note
            for note in getattr(first.value, "__notes__", [])
        )
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="could not be set up") as second:
            templates.clone()
        assert time.monotonic() - started < 5
        assert second.value.__cause__ is first.value
    finally:
        templates.close()


def test_clone_is_synchronous_and_works_from_a_running_loop(server: PostgresServer) -> None:
    templates = TemplateDatabases(server, {"main": SCHEMA}, prefix="inloop")

    async def inside() -> dict[str, str]:
        return templates.clone()

    try:
        dsns = asyncio.run(inside())
        assert asyncio.run(_fetchval(dsns["main"], "SELECT count(*) FROM items")) == 1
    finally:
        templates.close()
    with pytest.raises(RuntimeError, match="closed"):
        templates.clone()


async def test_databases_in_a_tablespace_directory_removed_on_close(
    server: PostgresServer,
) -> None:
    parent = Path(tempfile.mkdtemp(prefix="wellwon-test-tablespaces-"))
    os.chmod(parent, 0o755)  # the server's account must reach it
    try:
        templates = TemplateDatabases(
            server, {"main": SCHEMA}, prefix="spaced", tablespace_dir=parent
        )
        dsns = templates.clone()
        location = templates.tablespace_location
        assert location is not None
        assert location.parent == parent
        tablespace = await _fetchval(
            dsns["main"],
            "SELECT spcname FROM pg_tablespace t JOIN pg_database d "
            "ON d.dattablespace = t.oid WHERE d.datname = current_database()",
        )
        assert tablespace == "spaced_space"
        assert any(location.iterdir())  # the copy's files are there
        templates.drop(dsns)
        templates.close()
        assert not location.exists()
        assert await _databases(server, "spaced") == set()
        assert (
            await _fetchval(
                server.dsn(), "SELECT count(*) FROM pg_tablespace WHERE spcname = 'spaced_space'"
            )
            == 0
        )
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_ram_directory_is_dev_shm_or_none() -> None:
    found = ram_directory()
    if found is None:
        assert not Path("/dev/shm").is_dir() or shutil.disk_usage("/dev/shm").free < 1 << 30
    else:
        assert found == Path("/dev/shm")
        assert shutil.disk_usage(found).free >= 1 << 30


def test_bad_arguments(server: PostgresServer) -> None:
    with pytest.raises(ConfigurationError, match="main_replica is a replica database"):
        TemplateDatabases(server, {"main_replica": None})
    with pytest.raises(ConfigurationError, match="no databases"):
        TemplateDatabases(server, {})
    with pytest.raises(ConfigurationError):
        TemplateDatabases(server, {"no such db": None})
    with pytest.raises(ValueError, match="strategy"):
        TemplateDatabases(server, {"main": None}, strategy="copy")


@pytest.mark.parametrize("strategy", ["file_copy", "wal_log"])
async def test_both_strategies_copy(server: PostgresServer, strategy: str) -> None:
    templates = TemplateDatabases(server, {"main": SCHEMA}, prefix=strategy, strategy=strategy)
    try:
        dsns = templates.clone()
        assert await _fetchval(dsns["main"], "SELECT count(*) FROM items") == 1
    finally:
        templates.close()
