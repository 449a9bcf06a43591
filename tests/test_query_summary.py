"""``db.query.summary`` and query-text sanitising: pure functions over PostgreSQL's parser.

The first cases are the OpenTelemetry database conventions' own examples
(docs/db/database-spans.md, "Generating a summary of the query").
"""

from __future__ import annotations

import pytest

from wellwon_db.sql._sanitize import sanitize
from wellwon_db.sql._summary import MAX_SUMMARY, query_summary


@pytest.mark.parametrize(
    ("query", "summary"),
    [
        # The conventions' examples.
        ("SELECT *\nFROM   wuser_table\nWHERE  username = $1", "SELECT wuser_table"),
        (
            "INSERT INTO shipping_details (order_id, address)\n"
            "SELECT order_id, address FROM orders WHERE order_id = $1",
            "INSERT shipping_details SELECT orders",
        ),
        (
            "SELECT * FROM songs, artists WHERE songs.artist_id = artists.id",
            "SELECT songs artists",
        ),
        (
            "SELECT order_date FROM (SELECT * FROM orders o "
            "JOIN customers c ON o.customer_id = c.customer_id) AS t",
            "SELECT SELECT orders customers",
        ),
        ('SELECT * FROM "song list", artists', 'SELECT "song list" artists'),
        # Targets as written (no case folding), schema-qualified, quoted.
        ("select * from DC_Customs where id = $1", "SELECT DC_Customs"),
        ("UPDATE Public . Accounts SET v = 1", "UPDATE Public.Accounts"),
        ('SELECT * FROM "a . b"."C"', 'SELECT "a . b"."C"'),
        ("SELECT * FROM ünï JOIN x ON true", "SELECT ünï x"),
        # WITH: the common table expressions first, as written.
        ("WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN b ON true", "SELECT a SELECT x b"),
        (
            "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d",
            "DELETE t INSERT u SELECT d",
        ),
        # Other statements.
        ("DELETE FROM t USING u WHERE t.id = u.id", "DELETE t u"),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "MERGE t s"),
        ("COPY items FROM STDIN", "COPY items"),
        ("CALL refresh_rates(1)", "CALL refresh_rates"),
        ("CREATE TABLE foo (id int)", "CREATE foo"),
        ("DROP TABLE IF EXISTS a; CREATE TABLE a (id int)", "DROP CREATE a"),
        ("BEGIN", "BEGIN"),
        ("COMMIT", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("SELECT 1", "SELECT"),
        ("INSERT INTO t VALUES (1), (2)", "INSERT t"),
        ("SET search_path = app", "SET"),
        ("DO $$ BEGIN END $$", "DO"),
        # Nothing is guessed from text the parser cannot read.
        ("SELEC 1", ""),
        ("WITH", ""),
        ("", ""),
        ("   ", ""),
    ],
)
def test_query_summary(query: str, summary: str) -> None:
    assert query_summary(query) == summary


def test_no_literal_or_parameter_reaches_a_summary() -> None:
    summary = query_summary(
        "SELECT 'secret', 42, $1 FROM t WHERE a = 'x' AND b IN (SELECT c FROM u WHERE d = 7)"
    )
    assert summary == "SELECT t SELECT u"


def test_a_long_summary_stops_between_names() -> None:
    tables = [f"table_number_{n}" for n in range(40)]
    summary = query_summary(f"SELECT * FROM {', '.join(tables)}")
    assert len(summary) <= MAX_SUMMARY
    assert summary.startswith("SELECT table_number_0 table_number_1")
    assert summary.split(" ")[-1] in tables  # never cut inside a name


@pytest.mark.parametrize(
    ("query", "sanitised"),
    [
        ("SELECT $1, 2, 'x' /* c */ FROM t1 -- tail", "SELECT $1, ?, ?   FROM t1"),
        (
            "SELECT $$body$$, E'a\\'b', B'101', -5, 1.5e3, interval '1 day'",
            "SELECT ?, ?, ?, -?, ?, interval ?",
        ),
        ('SELECT "col1" FROM t WHERE a IN (1,2,3)', 'SELECT "col1" FROM t WHERE a IN (?,?,?)'),
        ("UPDATE t SET a = 'it''s'", "UPDATE t SET a = ?"),
        ("SELECT $tag$ x $tag$", "SELECT ?"),
        # Text the parser rejects is still scanned: no literal escapes.
        ("SELEC 'secret'", "SELEC ?"),
    ],
)
def test_sanitize(query: str, sanitised: str) -> None:
    assert sanitize(query) == sanitised
