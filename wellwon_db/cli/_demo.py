"""``wellwon-db demo``: embedded servers (main, its replica, reference), one container.

The two shards of the sharding part are databases on the main and reference
servers (no server of their own, so the demo starts no more of them).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable

from dependency_injector import providers

from wellwon_db.cli._demo_shards import sharding_tour
from wellwon_db.client._client import MainDB, ReferenceDB
from wellwon_db.client._readonly import MainReplicaDB
from wellwon_db.config._config import PostgresConfig
from wellwon_db.di._container import DatabaseContainer, database_lifespan
from wellwon_db.di._shards import shard_providers
from wellwon_db.testing._server import PostgresServer

__all__ = ["run_demo"]

#: The demo's settings, given in code (they win over the environment).
_DEMO_SETTINGS: dict[str, dict[str, float]] = {
    "main": {"pool_min_size": 4, "pool_max_size": 8},
    "reference": {"pool_min_size": 2, "pool_max_size": 3, "pool_command_timeout_sec": 5},
    "main_replica": {"pool_min_size": 1, "pool_max_size": 2, "lag_check_sec": 0.1},
    "shard_a": {"pool_min_size": 1, "pool_max_size": 2},
    "shard_b": {"pool_min_size": 1, "pool_max_size": 2},
}


class _DemoContainer(DatabaseContainer):
    """The library's container with a sharded client, as an application declares one."""

    shard_values = providers.Configuration(strict=False)
    shard_settings, shard_set, shard_pools, sharded = shard_providers(
        DatabaseContainer.config, values=shard_values
    )


class InsufficientFunds(Exception):
    """The demo's business rule: no negative balances."""


async def run_demo(out: Callable[[str], None] = print) -> None:
    """Start three throwaway servers (main, its replica, reference), run the tour, stop them."""
    out("starting embedded PostgreSQL servers: main, a streaming replica of it, reference ...")
    # synchronous_commit on (PostgreSQL's default): the replica receives each commit at once.
    main_server = PostgresServer("main", settings={"synchronous_commit": "on"})
    with main_server, PostgresServer("reference") as ref_server:
        main_dsn = main_server.create_database("wellwon_main")
        ref_dsn = ref_server.create_database("wellwon_reference")
        shard_a_dsn = main_server.create_database("wellwon_shard_a")
        shard_b_dsn = ref_server.create_database("wellwon_shard_b")
        with PostgresServer.standby_of(main_server, "main-replica") as replica_server:
            replica_dsn = replica_server.dsn("wellwon_main")
            out(f"  main         on {main_server.host}:{main_server.port}")
            out(f"  main replica on {replica_server.host}:{replica_server.port}")
            out(f"  reference    on {ref_server.host}:{ref_server.port}")
            container = _DemoContainer()
            container.settings.from_dict(
                {
                    "main": {**_DEMO_SETTINGS["main"], "dsn": main_dsn},
                    "reference": {**_DEMO_SETTINGS["reference"], "dsn": ref_dsn},
                    "main_replica": {**_DEMO_SETTINGS["main_replica"], "dsn": replica_dsn},
                    "shard_a": {**_DEMO_SETTINGS["shard_a"], "dsn": shard_a_dsn},
                    "shard_b": {**_DEMO_SETTINGS["shard_b"], "dsn": shard_b_dsn},
                }
            )
            container.shard_values.from_dict({"placement": "shard_a shard_b", "count": 16})
            await _tour(container, replica_server, out)
            out("stopping the servers ...")
    out("done: every pool closed, every server stopped and deleted.")


async def _tour(
    container: _DemoContainer, replica_server: PostgresServer, out: Callable[[str], None]
) -> None:
    config: PostgresConfig = container.config()
    out("\nsettings from code over the environment (each database its own):")
    for database in config.databases:
        pool = config.get_pool_config(database)
        out(
            f"  {database:<9} min_size={pool.min_size} max_size={pool.max_size} "
            f"timeout={pool.timeout:g}s command_timeout={pool.command_timeout:g}s "
            f"application_name={pool.application_name}"
        )

    async with database_lifespan(container):
        main: MainDB = container.main_db()
        reference: ReferenceDB = container.reference_db()

        out("\nrouting (each client reaches its own server and database):")
        for client in (main, reference):
            name, port = await client.fetchrow(
                "SELECT current_database(), inet_server_port()"
            ) or ("?", "?")
            out(f"  {type(client).__name__:<11} -> database {name} on port {port}")

        out("\npools as the servers see them (pg_stat_activity by application_name):")
        for client in (main, reference):
            name = client.pool.config.application_name
            count = await client.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
            )
            out(f"  {name:<22} {count} connections open (min_size {client.pool.config.min_size})")

        await _create_sample_data(main, reference)

        out("\na transaction on main (commit), then one that fails (rollback):")
        async with main.transaction() as tx:
            await tx.execute(
                "UPDATE user_accounts SET balance = balance - 25 WHERE username = 'ada'"
            )
            await tx.execute(
                "UPDATE user_accounts SET balance = balance + 25 WHERE username = 'linus'"
            )
        try:
            async with main.transaction() as tx:
                await tx.execute(
                    "UPDATE user_accounts SET balance = balance - 1000 WHERE username = 'ada'"
                )
                if (
                    await tx.fetchval("SELECT balance FROM user_accounts WHERE username = 'ada'")
                    < 0
                ):
                    raise InsufficientFunds("ada cannot pay 1000")  # noqa: TRY301 (the demo)
        except InsufficientFunds as exc:
            out(f"  rolled back: {exc}")
        for row in await main.fetch("SELECT username, balance FROM user_accounts ORDER BY id"):
            out(f"  {row['username']:<6} balance {row['balance']}")

        out("\na query on each database:")
        users = await main.fetch("SELECT username, country FROM user_accounts ORDER BY id")
        codes = {
            row["country"]: row["customs_code"]
            for row in await reference.fetch("SELECT country, customs_code FROM dc_customs")
        }
        for user in users:
            code = codes.get(user["country"], "?")
            out(f"  {user['username']:<6} ships from {user['country']} (customs {code})")

        await _replicas(main, container.main_replica_db(), replica_server, out)
        await _cache(reference, out)
        await sharding_tour(container.sharded(), out)
        out("\nshutting the pools down ...")


async def _cache(reference: ReferenceDB, out: Callable[[str], None]) -> None:
    out("\nthe reference cache (reference.cached), invalidated by LISTEN/NOTIFY:")
    await reference.cached.install_invalidation("dc_customs")
    query = "SELECT customs_code FROM dc_customs WHERE country = $1"
    stats = reference.cached.cache.stats
    for _ in range(3):
        code = await reference.cached.fetchval(query, "GB")
        out(f"  GB customs {code} (hits {stats['hits']}, misses {stats['misses']})")
    await reference.execute(
        "UPDATE dc_customs SET customs_code = 'GB-HMRC-2' WHERE country = 'GB'"
    )
    started = time.perf_counter()
    # Polls a counter to time the notification's delivery (the demo's only wait).
    while stats["invalidations"] == 0 and time.perf_counter() - started < 5:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    elapsed = (time.perf_counter() - started) * 1000
    out(f"  updated GB; the invalidation arrived after {elapsed:.1f} ms")
    code = await reference.cached.fetchval(query, "GB")
    out(f"  GB customs {code} (hits {stats['hits']}, misses {stats['misses']})")


async def _replicas(
    main: MainDB,
    replica: MainReplicaDB,
    replica_server: PostgresServer,
    out: Callable[[str], None],
) -> None:
    out("\nreads from main's replica (MainReplicaDB), in a task that wrote nothing:")
    await _caught_up(replica)
    await asyncio.create_task(_replica_row(replica, "ada", out), context=contextvars.Context())
    out("\nread-your-writes, with the replica's replay paused:")
    await replica_server.apause_replay()
    try:
        await main.execute("UPDATE user_accounts SET balance = 999 WHERE username = 'ada'")
        out("  this task wrote:")
        await _replica_row(replica, "ada", out)
        out("  a task that wrote nothing:")
        await asyncio.create_task(_replica_row(replica, "ada", out), context=contextvars.Context())
    finally:
        await replica_server.aresume_replay()


async def _caught_up(replica: MainReplicaDB, timeout: float = 10.0) -> None:
    """Wait (bounded) until the replica has replayed the sample data."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await asyncio.create_task(
            replica.fetchrow(
                "SELECT pg_is_in_recovery(), to_regclass('user_accounts') IS NOT NULL"
            ),
            context=contextvars.Context(),
        )
        if row is not None and row[0] and row[1]:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("the replica did not catch up")
        await asyncio.sleep(0.05)


async def _replica_row(replica: MainReplicaDB, username: str, out: Callable[[str], None]) -> None:
    row = await replica.fetchrow(
        "SELECT balance, pg_is_in_recovery() AS on_replica, inet_server_port() AS port "
        "FROM user_accounts WHERE username = $1",
        username,
    )
    assert row is not None
    server = "the replica" if row["on_replica"] else "main (the primary)"
    out(f"    {username} balance {row['balance']}, answered by {server} on port {row['port']}")


async def _create_sample_data(main: MainDB, reference: ReferenceDB) -> None:
    await main.execute(
        """
        CREATE TABLE user_accounts (
            id serial PRIMARY KEY,
            username text UNIQUE NOT NULL,
            country text NOT NULL,
            balance numeric(12, 2) NOT NULL DEFAULT 0
        )
        """
    )
    await main.executemany(
        "INSERT INTO user_accounts (username, country, balance) VALUES ($1, $2, $3)",
        [("ada", "GB", 100), ("linus", "FI", 50), ("grace", "US", 75)],
    )
    await reference.execute(
        "CREATE TABLE dc_customs (country text PRIMARY KEY, customs_code text NOT NULL)"
    )
    await reference.executemany(
        "INSERT INTO dc_customs VALUES ($1, $2)",
        [("GB", "GB-HMRC"), ("FI", "FI-TULLI"), ("US", "US-CBP")],
    )
