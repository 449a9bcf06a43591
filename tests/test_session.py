"""``session_effect``: which statement texts leave session state behind (pure logic)."""

from __future__ import annotations

import pytest

from wellwon_db.pool._session import SessionEffect, session_effect

CLEAN = [
    "SELECT 1",
    "select * from users where id = $1",
    "INSERT INTO users (name) VALUES ($1)",
    "UPDATE users SET name = $1 WHERE id = $2",
    "UPDATE t SET x=1",
    "DELETE FROM sessions WHERE expires_at < now()",
    "WITH recent AS (SELECT * FROM orders) SELECT count(*) FROM recent",
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT pg_try_advisory_xact_lock(42)",
    "SELECT pg_advisory_unlock(42)",
    "EXPLAIN ANALYZE SELECT 1",
    "SHOW search_path",
    "BEGIN",
    "COMMIT",
    "NOTIFY jobs, 'go'",
    "UNLISTEN jobs",
    "CREATE TABLE events (id int)",
    "CREATE UNLOGGED TABLE scratch (id int)",
    "CREATE TABLE temp_readings (id int)",
    "INSERT INTO temperature VALUES (1)",
    "INSERT INTO temp_readings VALUES (1)",
    "SELECT 1;",
    "SELECT 1; SELECT 2",
    "SELECT 1; -- a trailing comment",
    "/* ; */ SELECT 1",
    "",
]

# Names that contain a trigger word but are not the statement or function.
IDENTIFIERS = [
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
    "INSERT INTO prepare_queue (deallocated) VALUES (true)",
]

RESET = [
    "SET search_path TO app",
    "set statement_timeout = 0",
    "SET LOCAL statement_timeout = 100",  # conservative: SET LOCAL resets too
    "SET SESSION AUTHORIZATION app",
    "SET ROLE reporting",
    "RESET ALL",
    "Reset search_path",
    "LISTEN jobs",
    "listen jobs",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "DO $$ BEGIN PERFORM 1; END $$",
    "CALL refresh_totals()",
    "LOAD 'auto_explain'",
    "CREATE TEMP TABLE t (id int)",
    "CREATE TEMPORARY TABLE t (id int)",
    "create temporary table t (id int)",
    "CREATE LOCAL TEMP TABLE t (id int)",
    "CREATE GLOBAL TEMPORARY TABLE t (id int)",
    "CREATE TEMP SEQUENCE s",
    "CREATE\n  TEMP\tTABLE t (id int)",
    "SELECT * INTO TEMP t FROM users",
    "SELECT * INTO TEMPORARY TABLE t FROM users",
    "select * into temp t from users",
    "SELECT set_config('app.user', $1, false)",
    "SELECT SET_CONFIG ('app.user', $1, true)",  # conservative: is_local is not parsed
    "SELECT pg_catalog.set_config('app.user', 'x', false)",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_advisory_lock (42)",
    "SELECT pg_advisory_lock_shared(42)",
    "SELECT pg_try_advisory_lock(42)",
    "SELECT pg_try_advisory_lock_shared(1, 2)",
    "SELECT PG_ADVISORY_LOCK(42)",
    "WITH s AS (SELECT set_config('a.b', 'c', false)) SELECT 1 FROM s",
    "SELECT dblink_connect('other', 'dbname=x')",
    # After blanks and comments, the statement is still seen.
    "   \n\t SET search_path TO app",
    "-- set the path\nSET search_path TO app",
    "/* a block\n comment */ SET search_path TO app",
    "-- one\n/* two */\n-- three\n  LISTEN jobs",
    # Any statement of several.
    "SELECT 1; SET search_path TO app",
    "SELECT 1;SET search_path TO app",
    "BEGIN; SET LOCAL statement_timeout = 100; SELECT 1; COMMIT",
    "SELECT 1;\n\n-- then\nRESET ALL",
    "INSERT INTO t VALUES (1); LISTEN jobs; SELECT 2",
    # Errs towards RESET: a statement-looking word after ';' in a literal or comment.
    "SELECT 'a;SET x'",
    "SELECT 1 -- ; SET",
]

DISCARD = [
    "PREPARE q AS SELECT 1",
    "prepare q (int) as select $1",
    "DEALLOCATE q",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "discard plans",
    "/* first */ DISCARD ALL",
    "-- note\nDEALLOCATE ALL",
    "SELECT 1; DISCARD ALL",
    # DISCARD wins over RESET in the same text.
    "SET search_path TO app; DISCARD ALL",
    "DISCARD ALL; SET search_path TO app",
]


@pytest.mark.parametrize("query", CLEAN)
def test_clean_statements_need_nothing(query: str) -> None:
    assert session_effect(query) is SessionEffect.NONE


@pytest.mark.parametrize("query", IDENTIFIERS)
def test_trigger_words_inside_identifiers_do_not_count(query: str) -> None:
    assert session_effect(query) is SessionEffect.NONE


@pytest.mark.parametrize("query", RESET)
def test_session_changing_statements_need_a_reset(query: str) -> None:
    assert session_effect(query) is SessionEffect.RESET


@pytest.mark.parametrize("query", DISCARD)
def test_statements_that_break_the_statement_cache_discard(query: str) -> None:
    assert session_effect(query) is SessionEffect.DISCARD


@pytest.mark.parametrize(
    "query",
    [
        "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
        "CREATE OR REPLACE TEMPORARY VIEW v AS SELECT 1",
    ],
)
def test_create_or_replace_temp_view_needs_a_reset(query: str) -> None:
    assert session_effect(query) is SessionEffect.RESET


@pytest.mark.parametrize(
    "query",
    ["SELECT 1 INTO LOCAL TEMP t", "SELECT 1 INTO GLOBAL TEMPORARY TABLE t"],
)
def test_select_into_local_temp_needs_a_reset(query: str) -> None:
    assert session_effect(query) is SessionEffect.RESET


def test_effects_are_ordered_by_severity() -> None:
    """Callers keep the worst effect seen with ``max``: the order is the contract."""
    assert SessionEffect.NONE < SessionEffect.RESET < SessionEffect.DISCARD
    assert not SessionEffect.NONE
    assert max(SessionEffect.RESET, SessionEffect.DISCARD) is SessionEffect.DISCARD


def test_results_are_cached_per_text() -> None:
    session_effect.cache_clear()
    query = "SELECT 'cache probe'"
    assert session_effect(query) is SessionEffect.NONE
    assert session_effect(query) is SessionEffect.NONE
    info = session_effect.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert info.maxsize is not None  # bounded: dynamic SQL cannot grow it forever
