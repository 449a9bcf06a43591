"""Per-query overhead of wellwon_db against raw asyncpg, measured in one interleaved run.

Starts its own throwaway PostgreSQL server, then for each workload and
concurrency runs every client for ``--duration`` seconds per round, in the
order A B C D, B C D A, ... (rotated, so no client always runs first) for
``--rounds`` rounds, and reports the median
ops/s, p50/p99 latency and each client's ratio to raw asyncpg (default
reset) measured in the same round. Absolute numbers move with machine load;
the ratios are the result.

    python -m benchmarks.bench_overhead --rounds 5 --duration 2 --uvloop
    python -m benchmarks.bench_overhead --otel-sdk metrics   # SDK recording metrics
    python -m benchmarks.bench_overhead --otel-sdk all       # ... and spans

``--otel-sdk`` installs the OpenTelemetry SDK before anything runs (a meter
provider with an in-memory reader; with ``all`` also a tracer provider whose
span processor drops the spans), so our client records every metric (and
span) while raw asyncpg, uninstrumented, stays the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from wellwon_db import (
    BreakerConfig,
    Database,
    DatabasePool,
    MainDB,
    PostgresConfig,
    RetryConfig,
)
from wellwon_db.client._slot import PoolSlot
from wellwon_db.testing import PostgresServer

POOL_SIZE = 20

Query = Callable[[], Awaitable[Any]]


@dataclass
class Result:
    ops: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)


async def _noop_reset(connection: object) -> None:
    pass


async def _run_for(query: Query, concurrency: int, duration: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await query()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def _clients(dsn: str) -> dict[str, tuple[Any, Callable[[Any, str, Any], Query]]]:
    raw_default = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    raw_noop = await asyncpg.create_pool(
        dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, reset=_noop_reset
    )
    base = PostgresConfig.load(env_file=None).get_pool_config(Database.MAIN)
    from dataclasses import replace

    config = replace(base, min_size=POOL_SIZE, max_size=POOL_SIZE)
    ours = DatabasePool(Database.MAIN, dsn, config)
    await ours.open()
    bare = DatabasePool(Database.MAIN, dsn, config)
    await bare.open()

    def raw(pool: asyncpg.Pool[Any], sql: str, arg: Any) -> Query:
        if arg is None:
            return lambda: pool.fetchval(sql)
        return lambda: pool.fetchrow(sql, arg)

    def client(pool: DatabasePool, sql: str, arg: Any) -> Query:
        db = MainDB(pool)
        if arg is None:
            return lambda: db.fetchval(sql)
        return lambda: db.fetchrow(sql, arg)

    def bare_client(pool: DatabasePool, sql: str, arg: Any) -> Query:
        off = PoolSlot(
            Database.MAIN,
            pool,
            breaker=BreakerConfig(enabled=False),
            retry=RetryConfig(attempts=1),
        )
        db = MainDB(off)
        if arg is None:
            return lambda: db.fetchval(sql)
        return lambda: db.fetchrow(sql, arg)

    return {
        "asyncpg (default reset)": (raw_default, raw),
        "asyncpg (no-op reset)": (raw_noop, raw),
        "MainDB (breaker+retry)": (ours, client),
        "MainDB (breaker/retry off)": (bare, bare_client),
    }


WORKLOADS = {
    "SELECT 1": ("SELECT 1", None),
    "pk lookup": ("SELECT id, name, email FROM bench_users WHERE id = $1", 42),
}


async def _create_tables(dsn: str, extra_sql: str = "") -> None:
    """``bench_users`` (1,000 rows for the primary-key lookup), then ``extra_sql``."""
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(
            "CREATE TABLE bench_users (id int PRIMARY KEY, name text, email text);"
            "INSERT INTO bench_users SELECT i, 'user' || i, 'u' || i || '@example.com' "
            "FROM generate_series(1, 1000) i;" + extra_sql
        )
    finally:
        await setup.close()


async def _main(args: argparse.Namespace) -> None:
    with PostgresServer("bench", settings={"max_connections": "200"}) as server:
        dsn = server.dsn()
        await _create_tables(dsn)
        clients = await _clients(dsn)
        names = list(clients)
        print(
            f"# python {sys.version.split()[0]}, loop={'uvloop' if args.uvloop else 'asyncio'}, "
            f"pool {POOL_SIZE}, {args.rounds} rounds x {args.duration}s, cpus {os.cpu_count()}, "
            f"otel {'SDK: ' + args.otel_sdk if args.otel_sdk else 'API only (no SDK)'}"
        )
        for workload, (sql, arg) in WORKLOADS.items():
            for concurrency in args.concurrency:
                results = {name: Result() for name in names}
                for round_no in range(args.rounds):
                    shift = round_no % len(names)  # rotate: no client always runs first
                    measured: dict[str, tuple[float, list[float]]] = {}
                    for name in names[shift:] + names[:shift]:
                        pool, make = clients[name]
                        measured[name] = await _run_for(
                            make(pool, sql, arg), concurrency, args.duration
                        )
                    baseline = measured[names[0]][0]
                    for name, (ops, latencies) in measured.items():
                        result = results[name]
                        result.ops.append(ops)
                        result.ratios.append(ops / baseline)
                        result.p50.append(_percentile(latencies, 0.50))
                        result.p99.append(_percentile(latencies, 0.99))
                print(f"\n## {workload}, concurrency {concurrency}\n")
                print("| client | ops/s | p50 ms | p99 ms | ratio to asyncpg (default reset) |")
                print("| --- | ---: | ---: | ---: | ---: |")
                for name in names:
                    r = results[name]
                    print(
                        f"| {name} | {statistics.median(r.ops):,.0f} | "
                        f"{statistics.median(r.p50) * 1000:.2f} | "
                        f"{statistics.median(r.p99) * 1000:.2f} | "
                        f"{statistics.median(r.ratios):.2f}x |"
                    )
        for pool, _ in clients.values():
            await pool.close()


def _install_sdk(*, traces: bool) -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if traces:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per client per round")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32]
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--otel-sdk",
        choices=["metrics", "all"],
        help="record metrics (or metrics and spans) with the OTel SDK",
    )
    _run(_main, parser.parse_args())


def _run(entry: Callable[[argparse.Namespace], Awaitable[None]], args: argparse.Namespace) -> None:
    """Install the OpenTelemetry SDK when ``--otel-sdk`` asks, then run on the chosen loop."""
    if args.otel_sdk:
        _install_sdk(traces=args.otel_sdk == "all")
    if args.uvloop:
        import uvloop

        uvloop.run(entry(args))
    else:
        asyncio.run(entry(args))


if __name__ == "__main__":
    main()
