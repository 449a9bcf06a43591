"""Migrations on every shard: once per shard, a shard that is down reported and resumed,
changed or failing files stopped with the reason; ``wellwon-db shards migrate`` and
``wellwon-db config`` on real servers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import SECRET, run_cli
from tests.shard_support import (
    ACCOUNTS_MIGRATION,
    SHARDS,
    ShardCluster,
    ShardedApp,
    shard_environment,
    shared_cluster,
    write_migration,
)
from wellwon_db import database_lifespan, load_migrations, migrate_shards
from wellwon_db.testing import PostgresServer

FAILS_ON_B = """
DO $$ BEGIN
    IF current_setting('wellwon.shard_database') = 'shard_b' THEN
        RAISE EXCEPTION 'refused on %', current_setting('wellwon.shard_database');
    END IF;
END $$;
CREATE TABLE after_check (id int);
"""


@pytest.fixture(scope="session")
def shard_cluster(postgres_server_factory: Callable[[str], PostgresServer]) -> ShardCluster:
    return shared_cluster(postgres_server_factory)


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    write_migration(directory, "0001_accounts.sql", ACCOUNTS_MIGRATION)
    write_migration(
        directory,
        "0002_owner_index.sql",
        "CREATE INDEX accounts_owner ON accounts (owner);\n"
        "CREATE TABLE placement AS SELECT current_setting('wellwon.logical_shards') AS shards, "
        "current_setting('wellwon.shard_count')::int AS count, "
        "current_setting('wellwon.shard_map_version')::int AS version;",
    )
    return directory


async def test_each_file_once_per_shard_with_its_record(
    shard_cluster: ShardCluster, monkeypatch: pytest.MonkeyPatch, migrations: Path
) -> None:
    shard_environment(monkeypatch, shard_cluster, shard_cluster.fresh(), PG_SHARDS_VERSION="4")
    container = ShardedApp()
    async with database_lifespan(container):
        sharded = container.sharded()
        files = load_migrations(migrations)
        first = await migrate_shards(sharded.shard_set, files)
        assert first.complete
        for shard in SHARDS:
            assert first.shards[shard].applied == ["0001_accounts.sql", "0002_owner_index.sql"]
        again = await migrate_shards(sharded.shard_set, files)
        assert again.complete
        assert all(result.applied == [] for result in again.shards.values())
        assert all(len(result.already) == 2 for result in again.shards.values())
        records = await sharded.fan_out().fetch(
            "SELECT version, name, shard_map_version FROM wellwon_shards.migrations ORDER BY 1"
        )
        for rows in records.results.values():
            assert [(row["version"], row["shard_map_version"]) for row in rows] == [(1, 4), (2, 4)]
        placement = await sharded.fan_out().fetchrow("SELECT * FROM placement")
        for shard, row in placement.results.items():
            assert row is not None
            assert row["count"] == 16
            assert row["version"] == 4
            expected = ",".join(map(str, sharded.shard_map.shards_on(shard)))
            assert row["shards"] == expected
        partitions = await sharded.fan_out().fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'accounts'::regclass"
        )
        assert partitions.sum() == 16


async def test_a_shard_down_is_reported_then_resumed(
    shard_cluster: ShardCluster, monkeypatch: pytest.MonkeyPatch, migrations: Path
) -> None:
    shard_environment(monkeypatch, shard_cluster, shard_cluster.fresh())
    container = ShardedApp()
    files = load_migrations(migrations)
    down = shard_cluster.servers["shard_c"]
    async with database_lifespan(container):
        sharded = container.sharded()
        down.stop()
        try:
            report = await migrate_shards(sharded.shard_set, files)
            assert not report.complete
            assert report.shards["shard_c"].status == "unreachable"
            assert report.shards["shard_c"].pending == [file.name for file in files]
            assert report.shards["shard_c"].error is not None
            assert SECRET not in report.shards["shard_c"].error
            for shard in ("shard_a", "shard_b"):
                assert report.shards[shard].status == "ok"
                assert len(report.shards[shard].applied) == 2
        finally:
            down.start()
        resumed = await migrate_shards(sharded.shard_set, files)
        assert resumed.complete
        assert len(resumed.shards["shard_c"].applied) == 2
        assert resumed.shards["shard_a"].applied == []
        assert len(resumed.shards["shard_a"].already) == 2


async def test_a_failing_or_changed_file_stops_that_shard_only(
    shard_cluster: ShardCluster, monkeypatch: pytest.MonkeyPatch, migrations: Path
) -> None:
    shard_environment(monkeypatch, shard_cluster, shard_cluster.fresh())
    write_migration(migrations, "0003_checked.sql", FAILS_ON_B)
    write_migration(migrations, "0004_later.sql", "CREATE TABLE later (id int);")
    container = ShardedApp()
    async with database_lifespan(container):
        sharded = container.sharded()
        report = await migrate_shards(sharded.shard_set, load_migrations(migrations))
        failed = report.shards["shard_b"]
        assert failed.status == "failed"
        assert failed.applied == ["0001_accounts.sql", "0002_owner_index.sql"]
        assert failed.pending == ["0003_checked.sql", "0004_later.sql"]
        assert failed.error is not None
        assert "0003_checked.sql" in failed.error
        assert "refused on shard_b" in failed.error
        assert report.shards["shard_a"].status == "ok"
        assert len(report.shards["shard_c"].applied) == 4
        # The failed file left nothing behind on shard_b (its transaction rolled back).
        tables = await sharded.fan_out().fetchval("SELECT to_regclass('after_check') IS NOT NULL")
        assert tables.results == {"shard_a": True, "shard_b": False, "shard_c": True}
        (migrations / "0001_accounts.sql").write_text(ACCOUNTS_MIGRATION + "\n-- edited\n")
        changed = await migrate_shards(sharded.shard_set, load_migrations(migrations))
        assert changed.shards["shard_a"].status == "failed"
        assert changed.shards["shard_a"].error is not None
        assert "must not change once applied" in changed.shards["shard_a"].error


def test_files_must_be_named_by_version(tmp_path: Path) -> None:
    write_migration(tmp_path, "accounts.sql", "SELECT 1")
    with pytest.raises(ValueError, match=r"<version>_<name>\.sql"):
        load_migrations(tmp_path)
    (tmp_path / "accounts.sql").unlink()
    write_migration(tmp_path, "1_a.sql", "SELECT 1")
    write_migration(tmp_path, "01_b.sql", "SELECT 1")
    with pytest.raises(ValueError, match="same version 1"):
        load_migrations(tmp_path)
    with pytest.raises(ValueError, match="no such directory"):
        load_migrations(tmp_path / "missing")


# -- the commands ------------------------------------------------------------------------


def _cli_environment(cluster: ShardCluster, database: str) -> dict[str, str]:
    settings = {
        "POSTGRES_DSN": cluster.dsn("shard_a", database),
        "PG_SHARDS_PLACEMENT": " ".join(SHARDS),
        "PG_SHARDS_COUNT": "16",
    }
    for shard in SHARDS:
        settings[f"POSTGRES_{shard.upper()}_DSN"] = cluster.dsn(shard, database)
    return settings


def test_the_command_reports_a_down_shard_then_resumes(
    shard_cluster: ShardCluster, migrations: Path, tmp_path: Path
) -> None:
    settings = _cli_environment(shard_cluster, shard_cluster.fresh())
    down = shard_cluster.servers["shard_b"]
    down.stop()
    try:
        result = run_cli("shards", "migrate", str(migrations), "--json", cwd=tmp_path, **settings)
        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        assert not report["complete"]
        assert report["shards"]["shard_b"]["status"] == "unreachable"
        assert report["shards"]["shard_a"]["applied"] == [
            "0001_accounts.sql",
            "0002_owner_index.sql",
        ]
    finally:
        down.start()
    dry = run_cli("shards", "migrate", str(migrations), "--dry-run", cwd=tmp_path, **settings)
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout
    resumed = run_cli("shards", "migrate", str(migrations), cwd=tmp_path, **settings)
    assert resumed.returncode == 0, resumed.stderr
    assert "complete: every shard has every migration" in resumed.stdout
    lines = {line.split()[0]: line.split() for line in resumed.stdout.splitlines() if line}
    assert lines["shard_b"][2:6] == ["ok", "2", "0", "0"]
    assert lines["shard_a"][2:6] == ["ok", "0", "2", "0"]


def test_the_command_names_what_to_fix(tmp_path: Path, migrations: Path) -> None:
    result = run_cli("shards", "migrate", str(migrations), cwd=tmp_path, POSTGRES_DSN="x")
    assert result.returncode == 78
    settings = {
        "POSTGRES_DSN": f"postgresql://postgres:{SECRET}@127.0.0.1:9/x",
        "PG_SHARDS_PLACEMENT": "shard_a shard_b",
        "PG_SHARDS_COUNT": "8",
        "POSTGRES_SHARD_A_DSN": f"postgresql://postgres:{SECRET}@127.0.0.1:9/x",
    }
    result = run_cli("shards", "migrate", str(migrations), cwd=tmp_path, **settings)
    assert result.returncode == 78
    assert "POSTGRES_SHARD_B_DSN" in result.stderr
    result = run_cli("shards", "migrate", str(tmp_path / "nowhere"), cwd=tmp_path, **settings)
    assert result.returncode == 78
    assert "no such directory" in result.stderr


def test_config_shows_the_shard_map(tmp_path: Path) -> None:
    settings = {
        "POSTGRES_DSN": f"postgresql://postgres:{SECRET}@127.0.0.1:9/x",
        "POSTGRES_SHARD_A_DSN": f"postgresql://postgres:{SECRET}@127.0.0.1:9/a",
        "POSTGRES_SHARD_B_DSN": f"postgresql://postgres:{SECRET}@127.0.0.1:9/b",
        "PG_SHARDS_PLACEMENT": "shard_a:0-9 shard_b:10-15",
        "PG_SHARDS_COUNT": "16",
        "PG_SHARDS_SCHEME": "citus",
    }
    text = run_cli("config", cwd=tmp_path, **settings)
    assert text.returncode == 0, text.stderr
    assert "shard map (PG_SHARDS_*)" in text.stdout
    assert "16 logical shards, scheme citus, key type bigint" in text.stdout
    assert "shard_b database" in text.stdout  # each physical shard is a database
    as_json = run_cli("config", "--json", cwd=tmp_path, **settings)
    shards = json.loads(as_json.stdout)["shards"]
    assert shards["placement"] == {"shard_a": "0-9", "shard_b": "10-15"}
    typo = run_cli("config", cwd=tmp_path, **settings, PG_SHARDS_CONT="16")
    assert typo.returncode == 78
    assert "did you mean PG_SHARDS_COUNT" in typo.stderr
    without = run_cli("config", "--json", cwd=tmp_path, POSTGRES_DSN=settings["POSTGRES_DSN"])
    assert "shards" not in json.loads(without.stdout)
    assert os.environ.get("PG_SHARDS_PLACEMENT") is None
