"""``wellwon-db cache install``: the invalidation triggers of cached tables, for migrations."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg

from wellwon_db.client._cached import install_triggers, invalidation_sql
from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._registry import database_name
from wellwon_db.config._settings import DEFAULT_ENV_FILE
from wellwon_db.pool._failures import translate_error

__all__ = ["add_cache_parser", "run_cache_install"]


def add_cache_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``cache`` command and its ``install`` subcommand."""
    cache = commands.add_parser("cache", help="the result cache's invalidation triggers")
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    install = actions.add_parser(
        "install",
        help="put the invalidation trigger on tables (idempotent; for migrations)",
        description=(
            "Put the trigger that NOTIFYs the cache's channel on every change of each TABLE\n"
            "(INSERT, UPDATE, DELETE, TRUNCATE), in one transaction, serialised against\n"
            "concurrent installs. --print-sql prints the SQL instead of running it."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    install.add_argument("tables", nargs="+", metavar="TABLE", help="table or schema.table")
    install.add_argument(
        "--database", default="reference", help="the database (default: reference)"
    )
    install.add_argument("--print-sql", action="store_true", help="print the SQL, run nothing")
    install.add_argument(
        "--env-file",
        metavar="PATH",
        help=f"the .env file to read (default: ./{DEFAULT_ENV_FILE} when it exists)",
    )


async def run_cache_install(
    env_file: str | Path | None,
    database: str,
    tables: Sequence[str],
    *,
    print_sql: bool,
    out: Callable[[str], None] = print,
) -> int:
    """Install (or print) the invalidation triggers of ``tables``; return 0.

    Raises ``ConfigurationError`` for a bad setting or name,
    ``DatabaseUnavailableError`` when the database cannot be reached, and
    asyncpg's errors for what the server refuses.
    """
    config = PostgresConfig.load(env_file=env_file)
    name = database_name(database)
    settings = config.settings_for(name)
    if print_sql:
        out(invalidation_sql(tables, settings.cache_channel) + ";")
        return 0
    params = config.get_connect_params(name)
    # Installing triggers writes: a session made read-only by the settings could not.
    params.server_settings.pop("default_transaction_read_only", None)
    try:
        connection = await params.connect(
            connection_class=asyncpg.Connection, timeout=settings.pool_connect_timeout_sec
        )
    except Exception as exc:
        error = translate_error(
            exc, name, "connecting", may_have_run=False, sources=params.sources
        )
        if error is exc:
            raise
        raise error from exc
    try:
        installed = await install_triggers(connection, tables, settings.cache_channel)
    finally:
        await connection.close()
    out(f"invalidation triggers on the {name} database: {', '.join(sorted(installed))}")
    return 0
