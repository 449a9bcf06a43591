"""The bank-transfer invariant over shards while one shard's backends keep being terminated.

Accounts are spread over three physical shards (16 logical ones); each
transfer moves money between two accounts of the same logical shard in one
``run_in_transaction`` (retried when that is safe) and records itself in a
``transfers`` table partitioned like the accounts. Meanwhile another
connection terminates the shard_b pool's backends again and again. Afterwards
the money is conserved, every balance is what the recorded transfers say,
every transfer reported done is recorded exactly once, and every one
reported failed before its COMMIT was sent is not recorded at all.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from tests.shard_support import (
    ACCOUNTS_MIGRATION,
    ShardCluster,
    ShardedApp,
    shard_environment,
    shared_cluster,
)
from wellwon_db import DatabaseUnavailableError, Migration, database_lifespan, migrate_shards
from wellwon_db.testing import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.fault]

TRANSFERS_MIGRATION = """
CREATE TABLE transfers (
    source bigint NOT NULL,
    id bigint NOT NULL,
    target bigint NOT NULL,
    amount bigint NOT NULL,
    PRIMARY KEY (source, id)
) PARTITION BY HASH (source);
SELECT wellwon_shards.create_partitions('transfers');
"""
START = 1000
ACCOUNTS_PER_SHARD = 3
WORKERS = 12
TRANSFERS_PER_WORKER = 25


@pytest.fixture(scope="session")
def shard_cluster(postgres_server_factory: Callable[[str], PostgresServer]) -> ShardCluster:
    return shared_cluster(postgres_server_factory)


async def _transfer(tx: Any, source: int, target: int, amount: int, transfer_id: int) -> bool:
    # Both rows locked in one order: concurrent transfers cannot deadlock.
    rows = await tx.fetch(
        "SELECT id, balance FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        [source, target],
    )
    balances = {row["id"]: row["balance"] for row in rows}
    if balances[source] < amount:
        return False
    await tx.execute("UPDATE accounts SET balance = balance - $2 WHERE id = $1", source, amount)
    await tx.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", target, amount)
    await tx.execute(
        "INSERT INTO transfers (source, id, target, amount) VALUES ($1, $2, $3, $4)",
        source,
        transfer_id,
        target,
        amount,
    )
    return True


async def test_transfers_conserve_money_while_a_shard_loses_backends(
    shard_cluster: ShardCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard_environment(
        monkeypatch,
        shard_cluster,
        shard_cluster.fresh(),
        # Failures here are the test's doing: keep the breaker from refusing the retries.
        PG_SHARD_B_BREAKER_ENABLED="false",
        PG_SHARD_B_RETRY_ATTEMPTS="5",
    )
    migrations = [
        Migration(1, "0001_accounts.sql", ACCOUNTS_MIGRATION),
        Migration(2, "0002_transfers.sql", TRANSFERS_MIGRATION),
    ]
    container = ShardedApp()
    async with database_lifespan(container):
        sharded = container.sharded()
        assert (await migrate_shards(sharded.shard_set, migrations)).complete
        by_shard: dict[int, list[int]] = defaultdict(list)
        for key in itertools.count():
            shard = sharded.shard_of(key)
            if len(by_shard[shard]) < ACCOUNTS_PER_SHARD:
                by_shard[shard].append(key)
            if sum(map(len, by_shard.values())) == ACCOUNTS_PER_SHARD * sharded.shard_map.count:
                break
        accounts = [key for keys in by_shard.values() for key in keys]
        for key in accounts:
            await sharded.for_key(key).execute(
                "INSERT INTO accounts (id, balance) VALUES ($1, $2)", key, START
            )

        ids = itertools.count(1)
        done: set[int] = set()
        not_done: set[int] = set()
        unknown: set[int] = set()
        unexpected: list[BaseException] = []

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(TRANSFERS_PER_WORKER):
                source, target = rng.sample(by_shard[rng.randrange(len(by_shard))], 2)
                transfer_id = next(ids)
                try:
                    moved = await sharded.for_key(source).run_in_transaction(
                        _transfer, source, target, rng.randint(1, 50), transfer_id
                    )
                except DatabaseUnavailableError as exc:
                    (unknown if exc.during_commit else not_done).add(transfer_id)
                except Exception as exc:  # anything else breaks the test below
                    unexpected.append(exc)
                else:
                    (done if moved else not_done).add(transfer_id)

        victim = shard_cluster.servers["shard_b"]
        terminated = 0
        stop = asyncio.Event()

        async def terminate() -> None:
            nonlocal terminated
            connection = await asyncpg.connect(victim.dsn())
            try:
                while not stop.is_set():
                    terminated += await connection.fetchval(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) "
                        "FROM pg_stat_activity WHERE application_name = 'wellwon_db:shard_b' "
                        "AND pid <> pg_backend_pid()) AS killed"
                    )
                    await asyncio.sleep(0.1)
            finally:
                await connection.close()

        killer = asyncio.create_task(terminate())
        try:
            await asyncio.gather(*(worker(seed) for seed in range(WORKERS)))
        finally:
            stop.set()
            await killer
        assert not unexpected, unexpected
        assert terminated > 0
        assert len(done) > WORKERS * TRANSFERS_PER_WORKER // 2

        balances = {
            row["id"]: row["balance"]
            for row in (await sharded.fan_out().fetch("SELECT id, balance FROM accounts")).concat()
        }
        recorded = (
            await sharded.fan_out().fetch("SELECT id, source, target, amount FROM transfers")
        ).concat()
        assert sum(balances.values()) == START * len(accounts)
        expected = dict.fromkeys(accounts, START)
        for row in recorded:
            expected[row["source"]] -= row["amount"]
            expected[row["target"]] += row["amount"]
            assert sharded.shard_of(row["source"]) == sharded.shard_of(row["target"])
        assert balances == expected
        recorded_ids = [row["id"] for row in recorded]
        assert len(recorded_ids) == len(set(recorded_ids))  # nothing doubled
        assert done <= set(recorded_ids)  # nothing lost
        assert not (not_done & set(recorded_ids))  # nothing half-done
        assert set(recorded_ids) <= done | unknown
