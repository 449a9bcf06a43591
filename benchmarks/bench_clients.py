"""wellwon_db against the clients users would pick instead, measured in one interleaved run.

Starts its own throwaway PostgreSQL server, then for each event loop
(``--loop``), workload and concurrency runs every client for ``--duration``
seconds per round, interleaved and rotated (A B C D E, B C D E A, ...: each
client takes each position in turn, so no client always runs first or right
after another) for ``--rounds`` rounds, and reports medians: ops/s, p50/p99 latency, client CPU per
operation, and each client's ratio to raw asyncpg (default reset) and to raw
asyncpg with a no-op reset measured in the same round. Absolute numbers move
with machine load; the ratios are the result.

Clients (every pool holds ``--pool-size`` connections):

A  wellwon_db ``MainDB`` (``ReferenceDB`` for the reference workload) with its
   default production settings: breaker, retries, timeouts, idle validation,
   smart reset, OpenTelemetry API without an SDK;
B  raw asyncpg pool, default reset (a round trip on every release);
C  raw asyncpg pool with a no-op ``reset``;
D  psycopg_pool ``AsyncConnectionPool`` with autocommit connections;
E  SQLAlchemy async engine (``postgresql+asyncpg``) with ``text()`` queries;
F  the floor of any pool over asyncpg: raw connections in a bare LIFO stack
   (no reset, no timers, no accounting; nothing a product could ship).

Workloads: ``SELECT 1``; a primary-key lookup in a 10,000-row table; a
100-row fetch; one INSERT in a transaction; and reference-data reads (one
row by key, chosen at random among the same 500 keys of a reference table in
its own database: the baseline for a later cache).

    python -m benchmarks.bench_clients                      # asyncio and uvloop
    python -m benchmarks.bench_clients --loop uvloop --rounds 5 --json out.json
    python -m benchmarks.bench_clients --quick              # smoke run
    python -m benchmarks.bench_clients --loop uvloop --concurrency 32 \
        --workloads select1,pk,rows100 --clients ours,floor   # against the floor

CPU per operation is ``time.process_time()`` over each measured window divided
by its operations: the client process only, as PostgreSQL runs in processes of
its own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import asyncpg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from wellwon_db import Database, DatabaseClient, DatabasePool, MainDB, PostgresConfig, ReferenceDB
from wellwon_db.client._slot import PoolSlot
from wellwon_db.testing import PostgresServer

Op = Callable[[], Awaitable[Any]]
Kind = Literal["value", "row", "rows", "insert"]

USERS = 10_000
REFERENCE_KEYS = 500

#: Client keys in run order, and how the tables name them.
OURS, RAW, RAW_NOOP, PSYCOPG, SQLALCHEMY = "ours", "asyncpg", "asyncpg_noop", "psycopg", "sqla"
FLOOR = "floor"
#: Every client, in run order (the rounds rotate it).
CLIENTS = (OURS, RAW, RAW_NOOP, PSYCOPG, SQLALCHEMY, FLOOR)
LABELS = {
    OURS: "**wellwon_db {kind}**",
    FLOOR: "floor: asyncpg connections in a bare LIFO stack",
    RAW: "asyncpg pool (default reset)",
    RAW_NOOP: "asyncpg pool (no-op reset)",
    PSYCOPG: "psycopg_pool (autocommit)",
    SQLALCHEMY: "SQLAlchemy async engine",
}


# -- workloads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One kind of call. ``sql`` uses asyncpg's ``$n`` placeholders; ``params`` draws args."""

    key: str
    short: str
    title: str
    kind: Kind
    sql: str
    params: Callable[[], tuple[Any, ...]]
    reference: bool = False


def _no_params() -> tuple[Any, ...]:
    return ()


def _user_id() -> tuple[Any, ...]:
    return (random.randint(1, USERS),)


def _page_start() -> tuple[Any, ...]:
    return (random.randint(1, USERS - 99),)


def _event() -> tuple[Any, ...]:
    return (random.randint(1, USERS), "clicked")


_REF_CODES = [f"C{i:04d}" for i in range(1, REFERENCE_KEYS + 1)]


def _reference_code() -> tuple[Any, ...]:
    return (random.choice(_REF_CODES),)


WORKLOADS = [
    Workload("select1", "`SELECT 1`", "`SELECT 1`", "value", "SELECT 1", _no_params),
    Workload(
        "pk",
        "pk lookup",
        "primary-key lookup (1 row of 10,000)",
        "row",
        "SELECT id, name, email FROM bench_users WHERE id = $1",
        _user_id,
    ),
    Workload(
        "rows100",
        "100-row fetch",
        "100-row fetch",
        "rows",
        "SELECT id, name, email FROM bench_users WHERE id >= $1 ORDER BY id LIMIT 100",
        _page_start,
    ),
    Workload(
        "insert",
        "insert in tx",
        "INSERT in a transaction (BEGIN; INSERT; COMMIT)",
        "insert",
        "INSERT INTO bench_events (user_id, action) VALUES ($1, $2)",
        _event,
    ),
    Workload(
        "reference",
        "reference read",
        f"reference-data read (random key of {REFERENCE_KEYS}, own database)",
        "row",
        "SELECT code, country, customs_code, duty_bp FROM ref_customs WHERE code = $1",
        _reference_code,
        reference=True,
    ),
]

_PLACEHOLDER = re.compile(r"\$(\d+)")


def _psycopg_sql(sql: str) -> str:
    return _PLACEHOLDER.sub("%s", sql)


def _sqlalchemy_sql(sql: str) -> str:
    return _PLACEHOLDER.sub(r":p\1", sql)


# -- clients ---------------------------------------------------------------------------------


class Client(Protocol):
    key: str
    label: str

    def op(self, workload: Workload) -> Op: ...

    async def close(self) -> None: ...


async def _noop_reset(connection: object) -> None:
    pass


class AsyncpgClient:
    def __init__(self, key: str, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.key, self.label, self.pool = key, LABELS[key], pool

    @classmethod
    async def open(cls, dsn: str, size: int, *, noop_reset: bool) -> AsyncpgClient:
        extra: dict[str, Any] = {"reset": _noop_reset} if noop_reset else {}
        pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size, **extra)
        return cls(RAW_NOOP if noop_reset else RAW, pool)

    def op(self, w: Workload) -> Op:
        pool, sql, params = self.pool, w.sql, w.params
        if w.kind == "value":
            return lambda: pool.fetchval(sql, *params())
        if w.kind == "row":
            return lambda: pool.fetchrow(sql, *params())
        if w.kind == "rows":
            return lambda: pool.fetch(sql, *params())

        async def insert() -> None:
            async with pool.acquire() as con, con.transaction():
                await con.execute(sql, *params())

        return insert

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except TimeoutError:
            self.pool.terminate()


_ASYNCPG_CALLS: dict[str, Callable[..., Awaitable[Any]]] = {
    "value": asyncpg.Connection.fetchval,
    "row": asyncpg.Connection.fetchrow,
    "rows": asyncpg.Connection.fetch,
}


class FloorClient:
    """The floor of any pool over asyncpg: raw connections in a bare LIFO stack.

    A call pops a connection (or queues on a future when none is left), runs
    its statement and pushes the connection back, handing it to the first
    queued caller. No reset, no timers (no command or acquire timeout), no
    validation, no accounting, no error handling: nothing a product could
    ship, and so the most any pool over asyncpg connections can reach.
    """

    def __init__(self, connections: list[asyncpg.Connection[asyncpg.Record]]) -> None:
        self.key, self.label = FLOOR, LABELS[FLOOR]
        self.idle = connections
        self.all = list(connections)
        self.waiters: collections.deque[asyncio.Future[asyncpg.Connection[asyncpg.Record]]] = (
            collections.deque()
        )

    @classmethod
    async def open(cls, dsn: str, size: int) -> FloorClient:
        connections = await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(size)))
        return cls(list(connections))

    async def _wait(self) -> asyncpg.Connection[asyncpg.Record]:
        future: asyncio.Future[asyncpg.Connection[asyncpg.Record]]
        future = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        return await future

    def _put(self, connection: asyncpg.Connection[asyncpg.Record]) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.idle.append(connection)

    def op(self, w: Workload) -> Op:
        idle, wait, put, sql, params = self.idle, self._wait, self._put, w.sql, w.params
        if w.kind == "insert":

            async def insert() -> Any:
                connection = idle.pop() if idle else await wait()
                try:
                    async with connection.transaction():
                        return await connection.execute(sql, *params())
                finally:
                    put(connection)

            return insert
        run = _ASYNCPG_CALLS[w.kind]

        async def call() -> Any:
            connection = idle.pop() if idle else await wait()
            try:
                return await run(connection, sql, *params())
            finally:
                put(connection)

        return call

    async def close(self) -> None:
        await asyncio.gather(*(c.close(timeout=10) for c in self.all), return_exceptions=True)


class OursClient:
    def __init__(self, pool: DatabasePool, db: DatabaseClient) -> None:
        self.key, self.pool, self.db = OURS, pool, db
        self.label = LABELS[OURS].format(kind=type(db).__name__)

    @classmethod
    async def open(cls, config: PostgresConfig, database: Database, size: int) -> OursClient:
        # As the container builds it (_container.open_database_pool), at pool size ``size``.
        pool = DatabasePool(
            database,
            config.get_dsn(database),
            replace(config.get_pool_config(database), min_size=size, max_size=size),
            telemetry=config.get_telemetry_config(database),
        )
        await pool.open()
        slot = PoolSlot(
            database,
            pool,
            breaker=config.get_breaker_config(database),
            retry=config.get_retry_config(database),
        )
        db: DatabaseClient = MainDB(slot) if database is Database.MAIN else ReferenceDB(slot)
        return cls(pool, db)

    def op(self, w: Workload) -> Op:
        db, sql, params = self.db, w.sql, w.params
        if w.kind == "value":
            return lambda: db.fetchval(sql, *params())
        if w.kind == "row":
            return lambda: db.fetchrow(sql, *params())
        if w.kind == "rows":
            return lambda: db.fetch(sql, *params())

        async def insert() -> None:
            async with db.transaction() as tx:
                await tx.execute(sql, *params())

        return insert

    async def close(self) -> None:
        await self.pool.close()


class PsycopgClient:
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.key, self.label, self.pool = PSYCOPG, LABELS[PSYCOPG], pool

    @classmethod
    async def open(cls, dsn: str, size: int) -> PsycopgClient:
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            dsn, min_size=size, max_size=size, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True, timeout=30)
        return cls(pool)

    def op(self, w: Workload) -> Op:
        pool, sql, params = self.pool, _psycopg_sql(w.sql), w.params
        if w.kind == "insert":

            async def insert() -> None:
                async with pool.connection() as conn, conn.transaction():
                    await conn.execute(sql, params())

            return insert

        fetch_all = w.kind == "rows"

        async def query() -> Any:
            async with pool.connection() as conn:
                cursor = await conn.execute(sql, params() or None)
                return await (cursor.fetchall() if fetch_all else cursor.fetchone())

        return query

    async def close(self) -> None:
        await self.pool.close(timeout=10)


class SQLAlchemyClient:
    def __init__(self, engine: AsyncEngine) -> None:
        self.key, self.label, self.engine = SQLALCHEMY, LABELS[SQLALCHEMY], engine

    @classmethod
    async def open(cls, dsn: str, size: int) -> SQLAlchemyClient:
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        return cls(create_async_engine(url, pool_size=size, max_overflow=0))

    def op(self, w: Workload) -> Op:
        engine, stmt = self.engine, text(_sqlalchemy_sql(w.sql))

        def bind() -> dict[str, Any]:
            return {f"p{i}": value for i, value in enumerate(w.params(), 1)}

        if w.kind == "insert":

            async def insert() -> None:
                async with engine.begin() as conn:
                    await conn.execute(stmt, bind())

            return insert

        return _sqlalchemy_query(engine, stmt, bind, w.kind)

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlalchemy_query(
    engine: AsyncEngine, stmt: TextClause, bind: Callable[[], dict[str, Any]], kind: Kind
) -> Op:
    async def query() -> Any:
        async with engine.connect() as conn:
            result = await conn.execute(stmt, bind())
            if kind == "value":
                return result.scalar()
            if kind == "row":
                return result.first()
            return result.all()

    return query


async def _open_clients(
    stack: AsyncExitStack,
    dsn: str,
    config: PostgresConfig,
    database: Database,
    size: int,
    keys: Sequence[str],
) -> list[Client]:
    """Open the clients named by ``keys`` against ``dsn``, in the order of :data:`CLIENTS`.

    Each is closed by ``stack`` (also when a later one fails).
    """
    openers: dict[str, Callable[[], Awaitable[Client]]] = {
        OURS: lambda: OursClient.open(config, database, size),
        RAW: lambda: AsyncpgClient.open(dsn, size, noop_reset=False),
        RAW_NOOP: lambda: AsyncpgClient.open(dsn, size, noop_reset=True),
        PSYCOPG: lambda: PsycopgClient.open(dsn, size),
        SQLALCHEMY: lambda: SQLAlchemyClient.open(dsn, size),
        FLOOR: lambda: FloorClient.open(dsn, size),
    }
    clients: list[Client] = []
    for key in CLIENTS:
        if key not in keys:
            continue
        client = await openers[key]()
        stack.push_async_callback(client.close)
        clients.append(client)
    return clients


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Cell:
    """One client on one workload x concurrency x loop: one entry per round."""

    loop: str
    workload: str
    concurrency: int
    client: str
    label: str
    ops: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    #: Same-round ratio of ops/s to each other client's, by client key.
    ratio: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        values: list[float] = getattr(self, name)
        return statistics.median(values)

    def median_ratio(self, baseline: str) -> float:
        return statistics.median(self.ratio[baseline])


@dataclass
class Window:
    ops: float
    p50_ms: float
    p99_ms: float
    cpu_us: float


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def _run_for(op: Op, concurrency: int, duration: float) -> Window:
    """``concurrency`` tasks call ``op`` back to back for ``duration`` s, each at least once."""
    latencies: list[float] = []
    clock = time.perf_counter

    async def worker() -> None:
        append = latencies.append
        while True:
            began = clock()
            await op()
            ended = clock()
            append(ended - began)
            if ended >= deadline:
                return

    gc.collect()  # no collection of the previous client's garbage inside this window
    cpu_started, started = time.process_time(), clock()
    deadline = started + duration
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = clock() - started, time.process_time() - cpu_started
    count = len(latencies)
    latencies.sort()
    return Window(
        ops=count / elapsed,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        cpu_us=cpu / count * 1e6,
    )


async def _measure(
    loop_name: str,
    clients: list[Client],
    workload: Workload,
    args: argparse.Namespace,
    cells: list[Cell],
) -> None:
    ops = {client.key: client.op(workload) for client in clients}
    for client in clients:  # warm-up: open every connection, fill statement caches
        await _run_for(ops[client.key], max(args.concurrency), args.warmup)
    for concurrency in args.concurrency:
        row = {c.key: Cell(loop_name, workload.key, concurrency, c.key, c.label) for c in clients}
        for round_no in range(1, args.rounds + 1):
            _progress(f"[{loop_name}] {workload.key} c={concurrency} round {round_no}")
            shift = (round_no - 1) % len(clients)  # rotate: no fixed position in the round
            order = clients[shift:] + clients[:shift]
            windows = {
                c.key: await _run_for(ops[c.key], concurrency, args.duration) for c in order
            }
            for key, window in windows.items():
                cell = row[key]
                cell.ops.append(window.ops)
                cell.p50_ms.append(window.p50_ms)
                cell.p99_ms.append(window.p99_ms)
                cell.cpu_us.append(window.cpu_us)
                for other, base in windows.items():
                    cell.ratio.setdefault(other, []).append(window.ops / base.ops)
        cells.extend(row.values())


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# -- one event loop --------------------------------------------------------------------------


async def _run_loop(
    loop_name: str, dsns: dict[Database, str], config: PostgresConfig, args: argparse.Namespace
) -> list[Cell]:
    cells: list[Cell] = []
    for database in (Database.MAIN, Database.REFERENCE):
        workloads = [
            w
            for w in WORKLOADS
            if w.key in args.workloads and w.reference == (database is Database.REFERENCE)
        ]
        if not workloads:
            continue
        # One database's clients at a time: 5 pools open, never 10.
        async with AsyncExitStack() as stack:
            clients = await _open_clients(
                stack, dsns[database], config, database, args.pool_size, args.clients
            )
            for workload in workloads:
                await _measure(loop_name, clients, workload, args, cells)
    return cells


def _run_on(loop_name: str, coro: Coroutine[Any, Any, list[Cell]]) -> list[Cell]:
    """Run ``coro`` on a fresh loop; Ctrl-C cancels it, so its pools close first."""
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# -- set-up ----------------------------------------------------------------------------------


def _setup(server: PostgresServer) -> dict[Database, str]:
    server.execute(
        "CREATE TABLE bench_users (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);"
        "INSERT INTO bench_users SELECT i, 'user ' || i, 'user' || i || '@example.com' "
        f"FROM generate_series(1, {USERS}) i;"
        "CREATE TABLE bench_events (id bigserial PRIMARY KEY, user_id int NOT NULL, "
        "action text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
    )
    server.execute("VACUUM ANALYZE bench_users")
    reference_dsn = server.create_database("reference")
    server.execute(
        "CREATE TABLE ref_customs (code text PRIMARY KEY, country text NOT NULL, "
        "customs_code text NOT NULL, duty_bp int NOT NULL);"
        "INSERT INTO ref_customs SELECT 'C' || lpad(i::text, 4, '0'), 'country ' || i, "
        f"'CUST-' || i, i % 2000 FROM generate_series(1, {REFERENCE_KEYS}) i",
        database="reference",
    )
    server.execute("VACUUM ANALYZE ref_customs", database="reference")
    return {Database.MAIN: server.dsn(), Database.REFERENCE: reference_dsn}


def _production_config(dsns: dict[Database, str]) -> PostgresConfig:
    """Our default settings: the DSNs and nothing else from the environment."""
    dropped = sorted(k for k in os.environ if k.upper().startswith(("PG_", "POSTGRES_")))
    for name in dropped:
        del os.environ[name]
    if dropped:
        _progress(f"ignoring {', '.join(dropped)} from the environment (defaults measured)")
    os.environ["POSTGRES_DSN"] = dsns[Database.MAIN]
    os.environ["POSTGRES_REFERENCE_DSN"] = dsns[Database.REFERENCE]
    return PostgresConfig.load(env_file=None)


def _versions() -> dict[str, str]:
    names = ["wellwon-db", "asyncpg", "psycopg", "psycopg-binary", "psycopg-pool", "sqlalchemy"]
    names += ["uvloop", "opentelemetry-api"]
    found: dict[str, str] = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _source() -> str:
    """Which wellwon_db was measured: the commit, and whether the package had local edits."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head, dirty = (
            git("rev-parse", "--short", "HEAD"),
            git("status", "--porcelain", "wellwon_db"),
        )
    except (OSError, subprocess.CalledProcessError):
        return "(not from a git checkout)"
    return f"at {head}" + (" plus uncommitted changes" if dirty else "")


def _otel_mode() -> str:
    from opentelemetry import metrics, trace

    sdk = [
        type(provider).__module__
        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider())
        if type(provider).__module__.startswith("opentelemetry.sdk")
    ]
    return "SDK configured" if sdk else "API only (no SDK)"


# -- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    title: str
    baseline: str
    minimum: float
    applies: Callable[[Cell], bool]


TARGETS = [
    Target(
        "≥1.40x asyncpg default reset (`SELECT 1`, pk lookup; c=32)",
        RAW,
        1.40,
        lambda c: c.workload in ("select1", "pk") and c.concurrency == 32,
    ),
    Target("≥0.95x asyncpg no-op reset (every workload)", RAW_NOOP, 0.95, lambda c: True),
    Target("≥1.00x psycopg_pool (every workload)", PSYCOPG, 1.00, lambda c: True),
    Target(
        "≥0.90x the floor (`SELECT 1`, pk lookup, 100-row fetch; c=32)",
        FLOOR,
        0.90,
        lambda c: c.workload in ("select1", "pk", "rows100") and c.concurrency == 32,
    ),
]


def _fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def _ratio_spread(cell: Cell, baseline: str) -> str:
    """``1.35x (1.29-1.44)``: the median, then the lowest and highest round."""
    rounds = cell.ratio[baseline]
    median = _fmt_ratio(cell.median_ratio(baseline))
    return median if len(rounds) < 2 else f"{median} ({min(rounds):.2f}-{max(rounds):.2f})"


def _ours_by_workload(cells: list[Cell]) -> list[Cell]:
    """Our cells ordered workload, concurrency, loop (loops side by side)."""
    order = {w.key: i for i, w in enumerate(WORKLOADS)}
    loops = list(dict.fromkeys(c.loop for c in cells))
    ours = [c for c in cells if c.client == OURS]
    return sorted(ours, key=lambda c: (order[c.workload], c.concurrency, loops.index(c.loop)))


#: Baselines of the ratio columns, and how the tables title them.
BASELINES = {
    RAW: "asyncpg default reset",
    RAW_NOOP: "asyncpg no-op reset",
    PSYCOPG: "psycopg_pool",
    SQLALCHEMY: "SQLAlchemy",
    FLOOR: "floor",
}


def _report(cells: list[Cell], meta: dict[str, Any], args: argparse.Namespace) -> list[str]:
    short = {w.key: w.short for w in WORKLOADS}
    loops = list(dict.fromkeys(c.loop for c in cells))
    present = {c.client for c in cells}
    baselines = [key for key in BASELINES if key in present]
    detail = [key for key in (RAW, RAW_NOOP, FLOOR) if key in present]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    out = [
        f"`{meta['command']}`",
        "",
        f"- {meta['date']}; {meta['cpus']} CPUs (load average {meta['load_before']:g} "
        "at the start); client and PostgreSQL "
        f"{meta['server_version']} on one host, TCP loopback; wellwon_db {meta['source']}",
        f"- pool size {args.pool_size} for every client; {args.rounds} rounds x "
        f"{args.duration:g} s per client per round, interleaved; medians of the rounds",
        f"- OpenTelemetry {meta['otel']}; {versions}",
        "",
        "### Our client's ratios (same-round ops/s ratios: median, and the rounds' range)",
        "",
        "| workload | c | loop | "
        + " | ".join(f"vs {BASELINES[key]}" for key in baselines)
        + " |",
        "| --- | ---: | --- |" + " ---: |" * len(baselines),
    ]
    for cell in _ours_by_workload(cells):
        ratios = " | ".join(_ratio_spread(cell, b) for b in baselines)
        out.append(f"| {short[cell.workload]} | {cell.concurrency} | {cell.loop} | {ratios} |")
    out.append("")

    for loop_name in loops:
        for workload in WORKLOADS:
            rows = [c for c in cells if c.loop == loop_name and c.workload == workload.key]
            if not rows:
                continue
            out += [
                f"### {workload.title}, {loop_name}",
                "",
                "| c | client | ops/s | p50 ms | p99 ms | CPU µs/op | "
                + " | ".join(f"vs {BASELINES[key]}" for key in detail)
                + " |",
                "| ---: | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(detail),
            ]
            for cell in rows:
                ratios = " | ".join(_fmt_ratio(cell.median_ratio(key)) for key in detail)
                out.append(
                    f"| {cell.concurrency} | {cell.label} | {cell.median('ops'):,.0f} | "
                    f"{cell.median('p50_ms'):.2f} | {cell.median('p99_ms'):.2f} | "
                    f"{cell.median('cpu_us'):.0f} | {ratios} |"
                )
            out.append("")

    return out + _targets(cells)


def _verdict(ratio: float, minimum: float) -> str:
    if ratio >= minimum:
        return f"MET {_fmt_ratio(ratio)}"
    miss = minimum - ratio
    if miss < 0.005:  # would print as "1.00x, short 0.00x"
        return f"**MISSED** {ratio:.3f}x (short {miss:.3f}x, {miss / minimum:.1%})"
    return f"**MISSED** {_fmt_ratio(ratio)} (short {miss:.2f}x, {miss / minimum:.0%})"


def _targets(cells: list[Cell]) -> list[str]:
    """One row per target and workload, one column per loop and concurrency."""
    short = {w.key: w.short for w in WORKLOADS}
    ours = _ours_by_workload(cells)
    columns = sorted(
        {(c.loop, c.concurrency) for c in ours},
        key=lambda lc: (lc[1], [c.loop for c in ours].index(lc[0])),
    )
    out = [
        "### Targets",
        "",
        "| target | workload | " + " | ".join(f"c={c} {loop}" for loop, c in columns) + " |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    met = total = 0
    for target in TARGETS:
        hits = [c for c in ours if target.applies(c) and target.baseline in c.ratio]
        for workload in dict.fromkeys(c.workload for c in hits):
            row = []
            for loop_name, concurrency in columns:
                match = [
                    c
                    for c in hits
                    if (c.workload, c.loop, c.concurrency) == (workload, loop_name, concurrency)
                ]
                if not match:
                    row.append("")
                    continue
                ratio = match[0].median_ratio(target.baseline)
                total += 1
                met += ratio >= target.minimum
                row.append(_verdict(ratio, target.minimum))
            out.append(f"| {target.title} | {short[workload]} | " + " | ".join(row) + " |")
        if not hits:
            out.append(f"| {target.title} | not measured |" + " |" * len(columns))
    out += ["", f"{met} of {total} target checks met.", ""]
    return out


# -- main ------------------------------------------------------------------------------------


def _list(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda s: [convert(x.strip()) for x in s.split(",") if x.strip()]


def _loop_name(name: str) -> str:
    if name not in ("asyncio", "uvloop"):
        raise argparse.ArgumentTypeError(f"unknown loop {name!r} (asyncio, uvloop)")
    return name


def _workload_key(name: str) -> str:
    keys = [w.key for w in WORKLOADS]
    if name not in keys:
        raise argparse.ArgumentTypeError(f"unknown workload {name!r} ({', '.join(keys)})")
    return name


def _client_key(name: str) -> str:
    if name not in CLIENTS:
        raise argparse.ArgumentTypeError(f"unknown client {name!r} ({', '.join(CLIENTS)})")
    return name


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved rounds (5: each client in each position)",
    )
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per client/round")
    parser.add_argument("--warmup", type=float, default=0.25, help="seconds per client/workload")
    parser.add_argument(
        "--concurrency", type=_list(int), default=[1, 32], help="comma-separated tasks"
    )
    parser.add_argument("--pool-size", type=int, default=20, help="connections per pool")
    parser.add_argument(
        "--loop", type=_list(_loop_name), default=["asyncio", "uvloop"], help="one run each"
    )
    parser.add_argument(
        "--workloads",
        type=_list(_workload_key),
        default=[w.key for w in WORKLOADS],
        help="comma-separated subset",
    )
    parser.add_argument(
        "--clients",
        type=_list(_client_key),
        default=list(CLIENTS),
        help=f"comma-separated subset of {', '.join(CLIENTS)} ({OURS} always runs)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every round's numbers here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 0.3 s")
    args = parser.parse_args(argv)
    if OURS not in args.clients:
        args.clients.insert(0, OURS)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 0.3, 0.05
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so pools close and the server stops."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    command = "python -m benchmarks.bench_clients " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    cells: list[Cell] = []
    source = _source()  # before the run: others may be editing the package
    load_before = round(os.getloadavg()[0], 2)  # other work on the host skews the numbers
    try:
        with (
            _sigterm_as_interrupt(),
            PostgresServer("bench-clients", settings={"max_connections": "250"}) as server,
        ):
            dsns = _setup(server)
            config = _production_config(dsns)
            server_version = asyncio.run(_server_version(dsns[Database.MAIN]))
            for loop_name in args.loop:
                _progress(f"loop {loop_name}")
                cells += _run_on(loop_name, _run_loop(loop_name, dsns, config, args))
    except KeyboardInterrupt:
        print("interrupted: pools closed, server stopped", file=sys.stderr)
        return 130
    meta = {
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "platform": platform.platform(),
        "server_version": server_version,
        "otel": _otel_mode(),
        "source": source,
        "versions": _versions(),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
    }
    print("\n".join(_report(cells, meta, args)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"meta": meta, "cells": [asdict(c) for c in cells]}, out, indent=1)
    return 0


async def _server_version(dsn: str) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        version: str = await connection.fetchval("SHOW server_version")
        return version.split()[0]
    finally:
        await connection.close()


if __name__ == "__main__":
    sys.exit(main())
