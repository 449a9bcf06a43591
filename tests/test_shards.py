"""Sharding on three real servers: routing, misrouting caught by the servers, key scopes,
cross-shard writes, fan-out (a dead shard, a slow one), merges, IDs, health and metrics.

Each server holds ``accounts``, ``PARTITION BY HASH (id)`` with partitions for
its own logical shards only (``wellwon_shards.create_partitions`` in the
migration), so a row sent to the wrong server is refused by PostgreSQL itself.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from tests.helpers import SECRET, count_connections, install_otel_sdk, metric_points, wait_until
from tests.shard_support import (
    ACCOUNTS_MIGRATION,
    SHARDS,
    ShardCluster,
    ShardedApp,
    keys_on,
    shard_environment,
    shared_cluster,
)
from wellwon_db import (
    CircuitOpenError,
    ConfigurationError,
    CrossShardWriteError,
    DatabaseUnavailableError,
    InvalidShardKeyError,
    Migration,
    PartialResultError,
    PoolClosedError,
    ShardedClient,
    ShardRoutingError,
    check_health,
    current_shard_key,
    database_lifespan,
    decode_id,
    migrate_shards,
    start_databases,
    stop_databases,
)
from wellwon_db.shards._fanout import ShardTimeoutError
from wellwon_db.shards._routing import quote_literal
from wellwon_db.testing import PostgresServer

ACCOUNTS = [Migration(1, "0001_accounts.sql", ACCOUNTS_MIGRATION)]


@pytest.fixture(scope="session")
def shard_cluster(postgres_server_factory: Callable[[str], PostgresServer]) -> ShardCluster:
    return shared_cluster(postgres_server_factory)


@pytest.fixture(scope="module")
def database(shard_cluster: ShardCluster) -> str:
    """The module's database on every shard server (tests empty its tables, not remake it)."""
    return shard_cluster.fresh()


@pytest.fixture
async def app(
    shard_cluster: ShardCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ShardedApp]:
    """A started container whose three shard databases (16 logical shards) hold an empty
    ``accounts``."""
    shard_environment(monkeypatch, shard_cluster, database)
    container = ShardedApp()
    async with database_lifespan(container):
        sharded = container.sharded()
        report = await migrate_shards(sharded.shard_set, ACCOUNTS)
        assert report.complete, report.to_dict()
        await sharded.fan_out().execute("TRUNCATE accounts")
        yield container


def _port_of(cluster: ShardCluster, sharded: ShardedClient, key: Any) -> int:
    return cluster.servers[str(sharded.shard_map.database_of(sharded.shard_of(key)))].port


# -- routing ---------------------------------------------------------------------------


async def test_thousands_of_routed_writes_land_on_their_own_partitions(
    app: ShardedApp,
) -> None:
    sharded = app.sharded()
    rng = random.Random(7)
    keys = {0, 1, -1, -(1 << 63), (1 << 63) - 1}
    while len(keys) < 3000:
        keys.add(rng.randint(-(1 << 63), (1 << 63) - 1))
    gate = asyncio.Semaphore(24)

    async def write(key: int) -> None:
        async with gate:
            await sharded.for_key(key).execute("INSERT INTO accounts (id) VALUES ($1)", key)

    await asyncio.gather(*(write(key) for key in keys))
    rows = await sharded.fan_out().fetch(
        "SELECT id, tableoid::regclass::text AS part FROM accounts"
    )
    assert rows.count() == 3000
    for database, found in rows.results.items():
        for row in found:
            shard = sharded.shard_of(row["id"])
            assert row["part"] == f"accounts_s{shard}"
            assert sharded.shard_map.database_of(shard) == database
    assert {row["id"] for row in rows.concat()} == keys


async def test_a_row_sent_to_the_wrong_server_is_refused_by_it(app: ShardedApp) -> None:
    sharded = app.sharded()
    key = keys_on(sharded, "shard_a", 1)[0]
    wrong = sharded.shard_set.physical("shard_b")[0].client
    with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
        await wrong.execute("INSERT INTO accounts (id) VALUES ($1)", key)
    await sharded.for_key(key).execute("INSERT INTO accounts (id) VALUES ($1)", key)


@pytest.mark.parametrize(
    ("key_type", "sql_type", "make"),
    [
        ("text", "text", lambda n: [f"user-{n}-é", "", "中文", *(f"k{i}" for i in range(n))]),
        ("uuid", "uuid", lambda n: [uuid.UUID(int=i * 7919 + 1) for i in range(n)]),
    ],
)
async def test_text_and_uuid_keys_land_on_their_partitions(
    shard_cluster: ShardCluster,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    key_type: str,
    sql_type: str,
    make: Callable[[int], list[Any]],
) -> None:
    shard_environment(monkeypatch, shard_cluster, database, PG_SHARDS_KEY_TYPE=key_type)
    table = f"notes_{key_type}"
    migration = Migration(
        2 if key_type == "text" else 3,
        f"000{2 if key_type == 'text' else 3}_{table}.sql",
        f"CREATE TABLE {table} (key {sql_type} PRIMARY KEY) PARTITION BY HASH (key);\n"
        f"SELECT wellwon_shards.create_partitions('{table}');",
    )
    container = ShardedApp()
    async with database_lifespan(container):
        sharded = container.sharded()
        assert (await migrate_shards(sharded.shard_set, [migration])).complete
        keys = make(400)
        for key in keys:
            await sharded.for_key(key).execute(f"INSERT INTO {table} VALUES ($1)", key)
        parts = await sharded.fan_out().fetch(
            f"SELECT key, tableoid::regclass::text AS part FROM {table}"
        )
        assert parts.count() == len(keys)
        for row in parts.concat():
            assert row["part"] == f"{table}_s{sharded.shard_of(row['key'])}"


async def test_a_key_scope_routes_the_un_keyed_calls(
    app: ShardedApp, shard_cluster: ShardCluster
) -> None:
    sharded = app.sharded()
    key = keys_on(sharded, "shard_c", 1)[0]
    with pytest.raises(ShardRoutingError, match="needs a shard and has no key"):
        await sharded.fetchval("SELECT 1")
    assert current_shard_key() is None
    with sharded.key(key) as client:
        assert client.database == "shard_c"
        assert current_shard_key() == key
        port = await sharded.fetchval("SELECT inet_server_port()")
        assert port == _port_of(shard_cluster, sharded, key)
        # Tasks started inside the block inherit it.
        assert await asyncio.create_task(sharded.fetchval("SELECT inet_server_port()")) == port
        await sharded.execute("INSERT INTO accounts (id, balance) VALUES ($1, 5)", key)
        async with sharded.transaction() as tx:
            assert await tx.fetchval("SELECT balance FROM accounts WHERE id = $1", key) == 5
    assert current_shard_key() is None


async def test_a_locked_scope_refuses_other_shards(app: ShardedApp) -> None:
    sharded = app.sharded()
    here = keys_on(sharded, "shard_a", 1)[0]
    there = keys_on(sharded, "shard_b", 1)[0]
    with sharded.key(here):
        with pytest.raises(ShardRoutingError, match="locked to logical shard"):
            await sharded.for_key(there).fetchval("SELECT 1")
        with pytest.raises(ShardRoutingError, match="locked to logical shard"), sharded.key(there):
            pass
        with pytest.raises(ShardRoutingError, match="fan-out inside a block locked"):
            await sharded.fan_out().fetchval("SELECT 1")
        # The same shard is fine, nested or not; an inner block cannot lift the lock.
        with sharded.key(here):
            assert await sharded.for_key(here).fetchval("SELECT 1") == 1
        with sharded.key(here, lock=False), pytest.raises(ShardRoutingError, match="locked"):
            await sharded.for_key(there).fetchval("SELECT 1")
    with sharded.key(here, lock=False):
        assert await sharded.for_key(there).fetchval("SELECT 1") == 1
        with sharded.key(there):
            assert current_shard_key() == there


async def test_writes_to_another_shard_inside_a_transaction_are_refused(
    app: ShardedApp,
) -> None:
    sharded = app.sharded()
    first = keys_on(sharded, "shard_a", 1)[0]
    same_shard = next(
        key
        for key in range(first + 1, 100_000)
        if sharded.shard_of(key) == sharded.shard_of(first)
    )
    other = keys_on(sharded, "shard_b", 1)[0]
    for key in (first, other, same_shard):
        await sharded.for_key(key).execute(
            "INSERT INTO accounts (id, balance) VALUES ($1, 10) ON CONFLICT DO NOTHING", key
        )
    update = "UPDATE accounts SET balance = balance + 1 WHERE id = $1"
    async with sharded.for_key(first).transaction() as tx:
        await tx.execute(update, first)
        with pytest.raises(CrossShardWriteError, match="would not commit or roll back") as info:
            await sharded.for_key(other).execute(update, other)
        assert info.value.shard == sharded.shard_of(other)
        assert info.value.open_shard == sharded.shard_of(first)
        with pytest.raises(CrossShardWriteError):
            await sharded.for_key(other).executemany(update, [(other,)])
        with pytest.raises(CrossShardWriteError):
            async with sharded.for_key(other).transaction():
                pass
        with pytest.raises(CrossShardWriteError, match="fan-out write"):
            await sharded.fan_out().execute("UPDATE accounts SET balance = balance")
        with pytest.raises(CrossShardWriteError):
            await asyncio.create_task(sharded.for_key(other).execute(update, other))
        # Reads elsewhere, and a read-only transaction elsewhere, are allowed.
        assert (
            await sharded.for_key(other).fetchval(
                "SELECT balance FROM accounts WHERE id = $1", other
            )
            == 10
        )
        async with sharded.for_key(other).transaction(readonly=True) as reader:
            assert await reader.fetchval("SELECT 1") == 1
        assert (await sharded.fan_out().fetchval("SELECT count(*) FROM accounts")).sum() == 3
        # The same logical shard, through its own client, is not a cross-shard write.
        await sharded.for_key(same_shard).execute(update, same_shard)
    # Nothing reached the other shard; after the transaction, writing there works.
    assert (
        await sharded.for_key(other).fetchval("SELECT balance FROM accounts WHERE id = $1", other)
        == 10
    )
    await sharded.for_key(other).execute(update, other)

    async def move(tx: Any) -> None:
        await tx.execute(update, first)
        await sharded.for_key(other).execute(update, other)

    with pytest.raises(CrossShardWriteError):
        await sharded.for_key(first).run_in_transaction(move)
    assert (
        await sharded.for_key(first).fetchval("SELECT balance FROM accounts WHERE id = $1", first)
        == 11
    )


# -- fan-out -----------------------------------------------------------------------------


async def test_fan_out_results_merges_and_subsets(app: ShardedApp) -> None:
    sharded = app.sharded()
    for key in range(60):
        await sharded.for_key(key).execute(
            "INSERT INTO accounts (id, balance) VALUES ($1, $2)", key, key * 10
        )
    rows = await sharded.fan_out().fetch("SELECT id, balance FROM accounts ORDER BY id")
    assert rows.complete
    assert rows.asked == rows.answered == SHARDS
    assert rows.failed == ()
    assert [row["id"] for row in rows.merge(key=lambda row: row["id"])] == list(range(60))
    assert [row["id"] for row in rows.merge(key=lambda row: row["id"], limit=5)] == [0, 1, 2, 3, 4]
    assert rows.count() == len(rows.concat()) == 60
    assert rows.sum("balance") == sum(key * 10 for key in range(60))
    assert rows.shards["shard_a"] == sharded.shard_map.shards_on("shard_a")
    newest = await sharded.fan_out().fetch("SELECT id FROM accounts ORDER BY id DESC LIMIT 3")
    assert [row["id"] for row in newest.merge(lambda row: row["id"], reverse=True, limit=3)] == [
        59,
        58,
        57,
    ]
    counts = await sharded.fan_out().fetchval("SELECT count(*) FROM accounts")
    assert counts.sum() == 60
    with pytest.raises(TypeError, match="not rows"):
        counts.concat()
    one = sharded.shard_of(5)
    subset = await sharded.fan_out(shards=[one]).fetchval("SELECT count(*) FROM accounts")
    assert subset.asked == (str(sharded.shard_map.database_of(one)),)
    named = await sharded.fan_out(databases=["shard_c", "shard_a"]).fetchval("SELECT 1")
    assert named.asked == ("shard_a", "shard_c")
    statuses = await sharded.fan_out().execute("UPDATE accounts SET balance = balance + 1")
    assert sum(int(status.split()[-1]) for status in statuses.results.values()) == 60

    async def per_shard(client: Any) -> int:
        async with client.transaction() as tx:
            return int(await tx.fetchval("SELECT count(*) FROM accounts"))

    assert (await sharded.fan_out().run(per_shard)).sum() == 60
    with pytest.raises(ShardRoutingError, match="holds no logical shard"):
        sharded.fan_out(databases=["main"])
    with pytest.raises(ValueError, match="no shard"):
        sharded.fan_out(shards=[])
    with pytest.raises(ShardRoutingError, match="no logical shard 99"):
        sharded.fan_out(shards=[99])


@pytest.mark.fault
async def test_a_dead_shard_is_named_and_the_others_answer_within_the_timeout(
    shard_cluster: ShardCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard_environment(monkeypatch, shard_cluster, database)
    container = ShardedApp()
    dead = shard_cluster.servers["shard_b"]
    async with database_lifespan(container):
        sharded = container.sharded()
        await migrate_shards(sharded.shard_set, ACCOUNTS)
        await sharded.fan_out().execute("TRUNCATE accounts")
        for key in range(30):
            await sharded.for_key(key).execute("INSERT INTO accounts (id) VALUES ($1)", key)
        on_b = sum(
            1
            for key in range(30)
            if sharded.shard_map.database_of(sharded.shard_of(key)) == "shard_b"
        )
        dead.kill()
        try:
            started = time.monotonic()
            result = await sharded.fan_out(timeout=3, allow_partial=True).fetchval(
                "SELECT count(*) FROM accounts"
            )
            assert time.monotonic() - started < 3.5
            assert result.answered == ("shard_a", "shard_c")
            assert result.failed == ("shard_b",)
            assert not result.complete
            assert isinstance(result.errors["shard_b"], DatabaseUnavailableError)
            assert result.sum() == 30 - on_b
            with pytest.raises(PartialResultError, match="shard_b") as info:
                await sharded.fan_out(timeout=3).fetchval("SELECT count(*) FROM accounts")
            partial = info.value.result
            assert partial.failed == ("shard_b",)
            assert partial.sum() == 30 - on_b
            assert SECRET not in str(info.value)
            breaker = sharded.shard_set.physical("shard_b")[0].slot.breaker

            async def opened() -> bool:
                await sharded.fan_out(timeout=3, allow_partial=True).fetchval("SELECT 1")
                return breaker.state.value == "open"

            await wait_until(opened, timeout=20)
            started = time.monotonic()
            result = await sharded.fan_out(timeout=3, allow_partial=True).fetchval("SELECT 1")
            assert time.monotonic() - started < 1.0  # refused by the breaker, no network
            assert isinstance(result.errors["shard_b"], CircuitOpenError)
            health = await check_health(container)
            assert health.databases["shard_b"].status == "down"
            assert health.databases["shard_a"].status == "ok"
        finally:
            dead.start()


async def test_a_slow_shard_does_not_delay_the_answer_beyond_the_timeout(
    app: ShardedApp, shard_cluster: ShardCluster
) -> None:
    sharded = app.sharded()
    slow_port = shard_cluster.servers["shard_c"].port
    started = time.monotonic()
    result = await sharded.fan_out(timeout=0.5, allow_partial=True).fetchval(
        "SELECT pg_sleep(CASE WHEN inet_server_port() = $1 THEN 30 ELSE 0 END) IS NULL",
        slow_port,
    )
    assert time.monotonic() - started < 1.5
    assert result.answered == ("shard_a", "shard_b")
    # The shard is not harmed: the next fan-out hears from all of them.
    assert isinstance(result.errors["shard_c"], ShardTimeoutError)
    assert "within the fan-out's 0.5s" in str(result.errors["shard_c"])
    assert (await sharded.fan_out(timeout=5).fetchval("SELECT 1")).sum() == 3


# -- IDs ---------------------------------------------------------------------------------


async def test_ids_are_unique_across_shards_under_concurrency(app: ShardedApp) -> None:
    sharded = app.sharded()
    count = sharded.shard_map.count

    async def make(shard: int, n: int) -> list[int]:
        client = sharded.for_shard(shard)
        return [await client.new_id() for _ in range(n)]

    batches = await asyncio.gather(*(make(shard, 60) for shard in range(count) for _ in range(3)))
    ids = [value for batch in batches for value in batch]
    assert len(ids) == count * 3 * 60
    assert len(set(ids)) == len(ids)
    epoch = sharded.settings.id_epoch
    for index, batch in enumerate(batches):
        shard = index // 3
        assert all(decode_id(value, epoch).shard == shard for value in batch)
        assert batch == sorted(batch)  # one task's IDs grow
        assert sharded.for_id(batch[0]).shard == shard
    newest = decode_id(max(ids), epoch)
    assert abs(newest.created_at.timestamp() - time.time()) < 60
    with pytest.raises(ShardRoutingError):
        sharded.for_id(-5)


# -- key setting -------------------------------------------------------------------------


async def test_a_keyed_transaction_sets_the_key_setting(
    shard_cluster: ShardCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard_environment(monkeypatch, shard_cluster, database, PG_SHARDS_KEY_SETTING="app.tenant_id")
    container = ShardedApp()
    async with database_lifespan(container):
        sharded = container.sharded()
        setting = "SELECT current_setting('app.tenant_id', true)"
        async with sharded.for_key(42).transaction() as tx:
            assert await tx.fetchval(setting) == "42"
        seen = await sharded.for_key(43).run_in_transaction(lambda tx: tx.fetchval(setting))
        assert seen == "43"
        # Local to the transaction: the pooled session does not keep it.
        assert await sharded.for_key(42).fetchval(setting) in (None, "")
        async with sharded.for_shard(0).transaction() as tx:  # no key, no setting
            assert await tx.fetchval(setting) in (None, "")
        # Keys are quoted as PostgreSQL's quote_literal does, whatever they hold.
        for text in ("it's", "back\\slash", "\\'; DROP TABLE accounts; --", "é中😀"):
            literal = quote_literal(text)
            assert await sharded.for_shard(0).fetchval(f"SELECT {literal}") == text


# -- lifecycle, health, metrics ------------------------------------------------------


async def test_health_and_metrics_per_physical_shard(app: ShardedApp) -> None:
    _, reader = install_otel_sdk()
    sharded = app.sharded()
    report = await check_health(app)
    for shard in SHARDS:
        assert report.databases[shard].status == "ok"
        assert report.databases[shard].pool["size"] >= 1
    await sharded.fan_out().fetchval("SELECT 1")
    await sharded.for_key(1).fetchval("SELECT 1")
    points = metric_points()
    outcomes = {
        (point.attributes["wellwon.db.database"], point.attributes["wellwon.db.shards.outcome"])
        for point in points["wellwon.db.shards.fanout.shards"]
    }
    assert {(shard, "answered") for shard in SHARDS} <= outcomes
    assert points["wellwon.db.shards.fanout.duration"]
    databases = {
        point.attributes.get("wellwon.db.database")
        for point in points["db.client.operation.duration"]
    }
    assert set(SHARDS) <= databases
    assert reader is not None


async def test_the_client_works_across_a_stop_and_a_start(
    shard_cluster: ShardCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard_environment(monkeypatch, shard_cluster, database)
    container = ShardedApp()
    sharded = container.sharded()
    with pytest.raises(PoolClosedError, match="start_databases"):
        sharded.for_key(1)
    await start_databases(container)
    before = sharded.for_key(1)
    assert await before.fetchval("SELECT 1") == 1
    await stop_databases(container)
    with pytest.raises(PoolClosedError):
        await before.fetchval("SELECT 1")
    with pytest.raises(PoolClosedError):
        await sharded.fan_out().fetchval("SELECT 1")
    for shard in SHARDS:
        assert await count_connections(shard_cluster.servers[shard], f"wellwon_db:{shard}") == 0
    monkeypatch.setenv("PG_SHARDS_COUNT", "8")  # read again at the next start
    await start_databases(container)
    try:
        assert sharded.shard_map.count == 8
        assert await sharded.for_key(1).fetchval("SELECT 1") == 1
        # A shard client from before the restart reaches the new pool of its database.
        assert await before.fetchval("SELECT 1") == 1
    finally:
        await stop_databases(container)


@pytest.mark.parametrize(
    ("change", "error", "variable"),
    [
        ({"PG_SHARDS_PLACEMENT": None}, ConfigurationError, "PG_SHARDS_PLACEMENT"),
        ({"POSTGRES_SHARD_C_DSN": None}, ConfigurationError, "POSTGRES_SHARD_C_DSN"),
        (
            {"PG_SHARDS_PLACEMENT": "shard_a shard_b shard_d"},
            ConfigurationError,
            "POSTGRES_SHARD_D_DSN",
        ),
        ({"PG_SHARDS_KEY_TYPE": "float"}, ConfigurationError, "PG_SHARDS_KEY_TYPE"),
    ],
)
async def test_a_start_with_a_wrong_setting_names_it_and_leaves_nothing_open(
    shard_cluster: ShardCluster,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, str | None],
    error: type[Exception],
    variable: str,
) -> None:
    shard_environment(monkeypatch, shard_cluster, database)
    for name, value in change.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    container = ShardedApp()
    with pytest.raises(error) as info:
        await start_databases(container)
    assert getattr(info.value, "env_var", None) == variable
    assert SECRET not in str(info.value)
    for shard in SHARDS:
        assert await count_connections(shard_cluster.servers[shard], f"wellwon_db:{shard}") == 0
    assert await count_connections(shard_cluster.servers["shard_a"], "wellwon_db:main") == 0


async def test_a_shard_down_at_start_up_fails_it_and_closes_the_others(
    shard_cluster: ShardCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard_environment(monkeypatch, shard_cluster, database)
    monkeypatch.setenv("POSTGRES_SHARD_B_DSN", f"postgresql://postgres:{SECRET}@127.0.0.1:9/x")
    monkeypatch.setenv("PG_SHARD_B_POOL_CONNECT_TIMEOUT_SEC", "1")
    container = ShardedApp()
    with pytest.raises(DatabaseUnavailableError, match="shard_b") as info:
        await start_databases(container)
    assert SECRET not in str(info.value)
    for shard in ("shard_a", "shard_c"):
        assert await count_connections(shard_cluster.servers[shard], f"wellwon_db:{shard}") == 0


async def test_a_key_of_the_wrong_type_is_refused_before_any_io(app: ShardedApp) -> None:
    with pytest.raises(InvalidShardKeyError, match="bigint"):
        app.sharded().for_key("1")


async def test_a_start_cancelled_while_a_shard_waits_closes_the_opened_shards(
    shard_cluster: ShardCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard_environment(monkeypatch, shard_cluster, database)
    monkeypatch.setenv("POSTGRES_SHARD_B_DSN", f"postgresql://postgres:{SECRET}@127.0.0.1:9/x")
    monkeypatch.setenv("PG_SHARD_B_STARTUP_WAIT_SEC", "60")
    container = ShardedApp()
    starting = asyncio.create_task(start_databases(container))

    async def others_open() -> bool:
        counts = [
            await count_connections(shard_cluster.servers[shard], f"wellwon_db:{shard}")
            for shard in ("shard_a", "shard_c")
        ]
        return all(counts)

    await wait_until(others_open, timeout=20)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    for shard in ("shard_a", "shard_c"):
        assert await count_connections(shard_cluster.servers[shard], f"wellwon_db:{shard}") == 0
    await stop_databases(container)
