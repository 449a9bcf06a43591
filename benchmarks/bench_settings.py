"""What each setting costs: our client under one changed setting against its defaults.

Starts its own throwaway PostgreSQL server and opens one ``MainDB`` per
variant (default production settings, then one setting changed each), all
pools of ``--pool-size`` connections. For each concurrency it runs every
variant for ``--duration`` seconds per round, rotated round by round, and
reports each variant's median ratio to the default variant of the same
round: above 1.00x the setting costs that much when left at its default.

    python -m benchmarks.bench_settings --rounds 8 --uvloop
    python -m benchmarks.bench_settings --workload insert    # BEGIN; INSERT; COMMIT
    python -m benchmarks.bench_settings --otel-sdk metrics   # with an SDK recording

Workloads: ``pk``, the primary-key lookup of ``bench_overhead`` (one row of
1,000); ``insert``, one INSERT in a transaction.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from typing import Any

from benchmarks.bench_overhead import _create_tables, _run, _run_for
from wellwon_db import (
    BreakerConfig,
    Database,
    DatabasePool,
    MainDB,
    PoolConfig,
    PostgresConfig,
    RetryConfig,
)
from wellwon_db.client._slot import PoolSlot
from wellwon_db.telemetry._telemetry import PoolTelemetry
from wellwon_db.testing import PostgresServer

SQL = "SELECT id, name, email FROM bench_users WHERE id = $1"


def _variants(base: PoolConfig) -> dict[str, dict[str, Any]]:
    """Name -> keyword arguments of DatabasePool (and the client's ``breaker``/``retry``)."""
    return {
        "defaults": {"config": base},
        "breaker off (PG_BREAKER_ENABLED=false)": {
            "config": base,
            "breaker": BreakerConfig(enabled=False),
        },
        "retries off (PG_RETRY_ATTEMPTS=1)": {"config": base, "retry": RetryConfig(attempts=1)},
        "no command timeout (not settable: a timer per statement)": {
            "config": replace(base, command_timeout=0)
        },
        "idle validation off (PG_POOL_VALIDATION_IDLE_SEC=0)": {
            "config": replace(base, validation_idle=0)
        },
        "no maximum lifetime (PG_POOL_MAX_LIFETIME_SEC=0)": {
            "config": replace(base, max_lifetime=0)
        },
        "lease histograms on (PG_POOL_LEASE_METRICS=true)": {
            "config": replace(base, lease_metrics=True)
        },
        "reset always (PG_POOL_RESET=always)": {"config": replace(base, reset="always")},
        "telemetry off (benchmark-only stub, no setting)": {"config": base, "no_telemetry": True},
    }


class _NoTelemetry(PoolTelemetry):
    """Every per-call telemetry method a no-op: what the OpenTelemetry API calls cost."""

    def start(self, query: str, *, batch: bool = False) -> None:
        return None

    def finish(self, *args: Any, **kwargs: Any) -> None:
        return None

    def start_transaction(self) -> None:
        return None

    def end_transaction(self, *args: Any, **kwargs: Any) -> None:
        return None


async def _main(args: argparse.Namespace) -> None:
    with PostgresServer("bench", settings={"max_connections": "300"}) as server:
        dsn = server.dsn()
        await _create_tables(
            dsn, "CREATE TABLE bench_events (id bigserial PRIMARY KEY, payload text)"
        )
        base = replace(
            PostgresConfig.load(env_file=None).get_pool_config(Database.MAIN),
            min_size=args.pool_size,
            max_size=args.pool_size,
        )
        pools = {}
        slots = {}
        for name, kwargs in _variants(base).items():
            silent = kwargs.pop("no_telemetry", False)
            breaker, retry = kwargs.pop("breaker", None), kwargs.pop("retry", None)
            pools[name] = pool = DatabasePool(Database.MAIN, dsn, **kwargs)
            slots[name] = PoolSlot(Database.MAIN, pool, breaker=breaker, retry=retry)
            if silent:
                pool.telemetry = _NoTelemetry(
                    "main", host=None, port=None, namespace=None, pool_name="bench"
                )
        for pool in pools.values():
            await pool.open()
        names = list(pools)
        make = _insert if args.workload == "insert" else _lookup
        ops = {name: make(MainDB(slot)) for name, slot in slots.items()}
        print(
            f"# python {sys.version.split()[0]}, loop={'uvloop' if args.uvloop else 'asyncio'}, "
            f"pool {args.pool_size}, {args.rounds} rounds x {args.duration}s, "
            f"cpus {os.cpu_count()}, otel {args.otel_sdk or 'API only (no SDK)'}"
        )
        try:
            for concurrency in args.concurrency:
                ratios: dict[str, list[float]] = {name: [] for name in names}
                for name in names:  # warm-up
                    await _run_for(ops[name], concurrency, 0.2)
                for round_no in range(args.rounds):
                    shift = round_no % len(names)
                    measured = {
                        name: (await _run_for(ops[name], concurrency, args.duration))[0]
                        for name in names[shift:] + names[:shift]
                    }
                    for name in names:
                        ratios[name].append(measured[name] / measured[names[0]])
                print(f"\n## {args.workload}, concurrency {concurrency}\n")
                print("| variant | ops/s vs defaults (median) | rounds' range |")
                print("| --- | ---: | ---: |")
                for name in names:
                    r = ratios[name]
                    print(f"| {name} | {statistics.median(r):.2f}x | {min(r):.2f}-{max(r):.2f} |")
        finally:
            for pool in pools.values():
                await pool.close()


def _lookup(db: MainDB) -> Any:
    return lambda: db.fetchrow(SQL, 42)


def _insert(db: MainDB) -> Any:
    async def insert() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO bench_events (payload) VALUES ($1)", "event")

    return insert


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per variant/round")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32]
    )
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--workload", choices=["pk", "insert"], default="pk")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--otel-sdk", choices=["metrics", "all"], help="install the OTel SDK")
    _run(_main, parser.parse_args())


if __name__ == "__main__":
    main()
