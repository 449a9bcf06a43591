"""Our hash functions against PostgreSQL's own, on a real server, 100,000 keys per type.

For each type the server computes, in one query over arrays, the type's
hash (``hashint8``/``hashtext``/``uuid_hash`` and their seeded
``*extended`` forms) and whether the key's row belongs where we say:
``satisfies_hash_partition`` on a ``PARTITION BY HASH`` table for
``pg_partition``, Citus' range arithmetic on ``hashint8``'s int32 for ``citus``.
"""

from __future__ import annotations

import functools
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from tests.shard_support import ShardCluster, shared_cluster
from wellwon_db import InvalidShardKeyError, ShardMap
from wellwon_db.shards._hashing import (
    HASH_PARTITION_SEED,
    citus_hash_range,
    citus_shard,
    hash_bytes,
    hash_bytes_extended,
    hash_uint32,
    hash_uint32_extended,
    int8_word,
)
from wellwon_db.testing import PostgresServer

KEYS = 100_000
INT8_MIN, INT8_MAX = -(1 << 63), (1 << 63) - 1
#: Awkward integers: the ends of each integer type, around zero, powers of two.
EXTREME_INTS = [
    0,
    1,
    -1,
    INT8_MIN,
    INT8_MAX,
    INT8_MIN + 1,
    INT8_MAX - 1,
    -(1 << 31),
    (1 << 31) - 1,
    1 << 31,
    -(1 << 31) - 1,
    1 << 32,
    -(1 << 32),
    (1 << 32) - 1,
    -32768,
    32767,
    *[1 << n for n in range(63)],
    *[-(1 << n) for n in range(64)],
]
#: Strings of every length a hash block boundary cares about, and non-ASCII text.
EXTREME_TEXT = [
    "",
    " ",
    "a",
    "é",
    "中文",
    "😀",
    "x" * 11,
    "x" * 12,
    "x" * 13,
    "y" * 24,
    "ß" * 100,
    "\t\n",
    "🙂" * 63,
]
EXTREME_UUIDS = [uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1), uuid.UUID(int=1)]


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _ints(rng: random.Random) -> list[int]:
    wide = [rng.randint(INT8_MIN, INT8_MAX) for _ in range(KEYS // 2)]
    narrow = [rng.randint(-(1 << 33), 1 << 33) for _ in range(KEYS // 2 - len(EXTREME_INTS))]
    return EXTREME_INTS + wide + narrow


def _texts(rng: random.Random) -> list[str]:
    alphabet = "abcxyzABC019 -_éüß中文字😀🙂\u0301"
    return EXTREME_TEXT + [
        "".join(rng.choices(alphabet, k=rng.randint(0, 40)))
        for _ in range(KEYS - len(EXTREME_TEXT))
    ]


def _uuids(rng: random.Random) -> list[uuid.UUID]:
    return EXTREME_UUIDS + [
        uuid.UUID(int=rng.getrandbits(128)) for _ in range(KEYS - len(EXTREME_UUIDS))
    ]


#: key type -> (SQL type, hash function, seeded hash function)
TYPES: dict[str, tuple[str, str, str]] = {
    "bigint": ("bigint", "hashint8", "hashint8extended"),
    "text": ("text", "hashtext", "hashtextextended"),
    "uuid": ("uuid", "uuid_hash", "uuid_hash_extended"),
}
_MAKERS: dict[str, Callable[[random.Random], list[Any]]] = {
    "bigint": _ints,
    "text": _texts,
    "uuid": _uuids,
}


@functools.cache
def keys_of(key_type: str) -> list[Any]:
    """100,000 keys of ``key_type`` (the same ones for every test of the module)."""
    return _MAKERS[key_type](random.Random(key_type))


@pytest.fixture(scope="session")
def shard_cluster(postgres_server_factory: Callable[[str], PostgresServer]) -> ShardCluster:
    return shared_cluster(postgres_server_factory)


@pytest.fixture(scope="module")
def server_dsn(shard_cluster: ShardCluster) -> str:
    """A database with an empty ``PARTITION BY HASH`` table per key type."""
    database = shard_cluster.fresh()
    server = shard_cluster.servers["shard_a"]
    for key_type, (sql_type, _, _) in TYPES.items():
        server.execute(
            f"CREATE TABLE parted_{key_type} (k {sql_type}) PARTITION BY HASH (k)",
            database=database,
        )
    return server.dsn(database)


@pytest.fixture
async def server(server_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(server_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.mark.slow
@pytest.mark.parametrize("key_type", list(TYPES))
async def test_pg_partition_places_keys_as_postgresql_does(server: Any, key_type: str) -> None:
    sql_type, _, _ = TYPES[key_type]
    keys = keys_of(key_type)
    count = 64
    shard_map = ShardMap(count, "a b", key_type=key_type)  # type: ignore[arg-type]
    shards = [shard_map.shard_of(key) for key in keys]
    wrong = await server.fetchval(
        f"SELECT count(*) FROM unnest($1::{sql_type}[], $2::int[]) AS t(k, shard) "
        f"WHERE NOT satisfies_hash_partition('parted_{key_type}'::regclass, $3, shard, k)",
        keys,
        shards,
        count,
    )
    assert wrong == 0
    # Every shard got keys, and the check can fail: one shard off is caught.
    assert set(shards) == set(range(count))
    off_by_one = await server.fetchval(
        f"SELECT count(*) FROM unnest($1::{sql_type}[], $2::int[]) AS t(k, shard) "
        f"WHERE NOT satisfies_hash_partition('parted_{key_type}'::regclass, $3, shard, k)",
        keys[:100],
        [(shard + 1) % count for shard in shards[:100]],
        count,
    )
    assert off_by_one == 100


@pytest.mark.slow
@pytest.mark.parametrize("count", [32, 48, 7])
@pytest.mark.parametrize("key_type", list(TYPES))
async def test_citus_places_keys_as_citus_does(server: Any, key_type: str, count: int) -> None:
    sql_type, plain, _ = TYPES[key_type]
    # All keys for Citus' default count; a sample for counts that do not divide 2**32.
    keys = keys_of(key_type)[: KEYS if count == 32 else 10_000]
    shard_map = ShardMap(count, "a", scheme="citus", key_type=key_type)  # type: ignore[arg-type]
    shards = [shard_map.shard_of(key) for key in keys]
    # Citus: (hash - INT32_MIN) / (2^32 / count), the remainder going to the last shard.
    wrong = await server.fetchval(
        f"SELECT count(*) FROM unnest($1::{sql_type}[], $2::int[]) AS t(k, shard) "
        f"WHERE least(({plain}(k)::bigint + 2147483648) / (4294967296 / $3), $3 - 1) <> shard",
        keys,
        shards,
        count,
    )
    assert wrong == 0


@pytest.mark.parametrize("key_type", list(TYPES))
async def test_the_type_hashes_equal_the_servers(server: Any, key_type: str) -> None:
    """The raw 32- and 64-bit hashes, not only the shards they pick."""
    sql_type, plain, seeded = TYPES[key_type]
    keys = keys_of(key_type)[:20_000]
    rows = await server.fetch(
        f"SELECT {plain}(k) AS h32, {seeded}(k, $2) AS h64 "
        f"FROM unnest($1::{sql_type}[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
        keys,
        _signed(HASH_PARTITION_SEED, 64),
    )
    ours = [_our_hashes(key_type, key) for key in keys]
    assert [(row["h32"], row["h64"]) for row in rows] == ours


def _our_hashes(key_type: str, key: Any) -> tuple[int, int]:
    if key_type == "bigint":
        word = int8_word(key)
        return (
            _signed(hash_uint32(word), 32),
            _signed(hash_uint32_extended(word, HASH_PARTITION_SEED), 64),
        )
    data = key.encode() if key_type == "text" else key.bytes
    return (
        _signed(hash_bytes(data), 32),
        _signed(hash_bytes_extended(data, HASH_PARTITION_SEED), 64),
    )


# -- without a server ---------------------------------------------------------------


def test_integer_types_hash_alike() -> None:
    """hashint8 folds the high half in so int2/int4/int8 of equal value hash equally."""
    for value in (0, 1, -1, 123456, -(1 << 31), (1 << 31) - 1):
        assert int8_word(value) == value & 0xFFFFFFFF


def test_citus_ranges_match_its_documented_split() -> None:
    """Citus' docs show 32 shards from -2147483648..-2013265921 to 2013265920..2147483647."""
    assert citus_hash_range(0, 32) == (-2147483648, -2013265921)
    assert citus_hash_range(1, 32) == (-2013265920, -1879048193)
    assert citus_hash_range(31, 32) == (2013265920, 2147483647)
    # A count that does not divide 2**32: the last range takes the remainder.
    low, high = citus_hash_range(2, 3)
    assert high == 2147483647
    for count in (1, 3, 7, 32, 48):
        ranges = [citus_hash_range(shard, count) for shard in range(count)]
        assert ranges[0][0] == -(1 << 31)
        assert ranges[-1][1] == (1 << 31) - 1
        for (_, high), (low, _) in itertools.pairwise(ranges):
            assert low == high + 1
        for shard, (low, high) in enumerate(ranges):
            for point in (low, high):
                assert citus_shard(point & 0xFFFFFFFF, count) == shard
    with pytest.raises(ValueError, match="outside"):
        citus_hash_range(3, 3)


@pytest.mark.parametrize(
    ("key_type", "key", "message"),
    [
        ("bigint", "42", "bigint"),
        ("bigint", True, "bigint"),
        ("bigint", 1 << 63, "range"),
        ("bigint", 4.0, "bigint"),
        ("text", 42, "text"),
        ("text", "a\x00b", "NUL"),
        ("uuid", "not-a-uuid", "uuid"),
        ("uuid", 7, "uuid"),
    ],
)
def test_a_key_of_the_wrong_type_is_refused(key_type: str, key: Any, message: str) -> None:
    shard_map = ShardMap(8, "a", key_type=key_type)  # type: ignore[arg-type]
    with pytest.raises(InvalidShardKeyError, match=message):
        shard_map.shard_of(key)


def test_a_uuid_key_may_be_given_as_text() -> None:
    shard_map = ShardMap(64, "a", key_type="uuid")
    value = uuid.uuid4()
    assert shard_map.shard_of(str(value)) == shard_map.shard_of(value)


def test_every_shard_gets_keys() -> None:
    """A sanity check of spread: 64 shards, 20,000 keys, none empty, none double the mean."""
    for scheme in ("pg_partition", "citus"):
        shard_map = ShardMap(64, "a", scheme=scheme)  # type: ignore[arg-type]
        counts = [0] * 64
        for key in range(20_000):
            counts[shard_map.shard_of(key)] += 1
        assert min(counts) > 0
        assert max(counts) < 2 * 20_000 / 64
