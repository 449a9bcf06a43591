"""Citus mode without Citus: the placement predictions and the pool-sizing rule.

The ``citus`` scheme's parity with PostgreSQL's ``hashint8``/``hashtext``/
``uuid_hash`` is checked on a server in ``test_shard_hashing.py``; these are
the parts that need no server. Nothing here runs against a Citus cluster.
"""

from __future__ import annotations

import pytest

from wellwon_db import ShardMap
from wellwon_db.shards._citus import citus_pool_max_size, citus_shard_range
from wellwon_db.shards._hashing import hash_uint32, int8_word


def test_a_keys_shard_lies_in_its_citus_range() -> None:
    shard_map = ShardMap(32, "coordinator", scheme="citus")
    for key in range(-500, 500):
        low, high = citus_shard_range(shard_map.shard_of(key), 32)
        hashed = hash_uint32(int8_word(key))
        signed = hashed - (1 << 32) if hashed >= 1 << 31 else hashed
        assert low <= signed <= high


def test_the_default_shard_count_ranges() -> None:
    """pg_dist_shard of a 32-shard table, as Citus' documentation shows it."""
    assert citus_shard_range(0, 32) == (-2147483648, -2013265921)
    assert citus_shard_range(16, 32) == (0, 134217727)
    assert citus_shard_range(31, 32) == (2013265920, 2147483647)
    with pytest.raises(ValueError, match="at least one shard"):
        citus_shard_range(0, 0)


def test_the_pool_sizing_rule() -> None:
    # 300 worker connections, 10 reserved, 4 processes, 16 per statement: 290 // 64 = 4.
    assert citus_pool_max_size(worker_max_connections=300, processes=4) == 4
    # A lower shared pool size caps it.
    assert citus_pool_max_size(worker_max_connections=300, processes=4, shared_pool_size=128) == 2
    # A smaller executor pool lets each process hold more.
    assert citus_pool_max_size(worker_max_connections=300, processes=4, executor_pool_size=2) == 36
    with pytest.raises(ValueError, match="exceed a worker's 90 connections"):
        citus_pool_max_size(worker_max_connections=100, processes=8)
    with pytest.raises(ValueError, match="processes must be at least 1"):
        citus_pool_max_size(worker_max_connections=100, processes=0)
