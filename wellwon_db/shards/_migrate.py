"""Migrations on every shard: each SQL file once per physical shard, with a record there.

A migration is a file ``<version>_<name>.sql`` (``0001_accounts.sql``);
versions are integers, applied in ascending order. Each physical shard
records what it applied in ``wellwon_shards.migrations`` (version, file
name, SHA-256 of the text, the shard map's version, when), so a run skips
what a shard already has: after a shard was down, running again applies only
what it missed. A file that changed after it was applied stops that shard
with an error rather than being skipped silently.

Each file runs in its own transaction under an advisory lock (two runs at
once apply each file once), with these settings for its statements::

    wellwon.shard_count        the map's logical shard count
    wellwon.logical_shards     this database's logical shards, comma-separated
    wellwon.shard_database     this database's name
    wellwon.shard_map_version  the map's version

``SELECT wellwon_shards.create_partitions('accounts')`` creates this
database's hash partitions of a table ``PARTITION BY HASH`` on the shard key
(one per logical shard it holds, ``accounts_s<n>``), so each server holds only
its own shards' rows. A file cannot manage its own transaction or use
statements that refuse to run in one (``CREATE INDEX CONCURRENTLY``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from wellwon_db.errors import DatabaseUnavailableError, PoolClosedError, PoolTimeoutError
from wellwon_db.shards._ids import INSTALL_SQL as IDS_SQL
from wellwon_db.shards._map import ShardMap
from wellwon_db.shards._set import PhysicalShard, ShardSet

__all__ = [
    "Migration",
    "MigrationReport",
    "ShardMigration",
    "load_migrations",
    "migrate_shards",
]

#: ``pg_advisory_xact_lock`` key of migration runs ("wellwon_shards").
LOCK_KEY: Final = 0x77656C6C776F6E5F

_FILE = re.compile(r"^(?P<version>\d+)_[A-Za-z0-9_.-]+\.sql$")

BOOKKEEPING_SQL: Final = """
CREATE SCHEMA IF NOT EXISTS wellwon_shards;
CREATE TABLE IF NOT EXISTS wellwon_shards.migrations (
    version bigint PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    shard_map_version integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION wellwon_shards.create_partitions(parent regclass)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    shard_count text := current_setting('wellwon.shard_count', true);
    shards text := current_setting('wellwon.logical_shards', true);
    parent_schema name;
    parent_name name;
    shard integer;
    made integer := 0;
BEGIN
    IF coalesce(shard_count, '') = '' OR coalesce(shards, '') = '' THEN
        RAISE EXCEPTION 'wellwon_shards.create_partitions runs inside a shard migration '
            '(wellwon-db shards migrate), which says which logical shards this database holds';
    END IF;
    SELECT n.nspname, c.relname INTO parent_schema, parent_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = parent;
    FOREACH shard IN ARRAY string_to_array(shards, ',')::integer[] LOOP
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %s '
            'FOR VALUES WITH (MODULUS %s, REMAINDER %s)',
            parent_schema, parent_name || '_s' || shard, parent, shard_count, shard);
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;
"""

_SETTINGS_SQL = (
    "SELECT set_config('wellwon.shard_count', $1, true), "
    "set_config('wellwon.logical_shards', $2, true), "
    "set_config('wellwon.shard_database', $3, true), "
    "set_config('wellwon.shard_map_version', $4, true)"
)

#: Errors that mean the shard could not be reached (reported as unreachable, not failed).
_UNREACHABLE = (DatabaseUnavailableError, PoolClosedError, PoolTimeoutError, TimeoutError, OSError)

ShardStatus = Literal["ok", "failed", "unreachable"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: its version, file name, text and the text's SHA-256 (hex)."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """The SHA-256 of the text, hex."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_migrations(directory: str | Path) -> list[Migration]:
    """The ``<version>_<name>.sql`` files of ``directory``, by ascending version.

    Raises ``ValueError`` for a missing directory, a ``.sql`` file not named
    that way, or two files with the same version.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"{directory}: no such directory of migrations")
    found: dict[int, Migration] = {}
    for file in sorted(path.glob("*.sql")):
        match = _FILE.match(file.name)
        if match is None:
            raise ValueError(
                f"{file.name}: a migration file is named <version>_<name>.sql "
                "(e.g. 0001_accounts.sql)"
            )
        version = int(match["version"])
        if version in found:
            raise ValueError(
                f"{file.name} and {found[version].name} have the same version {version}"
            )
        found[version] = Migration(version, file.name, file.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


@dataclass(slots=True)
class ShardMigration:
    """One physical shard's run: its status, what it applied now, had already, still lacks.

    ``status`` is ``ok``, ``failed`` (a statement failed, or an applied
    file changed: ``error`` says which) or ``unreachable`` (the database
    could not be reached; run again later). Lists hold file names.
    """

    database: str
    shards: tuple[int, ...]
    status: ShardStatus = "ok"
    applied: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "database": self.database,
            "shards": list(self.shards),
            "status": self.status,
            "applied": list(self.applied),
            "already": list(self.already),
            "pending": list(self.pending),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """Every physical shard's :class:`ShardMigration`, in placement order."""

    shards: dict[str, ShardMigration]

    @property
    def complete(self) -> bool:
        """Whether every shard has every migration now."""
        return all(result.status == "ok" and not result.pending for result in self.shards.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "complete": self.complete,
            "shards": {name: result.to_dict() for name, result in self.shards.items()},
        }


async def migrate_shards(
    shard_set: ShardSet,
    migrations: Sequence[Migration],
    *,
    concurrency: int | None = None,
    dry_run: bool = False,
) -> MigrationReport:
    """Apply ``migrations`` on every physical shard of ``shard_set`` (an open one).

    Shards run concurrently (at most ``concurrency``, default
    ``PG_SHARDS_FANOUT_CONCURRENCY``), each file after the other on a shard;
    a shard that fails stops there and the others go on. Never raises for a
    shard being down or a statement failing: the report says so. With
    ``dry_run`` only the bookkeeping is installed and ``pending`` lists what
    would be applied. Always installs ``wellwon_shards`` (the migration
    record, ``create_partitions`` and the ID function ``next_id``).
    """
    shard_map = shard_set.shard_map
    limit = concurrency or shard_set.settings.fanout_concurrency
    gate = asyncio.Semaphore(limit)

    async def one(physical: PhysicalShard) -> ShardMigration:
        async with gate:
            return await _migrate_one(physical, shard_map, migrations, dry_run)

    results = await asyncio.gather(*(one(physical) for physical in shard_set.physical()))
    return MigrationReport({result.database: result for result in results})


async def _migrate_one(
    physical: PhysicalShard, shard_map: ShardMap, migrations: Sequence[Migration], dry_run: bool
) -> ShardMigration:
    result = ShardMigration(str(physical.database), physical.shards)
    names = [migration.name for migration in migrations]
    if physical.down is not None:
        return _stopped(result, "unreachable", physical.down, names)
    client = physical.client
    try:
        async with client.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await tx.execute(BOOKKEEPING_SQL)
            await tx.execute(IDS_SQL)
            rows = await tx.fetch("SELECT version, name, checksum FROM wellwon_shards.migrations")
    except Exception as exc:
        return _stopped(result, _status(exc), exc, names)
    done = {row["version"]: (row["name"], row["checksum"]) for row in rows}
    settings = (
        str(shard_map.count),
        ",".join(map(str, physical.shards)),
        str(physical.database),
        str(shard_map.version),
    )
    for index, migration in enumerate(migrations):
        if migration.version in done:
            name, checksum = done[migration.version]
            if checksum != migration.checksum:
                result.status = "failed"
                result.error = (
                    f"{migration.name} differs from {name}, applied here as version "
                    f"{migration.version}: a migration must not change once applied; add a "
                    "new file instead"
                )
                result.pending = names[index:]
                return result
            result.already.append(migration.name)
            continue
        if dry_run:
            result.pending.append(migration.name)
            continue
        try:
            applied = await _apply(client, migration, settings, shard_map.version)
        except Exception as exc:
            return _stopped(result, _status(exc), exc, names[index:], migration.name)
        (result.applied if applied else result.already).append(migration.name)
    return result


async def _apply(
    client: Any, migration: Migration, settings: tuple[str, ...], map_version: int
) -> bool:
    """Apply ``migration`` in one transaction; ``False`` when another run applied it first."""
    async with client.transaction() as tx:
        await tx.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        if await tx.fetchval(
            "SELECT true FROM wellwon_shards.migrations WHERE version = $1", migration.version
        ):
            return False
        await tx.execute(_SETTINGS_SQL, *settings)
        await tx.execute(migration.sql)
        await tx.execute(
            "INSERT INTO wellwon_shards.migrations (version, name, checksum, shard_map_version) "
            "VALUES ($1, $2, $3, $4)",
            migration.version,
            migration.name,
            migration.checksum,
            map_version,
        )
    return True


def _status(exc: BaseException) -> ShardStatus:
    return "unreachable" if isinstance(exc, _UNREACHABLE) else "failed"


def _stopped(
    result: ShardMigration,
    status: ShardStatus,
    exc: BaseException,
    pending: list[str],
    during: str | None = None,
) -> ShardMigration:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    where = f"{during}: " if during else ""
    result.status = status
    result.error = f"{where}{type(exc).__name__}: {detail}"
    result.pending = list(pending)
    return result
