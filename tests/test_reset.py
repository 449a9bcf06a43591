"""The reset policy: no session state reaches the next user, and clean queries cost no reset.

Each test uses a one-connection pool so that the next user gets the very
same server session (checked by backend pid) the previous one dirtied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.helpers import Servers
from wellwon_db import DatabaseContainer, MainDB, get_postgres_config, start_databases
from wellwon_db import stop_databases as stop


@pytest.fixture(params=["smart", "always"])
async def one_connection(
    request: pytest.FixtureRequest, db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MainDB]:
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "1")
    monkeypatch.setenv("PG_POOL_RESET", request.param)
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    yield container.main_db()
    await stop(container)


async def _session_state(client: MainDB) -> dict[str, object]:
    row = await client.fetchrow(
        """
        SELECT pg_backend_pid() AS pid,
               current_setting('search_path') AS search_path,
               current_setting('statement_timeout') AS statement_timeout,
               NULLIF(current_setting('wellwon.custom', true), '') AS custom,
               current_user AS role,
               (SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
               (SELECT count(*) FROM pg_listening_channels()) AS listening,
               (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors,
               (SELECT count(*) FROM pg_class
                 WHERE relpersistence = 't' AND relkind = 'r'
                   AND pg_table_is_visible(oid)) AS temp_tables,
               (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
             + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema())
                 AS temp_objects
        """
    )
    assert row is not None
    return dict(row)


async def _in_transaction(client: MainDB) -> bool:
    """Inside a transaction now() stands still; outside, every statement gets its own."""
    first = await client.fetchval("SELECT now()")
    second = await client.fetchval("SELECT now()")
    return bool(first == second)


CLEAN = {
    "search_path": '"$user", public',
    "statement_timeout": "0",
    "custom": None,
    "role": "postgres",
    "advisory_locks": 0,
    "listening": 0,
    "cursors": 0,
    "temp_tables": 0,
    "temp_objects": 0,
}

DIRTY_STATEMENTS = [
    "SET search_path = pg_catalog",
    "SET statement_timeout = '5s'",
    "/* leading comment */ set search_path to pg_catalog",
    "SELECT set_config('wellwon.custom', 'x', false)",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_try_advisory_lock_shared(7)",
    "LISTEN wellwon_channel",
    "CREATE TEMP TABLE scratch (x int)",
    "SELECT 1 AS x INTO TEMP scratch2",
    "DO $$ BEGIN PERFORM set_config('wellwon.custom', 'y', false); END $$",
]


@pytest.mark.parametrize("statement", DIRTY_STATEMENTS)
async def test_statement_state_does_not_leak(one_connection: MainDB, statement: str) -> None:
    client = one_connection
    pid = (await _session_state(client))["pid"]
    await client.execute(statement)
    state = await _session_state(client)
    assert state.pop("pid") == pid, "not the same session: the test proves nothing"
    assert state == CLEAN


# Leaks the smart policy once missed: objects created through the pg_temp
# schema, and function names spelled so that no text pattern sees them.
HIDDEN_STATE = [
    "CREATE TABLE pg_temp.leak_table (x int)",
    "CREATE TABLE pg_temp.leak_table AS SELECT 1 AS x",
    "SELECT 1 AS x INTO pg_temp.leak_table",
    "CREATE FUNCTION pg_temp.leak_function() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    """SELECT "set_config"('search_path', 'pg_catalog', false)""",
    "SELECT set_config/**/('search_path', 'pg_catalog', false)",
    r"""SELECT U&"set\005fconfig"('search_path', 'pg_catalog', false)""",
    'SELECT "pg_advisory_lock"(42)',
    "SELECT pg_advisory_lock/* x */(42)",
]


async def _run(client: MainDB, statement: str, through: str) -> None:
    if through == "call":
        await client.execute(statement)
    else:
        async with client.transaction() as tx:
            await tx.execute(statement)


@pytest.mark.parametrize("through", ["call", "transaction"])
@pytest.mark.parametrize("statement", HIDDEN_STATE)
async def test_hidden_session_state_does_not_leak(
    one_connection: MainDB, statement: str, through: str
) -> None:
    client = one_connection
    pid = (await _session_state(client))["pid"]
    await _run(client, statement, through)
    state = await _session_state(client)
    assert state.pop("pid") == pid, "not the same session: the test proves nothing"
    assert state == CLEAN


@pytest.mark.parametrize("through", ["call", "transaction"])
@pytest.mark.parametrize(
    ("statement", "sequence"),
    [
        ("SELECT nextval('leak_sequence')", "leak_sequence"),
        ("INSERT INTO leak_serial (x) VALUES (1)", "leak_serial_id_seq"),
    ],
)
async def test_sequence_state_does_not_leak(
    one_connection: MainDB, statement: str, sequence: str, through: str
) -> None:
    client = one_connection
    await client.execute(
        "CREATE SEQUENCE IF NOT EXISTS leak_sequence;"
        "CREATE TABLE IF NOT EXISTS leak_serial (id serial PRIMARY KEY, x int)"
    )
    pid = await client.fetchval("SELECT pg_backend_pid()")
    await _run(client, statement, through)
    assert await client.fetchval("SELECT pg_backend_pid()") == pid
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="lastval"):
        await client.fetchval("SELECT lastval()")
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="currval"):
        await client.fetchval("SELECT currval($1::regclass)", sequence)


async def test_sequence_state_is_discarded_lazily(one_connection: MainDB) -> None:
    """An INSERT costs no reset: the earlier borrower's lastval() is discarded only before
    a statement that reads it, through every way in (a call, a transaction, raw use)."""
    client = one_connection
    await client.execute("CREATE TABLE IF NOT EXISTS lazy_serial (id serial PRIMARY KEY, x int)")
    resets = client.pool.get_stats()["resets"]
    for n in range(20):
        await client.execute("INSERT INTO lazy_serial (x) VALUES ($1)", n)
        async with client.transaction() as tx:
            await tx.execute("INSERT INTO lazy_serial (x) VALUES ($1)", n)
    if client.pool.config.reset == "smart":  # (`always` resets after every use)
        assert client.pool.get_stats()["resets"] == resets  # no round trip after any
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="lastval"):
        await client.fetchval("SELECT lastval()")
    await client.execute("INSERT INTO lazy_serial (x) VALUES (1)")
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="lastval"):
        async with client.transaction() as tx:
            await tx.fetchval("SELECT lastval()")
    await client.execute("INSERT INTO lazy_serial (x) VALUES (1)")
    async with client.acquire() as connection:
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="currval"):
            await connection.fetchval("SELECT currval('lazy_serial_id_seq')")
    # A statement that sets and reads it in one go reads its own.
    await client.execute("INSERT INTO lazy_serial (x) VALUES (1)")
    own = await client.fetchval("INSERT INTO lazy_serial (x) VALUES (2) RETURNING lastval()")
    assert own == await client.fetchval("SELECT max(id) FROM lazy_serial")


async def test_sequence_state_stays_within_its_own_lease(one_connection: MainDB) -> None:
    """The reset comes after the lease: a transaction still reads its own lastval()."""
    client = one_connection
    await client.execute("CREATE SEQUENCE IF NOT EXISTS own_sequence")
    async with client.transaction() as tx:
        value = await tx.fetchval("SELECT nextval('own_sequence')")
        assert await tx.fetchval("SELECT lastval()") == value


async def test_raw_connection_state_does_not_leak(one_connection: MainDB) -> None:
    client = one_connection
    pid = (await _session_state(client))["pid"]
    async with client.acquire() as connection:
        await connection.execute("SET ROLE pg_monitor")
        await connection.execute("SELECT pg_advisory_lock(1)")
        await connection.execute("LISTEN raw_channel")
        await connection.execute("BEGIN")
        await connection.execute("DECLARE c CURSOR WITH HOLD FOR SELECT 1")
        await connection.execute("SET LOCAL statement_timeout = '1s'")
    state = await _session_state(client)
    assert state.pop("pid") == pid
    assert state == CLEAN
    assert not await _in_transaction(client), "still inside the abandoned transaction"


async def test_open_transaction_does_not_leak(one_connection: MainDB) -> None:
    client = one_connection
    await client.execute("DROP TABLE IF EXISTS leak_probe; CREATE TABLE leak_probe (x int)")
    await client.execute("BEGIN; INSERT INTO leak_probe VALUES (1)")
    # The same session would see its own uncommitted row.
    assert await client.fetchval("SELECT count(*) FROM leak_probe") == 0
    assert not await _in_transaction(client)


async def test_transaction_session_state_does_not_leak(one_connection: MainDB) -> None:
    client = one_connection
    async with client.transaction() as tx:
        await tx.execute("SET search_path = pg_catalog")
        await tx.execute("SELECT pg_advisory_lock(9)")
    state = await _session_state(client)
    state.pop("pid")
    assert state == CLEAN


async def test_statement_cache_invalidation_discards_the_connection(
    one_connection: MainDB,
) -> None:
    client = one_connection
    pid = await client.fetchval("SELECT pg_backend_pid()")
    await client.execute("PREPARE mine AS SELECT 1")
    assert await client.fetchval("SELECT pg_backend_pid()") != pid
    assert (
        await client.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE name = 'mine'")
        == 0
    )
    await client.execute("DISCARD ALL")
    # asyncpg's cached statements still work on the next (new) connection.
    assert await client.fetchval("SELECT $1::int + 1", 1) == 2


async def test_smart_policy_skips_the_reset_for_clean_queries(
    one_connection: MainDB,
) -> None:
    client = one_connection
    before = client.pool.get_stats()["resets"]
    for _ in range(20):
        await client.fetchval("SELECT 1")
        await client.execute("UPDATE pg_catalog.pg_class SET relname = relname WHERE false")
    resets = client.pool.get_stats()["resets"] - before
    assert resets == (0 if client.pool.config.reset == "smart" else 40)
