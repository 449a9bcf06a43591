"""``wellwon-db shards migrate DIR``, and the shard map section of ``wellwon-db config``.

``migrate`` opens one connection to each physical shard on its own (a shard
that cannot be reached is reported, not fatal), applies the directory's
``<version>_<name>.sql`` files each shard lacks (``shards/_migrate.py``),
prints a report per shard and closes everything. It exits 0 when every shard
has every file, 1 when a shard failed or could not be reached: run it again
to resume, files already applied are skipped.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any, cast

from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._settings import DEFAULT_ENV_FILE
from wellwon_db.di._shards import check_shard_dsns, open_shard_set
from wellwon_db.errors import ConfigurationError
from wellwon_db.health._health import redact_secrets, secrets_of
from wellwon_db.shards._map import format_shards
from wellwon_db.shards._migrate import MigrationReport, load_migrations, migrate_shards
from wellwon_db.shards._set import ShardSet
from wellwon_db.shards._settings import (
    PREFIX,
    ShardSettings,
    check_databases,
    load_shard_settings,
)

__all__ = [
    "EXIT_INCOMPLETE",
    "add_shards_parser",
    "format_migration_report",
    "format_shard_map",
    "run_shards_migrate",
    "shard_map_section",
]

#: ``shards migrate``: a shard failed or could not be reached (run again to resume).
EXIT_INCOMPLETE = 1


def add_shards_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``shards`` command and its ``migrate`` subcommand."""
    shards = commands.add_parser("shards", help="the shard map: migrations on every shard")
    actions = shards.add_subparsers(dest="shards_command", required=True, metavar="ACTION")
    migrate = actions.add_parser(
        "migrate",
        help="apply DIRECTORY's <version>_<name>.sql files on every shard (resumable)",
        description=(
            "Apply each <version>_<name>.sql file of DIRECTORY, in version order, on every\n"
            "physical shard of PG_SHARDS_PLACEMENT that has not applied it yet, each file in\n"
            "its own transaction, recorded in wellwon_shards.migrations on that shard. A\n"
            "shard that is down is reported; run again later to resume. Exit 0 when every\n"
            "shard has every file, 1 otherwise, 78 for a setting to fix."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument("directory", metavar="DIRECTORY", help="the migration files")
    migrate.add_argument(
        "--dry-run", action="store_true", help="list what each shard lacks; apply nothing"
    )
    migrate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    migrate.add_argument(
        "--env-file",
        metavar="PATH",
        help=f"the .env file to read (default: ./{DEFAULT_ENV_FILE} when it exists)",
    )


async def run_shards_migrate(
    env_file: str | Path | None,
    directory: str,
    *,
    dry_run: bool = False,
    as_json: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """``wellwon-db shards migrate``: 0 when every shard has every file, else 1.

    Raises ``ConfigurationError`` for a missing or malformed setting or an
    unreadable directory of migrations.
    """
    try:
        migrations = load_migrations(directory)
    except ValueError as exc:
        raise ConfigurationError(f"shards migrate: {exc}") from None
    config = PostgresConfig.load(env_file=env_file)
    settings = load_shard_settings(env_file)
    shard_map = settings.shard_map()
    check_shard_dsns(shard_map, config)
    for database in shard_map.databases:
        timeout = config.settings_for(database).health_timeout_sec
        config = config.replace(
            database,
            pool_min_size=1,
            pool_max_size=1,
            pool_connect_timeout_sec=max(timeout, 5.0),
            startup_wait_sec=0.0,
            startup_required=True,
            retry_attempts=1,
        )
    opener = cast(
        "AsyncGenerator[ShardSet, None]",
        open_shard_set(config, settings, ShardSet(), tolerate_down=True),
    )
    shard_set = await anext(opener)
    try:
        report = await migrate_shards(shard_set, migrations, dry_run=dry_run)
    finally:
        await opener.aclose()
    secrets = secrets_of(config)
    for result in report.shards.values():
        if result.error is not None:
            result.error = redact_secrets(result.error, secrets)
    out(
        json.dumps(report.to_dict(), indent=2)
        if as_json
        else format_migration_report(report, settings, dry_run=dry_run)
    )
    return 0 if report.complete or (dry_run and _reachable(report)) else EXIT_INCOMPLETE


def _reachable(report: MigrationReport) -> bool:
    return all(result.status == "ok" for result in report.shards.values())


def format_migration_report(
    report: MigrationReport, settings: ShardSettings, *, dry_run: bool = False
) -> str:
    """The report as ``shards migrate`` prints it: a line per physical shard."""
    shard_map = settings.shard_map()
    rows = [
        (
            name,
            format_shards(result.shards),
            result.status,
            str(len(result.applied)),
            str(len(result.already)),
            str(len(result.pending)),
            result.error or "",
        )
        for name, result in report.shards.items()
    ]
    lines = [
        f"shard map v{shard_map.version}: {shard_map.count} logical shards, "
        f"{shard_map.scheme}, {shard_map.key_type} keys",
        "",
        *_table(("database", "shards", "status", "applied", "already", "pending", "error"), rows),
        "",
    ]
    if dry_run:
        lines.append("dry run: nothing applied; 'pending' is what each shard lacks")
    elif report.complete:
        lines.append("complete: every shard has every migration")
    else:
        lines.append("incomplete: run again to resume (files already applied are skipped)")
    return "\n".join(lines)


def shard_map_section(
    env_file: str | Path | None, config: PostgresConfig
) -> dict[str, Any] | None:
    """The shard map for ``wellwon-db config`` (``None`` when no ``PG_SHARDS_*`` is set).

    Raises ``ConfigurationError`` for invalid shard settings or a placement
    naming a database nothing configures.
    """
    settings = load_shard_settings(env_file)
    if not settings.configured and not _any_shard_variable(settings):
        return None
    shard_map = settings.shard_map()
    check_databases(shard_map, config)
    return {
        **shard_map.describe(),
        "fanout_concurrency": settings.fanout_concurrency,
        "fanout_timeout_sec": settings.fanout_timeout_sec,
        "id_epoch": settings.id_epoch.isoformat(),
        "key_setting": settings.key_setting,
    }


def _any_shard_variable(settings: ShardSettings) -> bool:
    return bool(settings.model_fields_set)


def format_shard_map(section: dict[str, Any]) -> str:
    """The shard map section of ``wellwon-db config``: settings, then each database's shards."""
    lines = [
        "",
        f"shard map ({PREFIX}*)",
        f"  version {section['version']}: {section['count']} logical shards, "
        f"scheme {section['scheme']}, key type {section['key_type']}",
        f"  fan-out: {section['fanout_concurrency']} shards at a time, "
        f"{section['fanout_timeout_sec']:g}s timeout; ID epoch {section['id_epoch']}; "
        f"key setting {section['key_setting'] or '(none)'}",
    ]
    rows = [(name, shards) for name, shards in section["placement"].items()]
    lines += _table(("database", "logical shards"), rows, "  ")
    return "\n".join(lines)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return [
        (
            indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        ).rstrip()
        for row in [headers, *rows]
    ]
