"""The ``wellwon-db`` command (also ``python -m wellwon_db``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from wellwon_db.errors import ConfigurationError, DatabaseUnavailableError, WellwonDBError
from wellwon_db.testing._server import PostgresNotFoundError

__all__ = ["main"]

#: Exit codes (sysexits.h where one fits; 2 is argparse's usage error).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wellwon-db", description="wellwon_db: typed access to several PostgreSQL databases."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="start two embedded PostgreSQL servers and tour routing, pools and transactions",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from wellwon_db._demo import run_demo

            asyncio.run(run_demo())
    except ConfigurationError as exc:
        print(f"wellwon-db: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (DatabaseUnavailableError, PostgresNotFoundError) as exc:
        print(f"wellwon-db: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except WellwonDBError as exc:
        print(f"wellwon-db: {exc}", file=sys.stderr)
        return EXIT_SOFTWARE
    except KeyboardInterrupt:
        return 130
    return EXIT_OK
