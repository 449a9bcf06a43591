"""The demo's sharding part: a migration on every shard, routed writes, a fan-out read."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from wellwon_db.shards._client import ShardedClient
from wellwon_db.shards._ids import decode_id
from wellwon_db.shards._map import format_shards
from wellwon_db.shards._migrate import Migration, migrate_shards

__all__ = ["ACCOUNTS_SQL", "sharding_tour"]

ACCOUNTS_SQL = """
CREATE TABLE accounts (
    user_id bigint NOT NULL,
    name text NOT NULL,
    balance numeric(12, 2) NOT NULL,
    PRIMARY KEY (user_id)
) PARTITION BY HASH (user_id);
SELECT wellwon_shards.create_partitions('accounts');
"""

_USERS = [
    (1, "ada", 100),
    (2, "linus", 50),
    (3, "grace", 75),
    (7, "alan", 120),
    (42, "edsger", 90),
]


async def sharding_tour(sharded: ShardedClient, out: Callable[[str], None]) -> None:
    """Place the sample users on the shards by key, then read them back from every shard."""
    shard_map = sharded.shard_map
    out(
        f"\nsharding: {shard_map.count} logical shards ({shard_map.scheme} placement, as "
        "PARTITION BY HASH) on two databases, one on main's server, one on reference's:"
    )
    for entry in shard_map.placements:
        out(f"  {entry.database:<8} holds logical shards {format_shards(entry.shards)}")
    report = await migrate_shards(
        sharded.shard_set, [Migration(1, "0001_accounts.sql", ACCOUNTS_SQL)]
    )
    applied = [name for name, result in report.shards.items() if result.applied]
    out(
        f"  0001_accounts.sql applied on {', '.join(applied)}: each creates the partitions of "
        "its own logical shards only"
    )

    out("\nsharded writes, each routed by its key:")
    for user_id, name, balance in _USERS:
        client = sharded.for_key(user_id)
        await client.execute(
            "INSERT INTO accounts (user_id, name, balance) VALUES ($1, $2, $3)",
            user_id,
            name,
            balance,
        )
        where = f"logical shard {client.shard:<2} on {client.database}"
        out(f"  user {user_id:<3} {name:<7} -> {where}")
    home = sharded.for_key(99)
    other = next(p for p in sharded.shard_set.physical() if p.database != home.database)
    try:
        await other.client.execute(
            "INSERT INTO accounts (user_id, name, balance) VALUES (99, 'barbara', 10)"
        )
    except asyncpg.CheckViolationError as exc:
        refusal = getattr(exc, "message", str(exc))
        out(f"  user 99 sent to {other.database} instead of {home.database}: refused ({refusal})")

    out("\na fan-out read over every shard:")
    richest = await sharded.fan_out(timeout=5).fetch(
        "SELECT user_id, name, balance FROM accounts ORDER BY balance DESC LIMIT 3"
    )
    for database, rows in richest.results.items():
        names = ", ".join(row["name"] for row in rows)
        out(f"  {database:<8} answered in its own order: {names}")
    top = richest.merge(key=lambda row: row["balance"], reverse=True, limit=3)
    out(
        "  merged, the three largest balances: "
        + ", ".join(f"{row['name']} {row['balance']}" for row in top)
    )
    total = await sharded.fan_out(timeout=5).fetchval("SELECT sum(balance) FROM accounts")
    out(f"  sum over {len(total.answered)} of {len(total.asked)} shards: {total.sum()}")

    new_id = await sharded.for_key(42).new_id()
    decoded = decode_id(new_id, sharded.settings.id_epoch)
    made = decoded.created_at.isoformat(timespec="milliseconds")
    out(f"  a new ID on user 42's shard: {new_id} (logical shard {decoded.shard}, made {made})")
