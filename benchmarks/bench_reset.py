"""What the smart reset costs: the statement classifier, and the reset after sequence use.

Two measurements, one throwaway PostgreSQL server:

1. The classifier (``session_effect``) per distinct text (cold: parse and
   classify) and per cached call, for a few typical statements, beside the
   parse alone.
2. An INSERT into a table with a ``bigserial`` key through ``MainDB`` (a
   plain call, and a transaction ``BEGIN; INSERT; COMMIT``), with what follows
   it varied, interleaved round by round:

   - **no reset**: sequence state left for the next user (what the pool did
     before INSERT was classified ``SEQUENCES``);
   - **full reset**: the pool's reset (this version);
   - **DISCARD SEQUENCES**: a reset of the sequence state alone.

   The variants other than the full reset patch the classifier or the reset
   statement of this process for their rounds only.

The second part also times a transaction on one raw asyncpg connection with
``DISCARD SEQUENCES`` sent in the same message as ``COMMIT`` (no extra round
trip), beside the plain transaction and the one followed by a reset.

    python -m benchmarks.bench_reset --rounds 7 --uvloop
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import timeit
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import asyncpg
from pglast.parser import parse_sql_json

import wellwon_db.client._guarded as guarded
import wellwon_db.client._transaction as transaction
from benchmarks.bench_overhead import _run, _run_for
from wellwon_db import Database, DatabasePool, MainDB, PostgresConfig
from wellwon_db.client._slot import PoolSlot
from wellwon_db.pool._leases import RESET_SQL, PooledConnection
from wellwon_db.pool._session import SessionEffect, session_effect
from wellwon_db.testing import PostgresServer

TEXTS = {
    "SELECT 1": "SELECT 1",
    "primary-key lookup": "SELECT id, name, email FROM users WHERE id = $1",
    "INSERT ... RETURNING": "INSERT INTO items (name, price) VALUES ($1, $2) RETURNING id",
    "SET search_path": "SET search_path TO app, public",
    "report (join, aggregates)": (
        "SELECT u.id, u.name, count(o.id) AS orders, sum(o.total) FROM users u "
        "LEFT JOIN orders o ON o.user_id = u.id WHERE u.created_at > $1 "
        "AND u.status = ANY($2) GROUP BY u.id, u.name HAVING count(o.id) > 3 "
        "ORDER BY orders DESC LIMIT 50"
    ),
}

INSERT = "INSERT INTO reset_events (payload) VALUES ($1)"


def _per_call(fn: Callable[[], object], number: int) -> float:
    """Seconds per call: the best of 7 repeats (the least disturbed by other load)."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number


def classifier_costs() -> None:
    cold = session_effect.__wrapped__
    print("\n## Classifier, per call\n")
    print("| statement | parse only | classify, cold | cached | verdict |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, text in TEXTS.items():
        parse = _per_call(lambda text=text: parse_sql_json(text), 2000)
        first = _per_call(lambda text=text: cold(text), 2000)
        session_effect(text)
        cached = _per_call(lambda text=text: session_effect(text), 200_000)
        print(
            f"| {label} | {parse * 1e6:.1f} µs | {first * 1e6:.1f} µs | "
            f"{cached * 1e9:.0f} ns | {session_effect(text).name} |"
        )


def _without_sequences(query: str) -> SessionEffect:
    effect = session_effect(query)
    return SessionEffect.NONE if effect is SessionEffect.SEQUENCES else effect


def _discard_sequences(connection: PooledConnection) -> str:
    return "DISCARD SEQUENCES"


_FULL_RESET = PooledConnection.get_reset_query


@contextlib.contextmanager
def _variant(name: str) -> Iterator[None]:
    """Patch this process for one variant's rounds; undo afterwards."""
    if name == "no reset":
        guarded.session_effect = transaction.session_effect = _without_sequences
    elif name == "DISCARD SEQUENCES":
        PooledConnection.get_reset_query = _discard_sequences
    try:
        yield
    finally:
        guarded.session_effect = transaction.session_effect = session_effect
        PooledConnection.get_reset_query = _FULL_RESET


VARIANTS = ["full reset", "no reset", "DISCARD SEQUENCES"]


def _client_ops(db: MainDB) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def in_transaction() -> None:
        async with db.transaction() as tx:
            await tx.execute(INSERT, "event")

    return {
        "plain INSERT": lambda: db.execute(INSERT, "event"),
        "BEGIN; INSERT; COMMIT": in_transaction,
    }


async def _raw_ops(dsn: str) -> tuple[asyncpg.Connection, dict[str, Callable[[], Awaitable[Any]]]]:
    connection = await asyncpg.connect(dsn)

    def tx(commit: str, after: str | None) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await connection.execute("BEGIN")
            await connection.execute(INSERT, "event")
            await connection.execute(commit)
            if after:
                await connection.execute(after)

        return run

    return connection, {
        "no reset": tx("COMMIT", None),
        "full reset": tx("COMMIT", RESET_SQL),
        "DISCARD SEQUENCES": tx("COMMIT", "DISCARD SEQUENCES"),
        "COMMIT; DISCARD SEQUENCES (one message)": tx("COMMIT; DISCARD SEQUENCES", None),
    }


async def _rounds(
    ops: dict[str, Callable[[], Awaitable[Any]]],
    concurrency: int,
    args: argparse.Namespace,
    patch: bool,
) -> dict[str, list[tuple[float, float]]]:
    """ops/s and ratio to the first variant, per round, the order rotated each round."""
    names = list(ops)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for name in names:  # warm-up
        with _variant(name) if patch else contextlib.nullcontext():
            await _run_for(ops[name], concurrency, 0.2)
    for round_no in range(args.rounds):
        shift = round_no % len(names)
        measured = {}
        for name in names[shift:] + names[:shift]:
            with _variant(name) if patch else contextlib.nullcontext():
                measured[name] = (await _run_for(ops[name], concurrency, args.duration))[0]
        for name in names:
            results[name].append((measured[name], measured[name] / measured[names[0]]))
    return results


def _table(title: str, results: dict[str, list[tuple[float, float]]]) -> None:
    print(f"\n## {title}\n")
    print("| variant | ops/s (median) | vs first (median) | rounds' range |")
    print("| --- | ---: | ---: | ---: |")
    for name, rounds in results.items():
        ratios = [r for _, r in rounds]
        print(
            f"| {name} | {statistics.median(o for o, _ in rounds):,.0f} | "
            f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f} |"
        )


async def _main(args: argparse.Namespace) -> None:
    print(
        f"# python {sys.version.split()[0]}, loop={'uvloop' if args.uvloop else 'asyncio'}, "
        f"pool {args.pool_size}, {args.rounds} rounds x {args.duration}s, cpus {os.cpu_count()}"
    )
    classifier_costs()
    with PostgresServer("bench", settings={"max_connections": "100"}) as server:
        dsn = server.dsn()
        setup = await asyncpg.connect(dsn)
        await setup.execute("CREATE TABLE reset_events (id bigserial PRIMARY KEY, payload text)")
        await setup.close()
        config = replace(
            PostgresConfig.load(env_file=None).get_pool_config(Database.MAIN),
            min_size=args.pool_size,
            max_size=args.pool_size,
        )
        pool = DatabasePool(Database.MAIN, dsn, config=config)
        await pool.open()
        try:
            ops = _client_ops(MainDB(PoolSlot(Database.MAIN, pool)))
            for workload, op in ops.items():
                for concurrency in args.concurrency:
                    results = await _rounds(
                        dict.fromkeys(VARIANTS, op), concurrency, args, patch=True
                    )
                    _table(f"MainDB, {workload}, concurrency {concurrency}", results)
        finally:
            await pool.close()
        connection, raw = await _raw_ops(dsn)
        try:
            results = await _rounds(raw, 1, args, patch=False)
            _table("raw asyncpg, one connection, BEGIN; INSERT; COMMIT", results)
        finally:
            await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per variant/round")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32]
    )
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--otel-sdk", choices=["metrics", "all"], help="install the OTel SDK")
    _run(_main, parser.parse_args())


if __name__ == "__main__":
    main()
