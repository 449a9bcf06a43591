"""What per-test isolation costs: a rolled-back transaction against a database copied per test.

One throwaway PostgreSQL server; a template database with a small schema (ten
tables with keys and a unique index); the same test body in every variant
(an INSERT and a SELECT). Per simulated test:

- **rollback**: one asyncpg connection for the whole run, each test inside
  ``BEGIN`` ... ``ROLLBACK`` (the floor of that approach: a real one also has
  to route every pool's connection to this one);
- **copy one database (file_copy | wal_log)**: ``CREATE DATABASE ...
  TEMPLATE ... STRATEGY``, connect, the body, close, ``DROP DATABASE``, all
  in the test's time; on the server's disk, and in a tablespace on a RAM
  file system (``/dev/shm``) where there is one;
- **fixture: 2 copies, back to back**: ``TemplateDatabases.clone()`` of
  main and reference (the ``wellwon_dsns`` fixture) when tests follow each
  other at once, so the copies made ahead are not ready yet;
- **fixture: 2 copies, 1 s tests**: the same with each test lasting a
  second, so the next copies are ready when it ends;
- **fixture: 2 copies in RAM**: both again, with the databases in a
  tablespace on ``/dev/shm`` (what the fixture does where there is one);
- **container start + stop**: ``start_databases`` and ``stop_databases`` of
  a ``DatabaseContainer`` on those copies (the ``wellwon_container`` fixture),
  pools of one connection.

Results and the choice they led to: docs/testing.md.

    python -m benchmarks.bench_isolation --tests 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from wellwon_db import DatabaseContainer, start_databases, stop_databases
from wellwon_db.testing import PostgresServer
from wellwon_db.testing._server import _run_as
from wellwon_db.testing._templates import TemplateDatabases, ram_directory

SCHEMA = "\n".join(
    f"CREATE TABLE t{i} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    f"name text NOT NULL UNIQUE, at timestamptz NOT NULL DEFAULT now());"
    for i in range(10)
)
RAM = ram_directory()
BODY = ("INSERT INTO t0 (name) VALUES ('a')", "SELECT count(*) FROM t0")


async def _body(connection: asyncpg.Connection) -> None:
    for statement in BODY:
        await connection.execute(statement)


async def rollback(server: PostgresServer, tests: int) -> list[float]:
    connection = await asyncpg.connect(server.dsn("bench_template"))
    times = []
    for _ in range(tests):
        started = time.perf_counter()
        await connection.execute("BEGIN")
        await _body(connection)
        await connection.execute("ROLLBACK")
        times.append(time.perf_counter() - started)
    await connection.close()
    return times


async def copy(server: PostgresServer, tests: int, strategy: str, template: str) -> list[float]:
    admin = await asyncpg.connect(server.dsn())
    times = []
    for number in range(tests):
        name = f"{template}_{strategy}_{number}"
        started = time.perf_counter()
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY {strategy}")
        connection = await asyncpg.connect(server.dsn(name))
        await _body(connection)
        await connection.close()
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        times.append(time.perf_counter() - started)
    await admin.close()
    return times


def fixture_copies(
    server: PostgresServer, tests: int, test_time: float, tablespace_dir: Path | None
) -> list[float]:
    templates = TemplateDatabases(
        server,
        {"main": SCHEMA, "reference": SCHEMA},
        prefix=f"bench{int(test_time * 1000)}{'ram' if tablespace_dir else ''}",
        tablespace_dir=tablespace_dir,
    )
    templates.drop(templates.clone())  # set-up, outside the measurement
    time.sleep(1)
    times = []
    for _ in range(tests):
        started = time.perf_counter()
        dsns = templates.clone()
        times.append(time.perf_counter() - started)
        time.sleep(test_time)
        templates.drop(dsns)
    templates.close()
    return times


def container_cycle(server: PostgresServer, tests: int) -> list[float]:
    templates = TemplateDatabases(
        server, {"main": SCHEMA, "reference": SCHEMA}, prefix="benchc", tablespace_dir=RAM
    )
    times = []
    for _ in range(tests):
        dsns = templates.clone()
        os.environ.update(
            POSTGRES_DSN=dsns["main"],
            POSTGRES_REFERENCE_DSN=dsns["reference"],
            PG_POOL_MIN_SIZE="1",
            PG_REFERENCE_POOL_MIN_SIZE="1",
        )

        async def cycle() -> float:
            container = DatabaseContainer()
            started = time.perf_counter()
            await start_databases(container)
            await container.main_db().fetchval("SELECT count(*) FROM t0")
            await stop_databases(container)
            return time.perf_counter() - started

        times.append(asyncio.run(cycle()))
        templates.drop(dsns)
    templates.close()
    return times


def _report(name: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    print(f"{name:<40} median {statistics.median(ms):8.1f} ms   p90 {p90:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=20, help="simulated tests per variant")
    args = parser.parse_args()
    os.environ.pop("PG_POOL_MIN_SIZE", None)
    with PostgresServer("bench-isolation") as server:
        server.execute("CREATE DATABASE bench_template")
        server.execute(SCHEMA, database="bench_template")
        ram = tempfile.mkdtemp(prefix="wellwon_db-bench-", dir=RAM) if RAM else None
        if ram is not None:
            account = _run_as()
            if account is not None:
                os.chown(ram, account.pw_uid, account.pw_gid)
            server.execute(f"CREATE TABLESPACE bench_ram LOCATION '{ram}'")
            server.execute("CREATE DATABASE bench_ram_template TABLESPACE bench_ram")
            server.execute(SCHEMA, database="bench_ram_template")
        n = args.tests
        variants: list[tuple[str, Callable[[], list[float]]]] = [
            ("rollback (one connection)", lambda: asyncio.run(rollback(server, n * 10))),
        ]
        for strategy in ("file_copy", "wal_log"):
            variants.append(
                (
                    f"copy one database, {strategy}",
                    lambda s=strategy: asyncio.run(copy(server, n, s, "bench_template")),
                )
            )
            if ram is not None:
                variants.append(
                    (
                        f"copy one database, {strategy}, in RAM",
                        lambda s=strategy: asyncio.run(copy(server, n, s, "bench_ram_template")),
                    )
                )
        variants += [
            ("fixture: 2 copies, back to back", lambda: fixture_copies(server, n, 0, None)),
            ("fixture: 2 copies, 1 s tests", lambda: fixture_copies(server, n, 1, None)),
        ]
        if ram is not None:
            variants += [
                (
                    "fixture: 2 copies in RAM, back to back",
                    lambda: fixture_copies(server, n, 0, RAM),
                ),
                ("fixture: 2 copies in RAM, 1 s tests", lambda: fixture_copies(server, n, 1, RAM)),
            ]
        variants.append(("container start + stop (2 pools)", lambda: container_cycle(server, n)))
        print(f"PostgreSQL {server_version(server)}; RAM file system: {RAM or 'none'}")
        for name, run in variants:
            _report(name, run())
        if ram is not None:
            server.execute("DROP DATABASE bench_ram_template")
            server.execute("DROP TABLESPACE bench_ram")
            shutil.rmtree(ram, ignore_errors=True)


def server_version(server: PostgresServer) -> str:
    async def version() -> str:
        connection = await asyncpg.connect(server.dsn())
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    return asyncio.run(version())


if __name__ == "__main__":
    main()
