"""The ``wellwon-db`` command (also ``python -m wellwon_db``).

``demo``
    two embedded servers and a tour of routing, pools and transactions.
``health [--json] [--env-file PATH]``
    opens each database's pool on its own, checks every database, prints a
    table (or JSON) and exits 0 ok, 1 degraded, 2 down.
``config [--json] [--env-file PATH]``
    the effective settings per database, secrets masked, each with where it
    came from (default, env, .env).
``monitoring dashboard`` / ``monitoring alerts [--threshold NAME=VALUE]``
    the Grafana dashboard JSON and the Prometheus alert rules (YAML).
``cache install TABLE... [--database NAME] [--print-sql]``
    the result cache's invalidation triggers.
``shards migrate DIRECTORY [--dry-run] [--json] [--env-file PATH]``
    SQL migrations on every physical shard, resumable (exit 1 while incomplete).

A missing or malformed setting exits with :data:`EXIT_CONFIG` (78) and a
message naming the variable. argparse's own usage error is exit 2 too, the
same number as ``down``: scripts that need to tell them apart should check
that stdout holds a report.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg
from dependency_injector import providers

from wellwon_db.cli._cache_command import add_cache_parser, run_cache_install
from wellwon_db.cli._monitoring_command import add_monitoring_parser, run_monitoring
from wellwon_db.cli._shards_command import (
    add_shards_parser,
    format_shard_map,
    run_shards_migrate,
    shard_map_section,
)
from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._registry import DatabaseName, is_declared, spec_for
from wellwon_db.config._report import ConfigReport, build_config_report
from wellwon_db.config._settings import DEFAULT_ENV_FILE
from wellwon_db.di._container import DatabaseContainer, check_health, stop_databases
from wellwon_db.di._providers import database_members, ensure_database
from wellwon_db.errors import ConfigurationError, DatabaseUnavailableError, WellwonDBError
from wellwon_db.health._health import (
    HealthReport,
    HealthStatus,
    describe_error,
    redact_secrets,
    secrets_of,
)
from wellwon_db.testing._server import PostgresNotFoundError

__all__ = ["main", "run_config", "run_health"]

#: Exit codes (sysexits.h where one fits). ``health`` exits with the report's
#: status: 0 ok, 1 degraded, 2 down; 2 is also argparse's usage error.
EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_DOWN = 2
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_CONFIG = 78

_HEALTH_EXIT: dict[HealthStatus, int] = {
    "ok": EXIT_OK,
    "degraded": EXIT_DEGRADED,
    "down": EXIT_DOWN,
}

#: Seconds ``health`` waits for connections in use before terminating them on exit.
_CLOSE_TIMEOUT = 1.0

_EXIT_CODES_HELP = """\
exit codes:
  0   ok (health: every database is ok)
  1   health: degraded (a database is degraded, or an optional one is down);
      shards migrate: a shard failed or could not be reached (run again to resume)
  2   health: down (a required database is down); also a usage error
  69  demo: a database or the PostgreSQL binaries are unavailable
  78  a setting is missing or malformed (the message names the variable)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wellwon-db",
        description="wellwon_db: typed access to several PostgreSQL databases.",
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="start two embedded PostgreSQL servers and tour routing, pools and transactions",
    )
    health = commands.add_parser(
        "health",
        help="check every database; exit 0 ok, 1 degraded, 2 down",
        description=(
            "Read the settings from the environment and .env, open each database's pool on\n"
            "its own (one connection), run SHOW server_version on each concurrently within\n"
            "PG_[<DB>_]HEALTH_TIMEOUT_SEC, print the result and close everything."
        ),
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config = commands.add_parser(
        "config",
        help="show the effective settings per database and where each came from",
        description=(
            "Show every database's effective settings, secrets masked, each with its source:\n"
            "default, derived (a default adjusted by a rule), env or .env."
        ),
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_cache_parser(commands)
    add_monitoring_parser(commands)
    add_shards_parser(commands)
    for command in (health, config):
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
        command.add_argument(
            "--env-file",
            metavar="PATH",
            help=f"the .env file to read (default: ./{DEFAULT_ENV_FILE} when it exists)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from wellwon_db.cli._demo import run_demo

            asyncio.run(run_demo())
        elif args.command == "health":
            return asyncio.run(run_health(_env_file(args.env_file), as_json=args.json))
        elif args.command == "config":
            return run_config(_env_file(args.env_file), as_json=args.json)
        elif args.command == "monitoring":
            return run_monitoring(args.monitoring_command, getattr(args, "threshold", []))
        elif args.command == "cache":
            return asyncio.run(
                run_cache_install(
                    _env_file(args.env_file),
                    args.database,
                    args.tables,
                    print_sql=args.print_sql,
                )
            )
        elif args.command == "shards":
            return asyncio.run(
                run_shards_migrate(
                    _env_file(args.env_file),
                    args.directory,
                    dry_run=args.dry_run,
                    as_json=args.json,
                )
            )
    except ConfigurationError as exc:
        print(f"wellwon-db: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (DatabaseUnavailableError, PostgresNotFoundError) as exc:
        print(f"wellwon-db: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (WellwonDBError, asyncpg.PostgresError) as exc:
        print(f"wellwon-db: {exc}", file=sys.stderr)
        return EXIT_SOFTWARE
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


def _env_file(option: str | None) -> Path:
    """The ``.env`` to read: ``--env-file`` (which must exist), else ``./.env`` if present."""
    if option is None:
        return Path(DEFAULT_ENV_FILE)
    path = Path(option)
    if not path.is_file():
        raise ConfigurationError(f"--env-file {option}: no such file")
    return path


# -- health ---------------------------------------------------------------------


async def run_health(
    env_file: str | Path | None, *, as_json: bool, out: Callable[[str], None] = print
) -> int:
    """``wellwon-db health``: check every configured database once; 0 ok, 1 degraded, 2 down.

    The databases are the declared ones and any other that a
    ``POSTGRES_<NAME>_DSN`` variable names. Each pool is opened on its own with
    one connection, connect and acquire timeouts no longer than the
    database's health timeout, and no retries: a database that cannot be
    opened is reported down, with the reason. A database without a DSN is
    listed as not configured unless its DSN is required. Raises
    ``ConfigurationError`` for a required DSN that is unset or a malformed setting.
    """
    config = PostgresConfig.load(env_file=env_file)
    databases = _databases_to_check(config)
    container = DatabaseContainer()
    for name in databases:
        ensure_database(container, name)
    container.config.override(providers.Object(_one_probe_config(config, databases)))
    secrets = secrets_of(config)
    try:
        open_errors = await _open_each_pool(container, secrets)
        report = _with_open_errors(await check_health(container), open_errors)
        out(json.dumps(report.to_dict(), indent=2) if as_json else format_health(report))
    finally:
        await _close_quickly(container)
    return _HEALTH_EXIT[report.status]


def _databases_to_check(config: PostgresConfig) -> list[DatabaseName]:
    """The declared databases and those the environment names with a DSN.

    A required database without a DSN raises ``ConfigurationError``; an
    undeclared one with invalid settings too (naming the variable).
    """
    names: list[DatabaseName] = []
    for name in config.databases:
        settings = config.settings_for(name)
        if settings.dsn is None and settings.startup_dsn_required:
            raise config.missing_dsn_error(name)
        if settings.dsn is not None or is_declared(name):
            names.append(name)
    return names


def _one_probe_config(config: PostgresConfig, databases: list[DatabaseName]) -> PostgresConfig:
    """``config`` cut down for one probe per database: one connection, short timeouts."""
    for database in databases:
        settings = config.settings_for(database)
        timeout = settings.health_timeout_sec
        config = config.replace(
            database,
            pool_min_size=1,
            pool_max_size=1,
            pool_connect_timeout_sec=min(settings.pool_connect_timeout_sec, timeout),
            pool_timeout_sec=min(settings.pool_timeout_sec, timeout),
            startup_wait_sec=0.0,
            startup_required=True,
            retry_attempts=1,
        )
    return config


async def _open_each_pool(container: DatabaseContainer, secrets: list[str]) -> dict[str, str]:
    """Open every pool concurrently; return why each one that failed did (secrets redacted)."""
    members = database_members(container)

    async def open_one(resource: providers.Resource[object]) -> str | None:
        try:
            result = resource.init()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            return redact_secrets(describe_error(exc), secrets)
        return None

    errors = await asyncio.gather(*(open_one(member.pool) for member in members))
    return {
        str(member.name): error
        for member, error in zip(members, errors, strict=True)
        if error is not None
    }


async def _close_quickly(container: DatabaseContainer) -> None:
    """Close every pool, terminating within a second connections a timed-out probe still holds."""
    slots = [member.slot() for member in database_members(container) if not member.is_replica]
    await asyncio.gather(
        *(slot.pool.close(timeout=_CLOSE_TIMEOUT) for slot in slots if slot.pool is not None)
    )
    await stop_databases(container)


def _with_open_errors(report: HealthReport, open_errors: dict[str, str]) -> HealthReport:
    """Replace "pool not open" by the reason opening it failed."""
    databases = {
        name: dataclasses.replace(health, error=open_errors[name])
        if name in open_errors and health.status == "down"
        else health
        for name, health in report.databases.items()
    }
    return dataclasses.replace(report, databases=databases)


def format_health(report: HealthReport) -> str:
    """The report as the ``health`` command prints it: a status line and one row per database."""
    headers = (
        "database",
        "status",
        "required",
        "latency ms",
        "server version",
        "pool size/in use/waiting",
        "breaker",
        "tls",
        "error",
    )
    rows = []
    for health in report.databases.values():
        pool = health.pool
        rows.append(
            (
                health.database,
                health.status,
                "yes" if health.required else "no",
                "-" if health.latency_ms is None else f"{health.latency_ms:.1f}",
                health.server_version or "-",
                f"{pool['size']}/{pool['in_use']}/{pool['waiting']}" if pool else "-",
                str(health.breaker.get("state", "-")),
                format_tls(health.tls),
                health.error or "",
            )
        )
    lines = [
        f"overall: {report.status} (checked at {report.checked_at})",
        "",
        *_table(headers, rows),
    ]
    for name, variable in report.unconfigured.items():
        primary = spec_for(name).replica_of
        if primary is None:
            lines.append(f"{name}: not configured (set {variable} to turn it on)")
        else:
            lines.append(f"{name}: no replica configured, reads go to {primary} (set {variable})")
    return "\n".join(lines)


_VERIFIED = {"full": "verified (CA, host name)", "ca": "CA verified", "none": "not verified"}


def format_tls(tls: dict[str, object] | None) -> str:
    """One database's TLS in a word or three: encrypted with what, verified how, which sslmode."""
    if tls is None:
        return "-"
    mode = f"sslmode={tls['sslmode']}"
    if tls["encrypted"] is None:
        return f"unknown ({mode})"
    if not tls["encrypted"]:
        return f"not encrypted ({mode})"
    return f"{tls['protocol']}, {_VERIFIED.get(str(tls['verification']), '?')} ({mode})"


# -- config ---------------------------------------------------------------------


def run_config(
    env_file: str | Path | None, *, as_json: bool, out: Callable[[str], None] = print
) -> int:
    """``wellwon-db config``: print the effective settings; return 0.

    Raises ``ConfigurationError`` for a malformed setting, and after printing
    when a database's DSN is unset.
    """
    config = PostgresConfig.load(env_file=env_file)
    report = build_config_report(config, env_file)
    shards = shard_map_section(env_file, config)
    if as_json:
        out(json.dumps({**report.to_dict(), **({"shards": shards} if shards else {})}, indent=2))
    else:
        out(format_config(report) + (format_shard_map(shards) if shards else ""))
    missing = [ConfigurationError(error) for error in report.errors.values()]
    for database in report.databases:
        settings = config.settings_for(database)
        if settings.dsn is None and settings.startup_dsn_required:
            missing.append(config.missing_dsn_error(database))
    if missing:
        raise ConfigurationError(
            "\n".join(str(exc) for exc in missing), env_var=missing[0].env_var
        )
    return EXIT_OK


def format_config(report: ConfigReport) -> str:
    """The report as the ``config`` command prints it: a table per database."""
    lines = [f"env file: {report.env_file or 'none'}"]
    for name, error in report.errors.items():
        lines += [
            "",
            f"{name} database: invalid settings",
            *(f"  {line.strip()}" for line in error.splitlines()[1:] or [error]),
        ]
    for name, settings in report.databases.items():
        rows = [(setting.variable, _shown(setting.value), setting.source) for setting in settings]
        lines += ["", f"{name} database", *_table(("variable", "value", "source"), rows, "  ")]
        derived = report.effective.get(name)
        if derived:
            lines.append(
                "  per worker: "
                + ", ".join(
                    f"{key.replace('_', ' ')} {_shown(value)}" for key, value in derived.items()
                )
            )
    return "\n".join(lines)


# -- output -----------------------------------------------------------------------


def _shown(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return [
        (
            indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        ).rstrip()
        for row in [headers, *rows]
    ]
