"""Our clients behind a real PgBouncer in transaction mode (``PG_[<DB>_]POOL_PGBOUNCER``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.helpers import count_connections
from wellwon_db import (
    DatabaseContainer,
    ReferenceDB,
    check_health,
    get_postgres_config,
    start_databases,
    stop_databases,
)
from wellwon_db.client._transaction import TransactionScope
from wellwon_db.testing import PgBouncerServer, PostgresServer, find_pgbouncer

pytestmark = pytest.mark.slow


@pytest.fixture
def bouncer(postgres_server: PostgresServer) -> Iterator[PgBouncerServer]:
    try:
        find_pgbouncer()
    except RuntimeError as exc:  # .ci/run installs it; a bare dev machine may not have it
        pytest.skip(str(exc))
    server = PgBouncerServer(postgres_server, pool_mode="transaction", default_pool_size=3)
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def containers() -> list[DatabaseContainer]:
    return []


@pytest.fixture
async def reference(
    bouncer: PgBouncerServer,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    containers: list[DatabaseContainer],
) -> AsyncIterator[ReferenceDB]:
    monkeypatch.setenv("POSTGRES_DSN", postgres_server.dsn())
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", bouncer.dsn("postgres"))
    monkeypatch.setenv("PG_REFERENCE_POOL_PGBOUNCER", "true")
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "2")
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "10")
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    containers.append(container)
    await start_databases(container)
    client: ReferenceDB = container.reference_db()
    await client.execute(
        "CREATE TABLE IF NOT EXISTS ledger (id serial PRIMARY KEY, account int, amount int)"
    )
    yield client
    await stop_databases(container)


async def test_queries_and_transactions_through_pgbouncer(
    reference: ReferenceDB, postgres_server: PostgresServer
) -> None:
    assert reference.pool.config.pgbouncer

    async def post(tx: TransactionScope, account: int) -> None:
        await tx.execute("INSERT INTO ledger (account, amount) VALUES ($1, $2)", account, 1)
        await tx.execute("INSERT INTO ledger (account, amount) VALUES ($1, $2)", account, -1)
        await tx.execute("INSERT INTO ledger (account, amount) VALUES ($1, $2)", account, 5)

    # Many clients, few server connections: every query is parameterised
    # (prepared) and would break with asyncpg's statement cache on.
    results = await asyncio.gather(
        *(reference.fetchval("SELECT $1::int * 2", i) for i in range(200)),
        *(reference.run_in_transaction(post, account) for account in range(40)),
    )
    assert results[:200] == [i * 2 for i in range(200)]
    await reference.executemany(
        "INSERT INTO ledger (account, amount) VALUES ($1, $2)", [(1000, 7), (1000, 8)]
    )
    totals = await reference.fetch(
        "SELECT account, sum(amount) AS total FROM ledger GROUP BY account ORDER BY account"
    )
    assert [(r["account"], r["total"]) for r in totals] == [
        *((account, 5) for account in range(40)),
        (1000, 15),
    ]
    # A failed transaction rolls back through PgBouncer too.
    with pytest.raises(asyncpg.UniqueViolationError):
        async with reference.transaction() as tx:
            await tx.execute("INSERT INTO ledger (id, account, amount) VALUES (1, 1, 1)")
    assert await reference.fetchval("SELECT count(*) FROM ledger") == 122
    # The server only ever saw PgBouncer's few connections.
    backends = await count_connections(postgres_server, "wellwon_db:reference")
    assert backends <= 3


async def test_health_check_through_pgbouncer(
    reference: ReferenceDB, containers: list[DatabaseContainer]
) -> None:
    report = await check_health(containers[0])
    assert report.databases["reference"].status == "ok"
    assert report.databases["reference"].server_version
