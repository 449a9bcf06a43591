"""``session_effect``: which statement texts leave session state behind (pure logic)."""

from __future__ import annotations

import json

import pytest
from pglast.parser import parse_sql_json

from wellwon_db.pool._session import SessionEffect, _tree_effect, session_effect

CLEAN = [
    "SELECT 1",
    "select * from users where id = $1",
    "UPDATE users SET name = $1 WHERE id = $2",
    "UPDATE t SET x=1",
    "DELETE FROM sessions WHERE expires_at < now()",
    "WITH recent AS (SELECT * FROM orders) SELECT count(*) FROM recent",
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT pg_try_advisory_xact_lock(42)",
    "SELECT pg_advisory_xact_lock_shared(42)",
    "SELECT pg_advisory_unlock(42)",
    "EXPLAIN ANALYZE SELECT 1",
    "SHOW search_path",
    "BEGIN",
    "COMMIT",
    "NOTIFY jobs, 'go'",
    "UNLISTEN jobs",
    "CREATE TABLE events (id int)",
    "CREATE TABLE events (id serial PRIMARY KEY, at timestamptz DEFAULT now())",
    "CREATE UNLOGGED TABLE scratch (id int)",
    "CREATE TABLE temp_readings (id int)",
    "CREATE SEQUENCE ids",
    "SELECT 1;",
    "SELECT 1; SELECT 2",
    "SELECT 1; -- a trailing comment",
    "/* ; */ SELECT 1",
    "",
    "-- only a comment",
    # Reading sequence state changes nothing.
    "SELECT lastval()",
    "SELECT currval('ids')",
    # Transaction-scoped: gone at COMMIT or ROLLBACK.
    "SET LOCAL statement_timeout = 100",
    "set local role reporting",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
    "SET CONSTRAINTS ALL DEFERRED",
    "BEGIN; SET LOCAL statement_timeout = 100; SELECT 1; COMMIT",
    "DECLARE c CURSOR FOR SELECT 1",
    "DECLARE c SCROLL CURSOR WITHOUT HOLD FOR SELECT 1",
    # A SET that belongs to another object's definition, not to this session.
    "ALTER ROLE app SET search_path = app",
    "ALTER DATABASE app SET statement_timeout = 0",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = app AS 'SELECT 1'",
]

# Words, names and text that look like a trigger but are not the statement or function.
LOOKALIKES = [
    "SELECT id FROM jobs ORDER BY id LIMIT 10 OFFSET 20",
    'SELECT "offset" FROM pages',
    "SELECT reset_at FROM jobs",
    "UPDATE jobs SET reset_at = now()",
    "SELECT * FROM settings",
    "SELECT * FROM user_settings WHERE key = $1",
    "SELECT dataset, doing, caller, declared_at, loader, listener FROM t",
    "SELECT my_set_config(1)",
    "SELECT set_configuration FROM app",
    "SELECT pg_advisory_lock_count FROM stats",
    "SELECT prepared_at, discarded FROM orders",
    "SELECT inserted FROM audit WHERE insert_count > 0",
    "SELECT nextval FROM counters",  # a column, not the function
    'SELECT "set_config" FROM app',
    "SELECT * FROM temp",
    # Inside literals and comments: the parser knows they are not code.
    "SELECT 'set_config(''search_path'', ''x'', false)'",
    "SELECT 'a;SET x'",
    "SELECT 1 -- ; SET search_path = x",
    "SELECT 1 /* set_config('a', 'b', false) */",
    "SELECT $$ pg_advisory_lock(1) $$",
    "SELECT 'CREATE TEMP TABLE x (a int)'",
    "SELECT 'pg_temp.x', E'INSERT INTO t VALUES (1)'",
    "SELECT 1 -- nextval('s')\n",
    'SELECT \'{"String":{"sval":"set_config"}}\'',
    'SELECT \'"InsertStmt":\' AS "ListenStmt"',
]

SEQUENCES = [
    "INSERT INTO users (name) VALUES ($1)",
    "insert into t default values",
    "INSERT INTO temp_readings VALUES (1)",
    "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET x = excluded.x",
    "WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved",
    "WITH added AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM added",
    "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
    "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
    "COPY t FROM STDIN",
    "UPDATE t SET id = DEFAULT",
    "ALTER TABLE t ADD COLUMN id bigserial",
    "ALTER TABLE t ADD COLUMN n int GENERATED ALWAYS AS IDENTITY",
    # nextval / setval in any spelling and place.
    "SELECT nextval('ids')",
    "SELECT NEXTVAL('ids')",
    "SELECT \"nextval\"('ids')",
    "SELECT nextval/**/('ids')",
    "SELECT pg_catalog.nextval('ids')",
    "SELECT U&\"next\\0076al\"('ids')",
    "SELECT setval('ids', 42)",
    "SELECT id FROM t WHERE id < (SELECT nextval('ids'))",
    "UPDATE t SET id = nextval('ids')",
    "SELECT 1; SELECT nextval('ids')",
]

RESET = [
    "SET search_path TO app",
    "set statement_timeout = 0",
    "SET SESSION statement_timeout = 0",
    "SET TIME ZONE 'UTC'",
    "SET SESSION AUTHORIZATION app",
    "SET ROLE reporting",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET x.y TO DEFAULT",
    "RESET ALL",
    "Reset search_path",
    # Under SET LOCAL search_path a plain CREATE may land in pg_temp.
    "SET LOCAL search_path = pg_temp, public",
    "LISTEN jobs",
    "listen jobs",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "DO $$ BEGIN PERFORM 1; END $$",
    "CALL refresh_totals()",
    "EXECUTE some_statement(1)",
    # Temporary relations.
    "CREATE TEMP TABLE t (id int)",
    "CREATE TEMPORARY TABLE t (id int)",
    "create temporary table t (id int)",
    "CREATE LOCAL TEMP TABLE t (id int)",
    "CREATE GLOBAL TEMPORARY TABLE t (id int)",
    "CREATE TEMP TABLE t (id int) ON COMMIT DROP",
    "CREATE TEMP TABLE IF NOT EXISTS t AS SELECT 1",
    "CREATE TEMP SEQUENCE s",
    "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
    "CREATE OR REPLACE TEMPORARY VIEW v AS SELECT 1",
    "CREATE\n  TEMP\tTABLE t (id int)",
    "SELECT * INTO TEMP t FROM users",
    "SELECT * INTO TEMPORARY TABLE t FROM users",
    "SELECT 1 INTO LOCAL TEMP t",
    "SELECT 1 INTO GLOBAL TEMPORARY TABLE t",
    "EXPLAIN ANALYZE SELECT 1 INTO TEMP t",
    # Anything created in the pg_temp schema.
    "CREATE TABLE pg_temp.x (a int)",
    "CREATE TABLE pg_temp.x AS SELECT 1",
    "SELECT 1 AS a INTO pg_temp.x",
    "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE OR REPLACE FUNCTION PG_TEMP.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE VIEW pg_temp.v AS SELECT 1",
    "CREATE SEQUENCE pg_temp.s",
    "CREATE TYPE pg_temp.mood AS ENUM ('ok')",
    "CREATE TYPE pg_temp.pair AS (a int, b int)",
    "CREATE DOMAIN pg_temp.positive AS int CHECK (VALUE > 0)",
    "CREATE TABLE pg_temp_3.x (a int)",
    "CREATE TABLE mydb.pg_temp.x (a int)",
    # Session-level functions, in any spelling and place.
    "SELECT set_config('app.user', $1, false)",
    "SELECT SET_CONFIG ('app.user', $1, true)",
    "SELECT \"set_config\"('search_path', 'x', false)",
    "SELECT set_config/**/('search_path', 'x', false)",
    "SELECT U&\"set\\005fconfig\"('search_path', 'x', false)",
    "SELECT pg_catalog.set_config('app.user', 'x', false)",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_advisory_lock (42)",
    'SELECT "pg_advisory_lock"(42)',
    "SELECT pg_advisory_lock/* x */(42)",
    "SELECT pg_advisory_lock_shared(42)",
    "SELECT pg_try_advisory_lock(42)",
    "SELECT pg_try_advisory_lock_shared(1, 2)",
    "SELECT PG_ADVISORY_LOCK(42)",
    "WITH s AS (SELECT set_config('a.b', 'c', false)) SELECT 1 FROM s",
    "SELECT * FROM set_config('a.b', 'c', false)",
    "SELECT id FROM t WHERE EXISTS (SELECT pg_advisory_lock(t.id))",
    "SELECT coalesce(NULL, length(set_config('a.b', 'c', false)))",
    "INSERT INTO t VALUES (pg_try_advisory_lock(1))",
    "VALUES (1, set_config('a.b', 'c', false))",
    "CREATE TABLE t (a text DEFAULT set_config('a.b', 'c', false))",
    "UPDATE t SET a = (SELECT set_config('a.b', 'c', false))",
    "SELECT CASE WHEN $1 THEN pg_advisory_lock(1) END",
    # Several statements: the worst of them.
    "SELECT 1; SET search_path TO app",
    "SELECT 1;SET search_path TO app",
    "SELECT 1;\n\n-- then\nRESET ALL",
    "INSERT INTO t VALUES (1); LISTEN jobs; SELECT 2",
    "SET search_path TO app; INSERT INTO t VALUES (1)",
    # After blanks and comments, the statement is still seen.
    "   \n\t SET search_path TO app",
    "-- set the path\nSET search_path TO app",
    "/* a block\n comment */ SET search_path TO app",
    "-- one\n/* two */\n-- three\n  LISTEN jobs",
]

# What the parser cannot read is reset, to be safe.
UNREADABLE = [
    "SELEC 1",
    "SELECT (",
    "SET search_path TO",
    "SELECT 1; SET search_path TO app; SELEC",
    "SELECT '\ud800'",  # not encodable as UTF-8
]

DISCARD = [
    "PREPARE q AS SELECT 1",
    "prepare q (int) as select $1",
    "DEALLOCATE q",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "discard plans",
    "DISCARD SEQUENCES",
    "/* first */ DISCARD ALL",
    "-- note\nDEALLOCATE ALL",
    "SELECT 1; DISCARD ALL",
    # A reset cannot undo these.
    "LOAD 'auto_explain'",
    "SELECT dblink_connect('other', 'dbname=x')",
    "SELECT dblink_connect_u('dbname=x')",
    "SELECT setseed(0.5)",
    # DISCARD wins over RESET in the same text.
    "SET search_path TO app; DISCARD ALL",
    "DISCARD ALL; SET search_path TO app",
]


@pytest.mark.parametrize("query", CLEAN)
def test_clean_statements_need_nothing(query: str) -> None:
    assert session_effect(query) is SessionEffect.NONE


@pytest.mark.parametrize("query", LOOKALIKES)
def test_lookalike_names_literals_and_comments_need_nothing(query: str) -> None:
    assert session_effect(query) is SessionEffect.NONE


@pytest.mark.parametrize("query", SEQUENCES)
def test_statements_that_set_sequence_state(query: str) -> None:
    assert session_effect(query) is SessionEffect.SEQUENCES


@pytest.mark.parametrize("query", RESET)
def test_session_changing_statements_need_a_reset(query: str) -> None:
    assert session_effect(query) is SessionEffect.RESET


@pytest.mark.parametrize("query", UNREADABLE)
def test_unreadable_text_gets_a_reset(query: str) -> None:
    assert session_effect(query) is SessionEffect.RESET


@pytest.mark.parametrize("query", DISCARD)
def test_state_a_reset_cannot_undo_discards_the_connection(query: str) -> None:
    assert session_effect(query) is SessionEffect.DISCARD


def test_deeply_nested_text_is_classified() -> None:
    nested = "SELECT " + "(" * 2000 + "set_config('a.b', 'c', false)" + ")" * 2000
    assert session_effect(nested) is SessionEffect.RESET
    assert session_effect("SELECT " + "(" * 2000 + "1" + ")" * 2000) is SessionEffect.NONE


@pytest.mark.parametrize("query", CLEAN + LOOKALIKES + SEQUENCES + RESET + DISCARD)
def test_the_shortcut_for_clean_text_agrees_with_the_full_walk(query: str) -> None:
    """Texts without any marker skip the tree walk; the walk must find nothing in them."""
    tree = json.loads(parse_sql_json(query))
    assert session_effect(query) is _tree_effect(tree)


def test_effects_are_ordered_by_severity() -> None:
    """Callers keep the worst effect seen with ``max``: the order is the contract."""
    assert (
        SessionEffect.NONE
        < SessionEffect.SEQUENCES
        < SessionEffect.RESET
        < SessionEffect.DISCARD
        < SessionEffect.BROKEN
    )
    assert not SessionEffect.NONE
    assert all(effect for effect in SessionEffect if effect is not SessionEffect.NONE)
    assert max(SessionEffect.SEQUENCES, SessionEffect.RESET) is SessionEffect.RESET


def test_results_are_cached_per_text() -> None:
    session_effect.cache_clear()
    query = "SELECT 'cache probe'"
    assert session_effect(query) is SessionEffect.NONE
    assert session_effect(query) is SessionEffect.NONE
    info = session_effect.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert info.maxsize is not None  # bounded: dynamic SQL cannot grow it forever
