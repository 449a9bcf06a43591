"""No name the library puts into SQL text can change what the SQL does.

Hostile table, schema and channel names go through the cache's invalidation
triggers and the cached-read path on a real server; a sentinel table shows
that nothing else ran, and the triggers and notifications show that the
names meant what they say.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.helpers import Servers, wait_until
from wellwon_db import ConfigurationError, DatabaseContainer, database_lifespan
from wellwon_db.client._cached import install_triggers, invalidation_sql
from wellwon_db.client._listener import quote_identifier

HOSTILE_TABLES = [
    ('x"; DROP TABLE sentinel; --',),
    ("we.ird", "dots.in.name"),
    ("Ünïcødé ''quoted'' \"table\"",),
    ("public", "a\\b"),
]
HOSTILE_CHANNEL = "c'; DROP TABLE sentinel; --\\"


def _sql_name(parts: tuple[str, ...]) -> str:
    return ".".join(quote_identifier(part) for part in parts)


@pytest.fixture
async def connection(db_env: Servers) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_env.reference_dsn)
    await conn.execute(
        'DROP SCHEMA IF EXISTS "we.ird" CASCADE; CREATE SCHEMA "we.ird";'
        "DROP TABLE IF EXISTS sentinel; CREATE TABLE sentinel (n int); "
        "INSERT INTO sentinel VALUES (1)"
    )
    for parts in HOSTILE_TABLES:
        await conn.execute(f"DROP TABLE IF EXISTS {_sql_name(parts)}")
        await conn.execute(f"CREATE TABLE {_sql_name(parts)} (id int PRIMARY KEY, v text)")
    try:
        yield conn
    finally:
        for parts in HOSTILE_TABLES:
            await conn.execute(f"DROP TABLE IF EXISTS {_sql_name(parts)}")
        await conn.execute('DROP SCHEMA IF EXISTS "we.ird" CASCADE; DROP TABLE sentinel')
        await conn.close()


async def _trigger_arguments(conn: asyncpg.Connection, parts: tuple[str, ...]) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT t.tgargs FROM pg_trigger t WHERE t.tgrelid = $1::regclass AND NOT t.tgisinternal",
        _sql_name(parts),
    )
    return [bytes(row["tgargs"]) for row in rows]


@pytest.mark.parametrize("standard_conforming_strings", ["on", "off"])
async def test_hostile_tables_and_channel_install_exactly_their_triggers(
    connection: asyncpg.Connection, standard_conforming_strings: str
) -> None:
    await connection.execute(f"SET standard_conforming_strings = {standard_conforming_strings}")
    await connection.execute("SET escape_string_warning = off")
    await install_triggers(connection, HOSTILE_TABLES, HOSTILE_CHANNEL)
    assert await connection.fetchval("SELECT count(*) FROM sentinel") == 1
    for parts in HOSTILE_TABLES:
        # One trigger, whose argument is the channel, byte for byte.
        assert await _trigger_arguments(connection, parts) == [HOSTILE_CHANNEL.encode() + b"\x00"]

    # A change notifies that channel with the table's own name.
    notified: asyncio.Queue[str] = asyncio.Queue()
    await connection.add_listener(HOSTILE_CHANNEL, lambda *args: notified.put_nowait(args[3]))
    for parts in HOSTILE_TABLES:
        await connection.execute(f"INSERT INTO {_sql_name(parts)} VALUES (1, 'x')")
        payload = await asyncio.wait_for(notified.get(), timeout=5)
        assert payload.rsplit(" ", 1)[0] == parts[-1]
    assert await connection.fetchval("SELECT count(*) FROM sentinel") == 1


def test_names_no_identifier_can_hold_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="channel"):
        invalidation_sql(["t"], "bad\x00channel")
    with pytest.raises(ConfigurationError, match="not a table name"):
        invalidation_sql([("a", "b", "c")], "c")
    with pytest.raises(ConfigurationError, match="not a table name"):
        invalidation_sql([""], "c")
    with pytest.raises(ValueError, match="not a usable identifier"):
        quote_identifier("a\x00b")


async def test_a_cached_read_of_a_hostile_table_is_invalidated(
    db_env: Servers, connection: asyncpg.Connection
) -> None:
    parts = HOSTILE_TABLES[0]
    await connection.execute(f"INSERT INTO {_sql_name(parts)} VALUES (1, 'before')")
    query = f"SELECT v FROM {_sql_name(parts)} WHERE id = $1"
    container = DatabaseContainer()
    async with database_lifespan(container):
        reference = container.reference_db()
        await reference.cached.install_invalidation(parts)
        assert await reference.cached.fetchval(query, 1) == "before"
        await connection.execute(f"UPDATE {_sql_name(parts)} SET v = 'after'")

        async def fresh() -> bool:
            return await reference.cached.fetchval(query, 1) == "after"

        await wait_until(fresh, timeout=5)
    assert await connection.fetchval("SELECT count(*) FROM sentinel") == 1
