"""Shared by the tests: the servers' databases, polling, server-side counts, pool settings."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from wellwon_db import Database, PoolConfig, PostgresConfig
from wellwon_db.pool._slots import Holder, WaiterState
from wellwon_db.testing import PostgresServer

MAIN_DB = "wellwon_main"
REFERENCE_DB = "wellwon_reference"
SECRET = "s3cret-Passw0rd"


@dataclass(frozen=True)
class Servers:
    """The session's two servers and the databases the suite uses on them."""

    main: PostgresServer
    reference: PostgresServer

    @property
    def main_dsn(self) -> str:
        return self.main.dsn(MAIN_DB, password=SECRET)

    @property
    def reference_dsn(self) -> str:
        return self.reference.dsn(REFERENCE_DB, password=SECRET)


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``check`` until it returns true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(interval)


async def count_connections(server: PostgresServer, application_name: str) -> int:
    """Client backends on ``server`` that report ``application_name`` (seen by the server)."""
    connection = await asyncpg.connect(server.dsn(), timeout=10)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = $1 AND backend_type = 'client backend'",
            application_name,
        )
        return count
    finally:
        await connection.close()


def pool_config(database: Database = Database.MAIN, **overrides: Any) -> PoolConfig:
    """``database``'s pool settings from a clean environment, with ``overrides``."""
    base = PostgresConfig.load(env_file=None).get_pool_config(database)
    return dataclasses.replace(base, **overrides)


def run_cli(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``python -m wellwon_db *args`` with no PG_*/POSTGRES_* variable but ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG_", "POSTGRES_"))}
    env.update(settings)
    result = subprocess.run(
        [sys.executable, "-m", "wellwon_db", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr
    return result


#: The session's OpenTelemetry exporters (the SDK providers can be set once per process).
OTEL_EXPORTER = InMemorySpanExporter()
OTEL_READER = InMemoryMetricReader()


def install_otel_sdk() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """Set the SDK's tracer and meter providers (once), recording into the exporters above."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTEL_EXPORTER))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[OTEL_READER]))
    return OTEL_EXPORTER, OTEL_READER


def metric_points() -> dict[str, list[Any]]:
    """Every data point the reader has, by metric name."""
    data = OTEL_READER.get_metrics_data()
    found: dict[str, list[Any]] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class BasicWaiter:
    """A slot-machine waiter that always accepts: the machine's callers in its tests."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.state = WaiterState.WAITING
        self.grant: Holder[str] | None = None

    def set(self, grant: Holder[str]) -> bool:
        self.state = WaiterState.SERVED
        self.grant = grant
        return True

    def __repr__(self) -> str:
        return f"<BasicWaiter {self.state.value} deadline={self.deadline:.3f}>"
