"""A small service for the monitoring end-to-end test: real pools, metrics for Prometheus.

Run as ``python tests/metrics_workload.py PORT`` with the databases in the
environment. It serves its metrics through ``opentelemetry-exporter-prometheus``
on 127.0.0.1:PORT, makes every metric the dashboard and the alert rules use
(operations, errors, a slow query, a retried transaction, a refused call, a
breaker transition, replica reads and lag, cache hits, misses and an
invalidation), prints ``ready``, then keeps main's pool exhausted (its
connections held, callers queueing and timing out) until stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from wellwon_db import (
    CircuitOpenError,
    DatabaseContainer,
    PoolTimeoutError,
    start_databases,
    stop_databases,
)


async def _wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"metrics workload: {what} did not happen in {timeout}s")
        await asyncio.sleep(0.05)


async def _every_metric(container: DatabaseContainer) -> None:
    main = container.main_db()
    reference = container.reference_db()
    replica = container.main_replica_db()
    await main.execute("CREATE TABLE IF NOT EXISTS ledger (id int PRIMARY KEY, amount int)")
    await main.execute("INSERT INTO ledger VALUES (1, 10) ON CONFLICT DO NOTHING")
    await main.fetchval("SELECT pg_sleep(0.15)")  # slower than PG_LOG_SLOW_QUERY_SEC

    attempts = 0

    async def conflicting(tx: Any) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # a serialization failure: the whole function runs again
            await tx.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$")
        return int(await tx.fetchval("SELECT amount FROM ledger WHERE id = 1"))

    await main.run_in_transaction(conflicting)

    async def replica_keeps_up() -> bool:
        return any(endpoint.state == "ok" for endpoint in replica.replicas.endpoints)

    await _wait_for(replica_keeps_up, "the replica's first lag measurement")
    await replica.fetchval("SELECT count(*) FROM ledger")

    await reference.execute("CREATE TABLE IF NOT EXISTS rates (code text PRIMARY KEY, r int)")
    await reference.execute("INSERT INTO rates VALUES ('EUR', 1) ON CONFLICT DO NOTHING")
    await reference.cached.install_invalidation("rates")
    await reference.cached.fetch("SELECT code, r FROM rates")  # a miss
    await reference.cached.fetch("SELECT code, r FROM rates")  # a hit
    await reference.execute("UPDATE rates SET r = r + 1")

    async def invalidated() -> bool:
        return reference.cached.cache.stats["invalidations"] > 0

    await _wait_for(invalidated, "the cache invalidation")

    reference.breaker.force_open()
    with contextlib.suppress(CircuitOpenError):
        await reference.fetchval("SELECT 1")
    reference.breaker.reset()


async def _exhaust(container: DatabaseContainer, stop: asyncio.Event) -> None:
    main = container.main_db()
    held = asyncio.Event()
    holders_in = 0

    async def hold() -> None:
        nonlocal holders_in
        async with main.transaction():
            holders_in += 1
            if holders_in == 2:
                held.set()
            await stop.wait()

    async def queue() -> None:
        while not stop.is_set():
            with contextlib.suppress(PoolTimeoutError):
                await main.fetchval("SELECT 1")

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await held.wait()
    waiters = [asyncio.create_task(queue()) for _ in range(3)]
    print("ready", flush=True)
    await asyncio.gather(*holders, *waiters)


async def main(port: int) -> None:
    start_http_server(port, addr="127.0.0.1")
    container = DatabaseContainer()
    await start_databases(container)
    try:
        await _every_metric(container)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
        await _exhaust(container, stop)
    finally:
        await stop_databases(container)


if __name__ == "__main__":
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    asyncio.run(main(int(sys.argv[1])))
