"""Shared by the tests: the servers' databases, polling, server-side counts, pool settings."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

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
