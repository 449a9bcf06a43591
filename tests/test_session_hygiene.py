"""What a lease leaves behind never reaches the next one; errors keep their cause.

asyncpg keeps session state of its own besides the server's: listeners, log
listeners, the open-transaction marker, and a release counter that retires
prepared statements, cursors and transactions made during a lease. Each test
leaves one of them behind and checks the next lease starts clean, as it did
when asyncpg's pool released connections for us.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers import Servers, pool_config, wait_until
from wellwon_db import (
    Database,
    DatabasePool,
    DatabaseUnavailableError,
    MainDB,
    RetryConfig,
)
from wellwon_db.client._slot import PoolSlot

#: The checkout these tests belong to (so a subprocess imports the same wellwon_db).
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def one_connection(db_env: Servers) -> AsyncIterator[MainDB]:
    """A client whose pool has exactly one connection: every lease reuses it."""
    config = pool_config(min_size=1, max_size=1, capacity_check="off", command_timeout=10.0)
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        yield MainDB(pool)


async def _all_idle(client: MainDB) -> None:
    async def idle() -> bool:
        stats = client.pool.get_stats()
        return stats["idle"] == 1 and stats["reserved"] == 0 and not client.pool.leases.releasing

    await wait_until(idle)


# -- asyncpg's client-side session state survives a release ---------------------


async def test_transaction_cancelled_in_its_block_does_not_poison_the_connection(
    one_connection: MainDB,
) -> None:
    inside = asyncio.Event()

    async def body() -> None:
        async with one_connection.transaction() as tx:
            await tx.execute("SELECT 1")
            inside.set()
            await asyncio.Event().wait()  # a request cancelled mid-transaction

    task = asyncio.create_task(body())
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _all_idle(one_connection)  # the background release rolled back

    # Before the owned pool: asyncpg's release ran Connection._reset(), clearing _top_xact.
    async with one_connection.transaction() as tx:
        assert await tx.fetchval("SELECT 1") == 1


async def test_acquire_block_abandoning_a_transaction_does_not_poison_the_connection(
    one_connection: MainDB,
) -> None:
    with pytest.raises(ValueError, match="abandoned"):
        async with one_connection.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            raise ValueError("abandoned")  # never committed nor rolled back
    async with one_connection.transaction() as tx:
        assert await tx.fetchval("SELECT 1") == 1


# A fix may warn of the leftover listener, as asyncpg's pool did.
@pytest.mark.filterwarnings("ignore::asyncpg.InterfaceWarning")
async def test_listen_after_a_lease_that_left_a_listener_still_listens(
    one_connection: MainDB,
) -> None:
    def callback(*args: Any) -> None:
        pass

    async with one_connection.acquire() as conn:
        await conn.add_listener("wellwon_review", callback)  # left behind
    async with one_connection.acquire() as conn:
        await conn.add_listener("wellwon_review", callback)
        channels = await conn.fetchval("SELECT count(*) FROM pg_listening_channels()")
        await conn.remove_listener("wellwon_review", callback)
    assert channels == 1


# A fix may warn of the leftover listener, as asyncpg's pool did.
@pytest.mark.filterwarnings("ignore::asyncpg.InterfaceWarning")
async def test_log_listener_of_a_finished_lease_sees_no_later_notices(
    one_connection: MainDB,
) -> None:
    seen: list[str] = []
    async with one_connection.acquire() as conn:
        conn.add_log_listener(lambda _con, message: seen.append(message.message))
    await one_connection.execute("DO $$ BEGIN RAISE NOTICE 'another caller''s notice'; END $$")
    await one_connection.fetchval("SELECT 1")  # the listener's call_soon has run by now
    assert seen == []


# -- use after release ---------------------------------------------------------------


async def test_prepared_statement_from_an_acquire_block_is_refused_after_it(
    one_connection: MainDB,
) -> None:
    async with one_connection.acquire() as conn:
        statement = await conn.prepare("SELECT 1")
        assert await statement.fetchval() == 1
    with pytest.raises(asyncpg.InterfaceError):
        await statement.fetchval()  # the connection is the pool's (or another task's) now


async def test_scope_connection_is_refused_after_the_transaction_block(
    one_connection: MainDB,
) -> None:
    async with one_connection.transaction() as tx:
        raw = tx.connection
        assert await raw.fetchval("SELECT 1") == 1
    with pytest.raises(asyncpg.InterfaceError):
        await raw.fetchval("SELECT 1")


async def test_acquire_lends_an_asyncpg_connection_instance(one_connection: MainDB) -> None:
    async with one_connection.acquire() as conn:
        assert isinstance(conn, asyncpg.Connection)


# -- retries ------------------------------------------------------------------------


async def test_unavailable_error_keeps_its_cause_when_retrying_stops_at_once(
    db_env: Servers,
) -> None:
    config = pool_config(min_size=1, max_size=2, capacity_check="off", command_timeout=10.0)
    # The first attempt outlasts the retry deadline: the policy re-raises the first error.
    retry = RetryConfig(attempts=3, backoff=0.01, backoff_max=0.01, deadline=0.2)
    async with DatabasePool(Database.MAIN, db_env.main_dsn, config) as pool:
        client = MainDB(PoolSlot(Database.MAIN, pool, retry=retry))
        with pytest.raises(DatabaseUnavailableError) as caught:
            await client.fetchval(
                "SELECT pg_sleep(0.3), pg_terminate_backend(pg_backend_pid())",
                idempotent=True,
            )
        assert caught.value.may_have_run is True
        assert isinstance(
            caught.value.__cause__,
            asyncpg.AdminShutdownError | asyncpg.ConnectionDoesNotExistError,
        )


# -- telemetry ----------------------------------------------------------------------


def test_tracer_provider_configured_by_environment_after_import_is_used() -> None:
    code = (
        "import os\n"
        "from wellwon_db.telemetry._telemetry import PoolTelemetry\n"
        "os.environ['OTEL_PYTHON_TRACER_PROVIDER'] = 'sdk_tracer_provider'\n"
        "t = PoolTelemetry('main', host=None, port=None, namespace=None, pool_name='x')\n"
        "print(t.start('SELECT 1') is not None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.stdout.strip() == "True"
