"""Shared by the sharding tests: three shard servers, fresh databases per test, a container.

The servers are started once per session (``shared_cluster``); each test gets
databases of its own on them (``ShardCluster.fresh``), so tests never see
each other's tables. A test that kills a server restarts it before it ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import SECRET
from wellwon_db import DatabaseContainer, ShardedClient, shard_providers
from wellwon_db.testing import PostgresServer

#: The physical shard databases' names (and the servers'), in placement order.
SHARDS = ("shard_a", "shard_b", "shard_c")

ACCOUNTS_MIGRATION = """
CREATE TABLE accounts (
    id bigint NOT NULL,
    owner text NOT NULL DEFAULT '',
    balance bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (id)
) PARTITION BY HASH (id);
SELECT wellwon_shards.create_partitions('accounts');
"""


class ShardedApp(DatabaseContainer):
    """An application container with a sharded client, declared as an application would."""

    shard_settings, shard_set, shard_pools, sharded = shard_providers(DatabaseContainer.config)


@dataclass
class ShardCluster:
    """Three running servers, one per physical shard, and a counter for fresh databases."""

    servers: dict[str, PostgresServer]
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def fresh(self) -> str:
        """A new database of the same name on every server (restarting a stopped one)."""
        name = f"sharded_{next(self._counter)}"
        for server in self.servers.values():
            if not server.is_running():
                server.start()
            server.create_database(name)
        return name

    def dsn(self, shard: str, database: str) -> str:
        """The DSN of ``database`` on ``shard``'s server, with the suite's password (trust
        authentication accepts any: it is there to be kept out of output)."""
        return self.servers[shard].dsn(database, password=SECRET)


_cluster: list[ShardCluster] = []


def shared_cluster(factory: Callable[[str], PostgresServer]) -> ShardCluster:
    """The session's shard servers, started on first use by ``postgres_server_factory``
    (which deletes them at the end of the session); every sharding module shares them."""
    if not _cluster:
        _cluster.append(ShardCluster({name: factory(name.replace("_", "-")) for name in SHARDS}))
    return _cluster[0]


def shard_environment(
    monkeypatch: pytest.MonkeyPatch,
    cluster: ShardCluster,
    database: str,
    *,
    count: int = 16,
    placement: str = " ".join(SHARDS),
    **extra: str,
) -> None:
    """Point main and the three shard databases at ``database`` on the cluster; small pools."""
    monkeypatch.setenv("POSTGRES_DSN", cluster.dsn("shard_a", database))
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "2")
    for shard in SHARDS:
        prefix = f"PG_{shard.upper()}_"
        monkeypatch.setenv(f"POSTGRES_{shard.upper()}_DSN", cluster.dsn(shard, database))
        monkeypatch.setenv(f"{prefix}POOL_MIN_SIZE", "1")
        monkeypatch.setenv(f"{prefix}POOL_MAX_SIZE", "8")
    monkeypatch.setenv("PG_SHARDS_PLACEMENT", placement)
    monkeypatch.setenv("PG_SHARDS_COUNT", str(count))
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


def write_migration(directory: Path, name: str, sql: str) -> Path:
    """Write migration file ``name`` into ``directory`` (created when missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(sql)
    return path


def keys_on(sharded: ShardedClient, database: str, count: int, start: int = 0) -> list[int]:
    """``count`` integer keys, from ``start`` on, whose logical shard lives on ``database``."""
    found: list[int] = []
    key = start
    while len(found) < count:
        if sharded.shard_map.database_of(sharded.shard_of(key)) == database:
            found.append(key)
        key += 1
    return found
