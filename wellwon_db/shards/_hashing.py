"""PostgreSQL's hash functions in pure Python, and the two ways a hash picks a shard.

PostgreSQL hashes with Bob Jenkins' lookup3 (``src/common/hashfn.c``):
``hash_bytes`` gives 32 bits, ``hash_bytes_extended`` 64 bits from a 64-bit
seed, and the ``uint32`` variants hash one 32-bit word. A type's hash
function feeds them its bytes:

* ``bigint``/``integer``/``smallint`` (``hashint8``): the low 32 bits XOR the
  high 32 bits (their complement for a negative value), so equal values of
  the three types hash alike;
* ``text`` with a deterministic collation (``hashtext``): the UTF-8 bytes;
* ``uuid`` (``uuid_hash``): the 16 bytes.

Words are read little-endian: the results are those of a little-endian
server (x86-64, ARM64); a big-endian server hashes differently.

Schemes (a key's logical shard among ``count``):

* ``pg_partition``: what ``PARTITION BY HASH`` with ``count`` partitions of
  ``MODULUS count`` does for a single key column: the 64-bit hash seeded
  with ``HASH_PARTITION_SEED``, combined by ``hash_combine64`` with the
  initial 0 (``src/backend/partitioning/partbounds.c``), modulo ``count``;
* ``citus``: what Citus does for a hash-distributed table of ``count``
  shards: the 32-bit hash, as a signed int32, in ``count`` equal ranges of
  the int32 space, the last range taking the remainder (Citus'
  ``create_shards.c`` and ``FindShardIntervalIndex``).
"""

from __future__ import annotations

import functools
import struct
from typing import Final, Literal

__all__ = [
    "HASH_PARTITION_SEED",
    "HashScheme",
    "citus_hash_range",
    "citus_shard",
    "hash_bytes",
    "hash_bytes_extended",
    "hash_uint32",
    "hash_uint32_extended",
    "int8_word",
    "partition_hash_of_word",
    "partition_shard",
]

#: ``pg_partition`` or ``citus``.
HashScheme = Literal["pg_partition", "citus"]

#: ``src/include/catalog/partition.h``: the seed of every hash-partition key's hash.
HASH_PARTITION_SEED: Final = 0x7A5B22367996DCFD
#: ``hash_combine64``'s constant (``src/include/common/hashfn.h``).
_COMBINE64: Final = 0x49A0F4DD15E5A8E3
_M32: Final = 0xFFFFFFFF
_M64: Final = 0xFFFFFFFFFFFFFFFF
_GOLDEN: Final = 0x9E3779B9 + 3923095
#: Citus' HASH_TOKEN_COUNT: the size of the int32 hash space.
_TOKENS: Final = 1 << 32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32
    a ^= ((c << 4) | (c >> 28)) & _M32
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= ((a << 6) | (a >> 26)) & _M32
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= ((b << 8) | (b >> 24)) & _M32
    b = (b + a) & _M32
    a = (a - c) & _M32
    a ^= ((c << 16) | (c >> 16)) & _M32
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= ((a << 19) | (a >> 13)) & _M32
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= ((b << 4) | (b >> 28)) & _M32
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int]:
    """lookup3's ``final``; returns ``(b, c)``, all the callers read."""
    c ^= b
    c = (c - (((b << 14) | (b >> 18)) & _M32)) & _M32
    a ^= c
    a = (a - (((c << 11) | (c >> 21)) & _M32)) & _M32
    b ^= a
    b = (b - (((a << 25) | (a >> 7)) & _M32)) & _M32
    c ^= b
    c = (c - (((b << 16) | (b >> 16)) & _M32)) & _M32
    a ^= c
    a = (a - (((c << 4) | (c >> 28)) & _M32)) & _M32
    b ^= a
    b = (b - (((a << 14) | (a >> 18)) & _M32)) & _M32
    c ^= b
    c = (c - (((b << 24) | (b >> 8)) & _M32)) & _M32
    return b, c


def _seeded(a: int, b: int, c: int, seed: int) -> tuple[int, int, int]:
    # hashfn.c: the seed is hashed as a 12-byte block (high word, low word, 0).
    if seed:
        a = (a + (seed >> 32)) & _M32
        b = (b + (seed & _M32)) & _M32
        a, b, c = _mix(a, b, c)
    return a, b, c


@functools.lru_cache(maxsize=256)
def _words(blocks: int) -> struct.Struct:
    return struct.Struct(f"<{blocks * 3}I")


@functools.lru_cache(maxsize=512)
def _start(length: int, seed: int) -> tuple[int, int, int]:
    """The state before the first block: depends on the length and seed only (cached)."""
    a = b = c = (_GOLDEN + length) & _M32
    return _seeded(a, b, c, seed)


def _bytes_state(data: bytes, seed: int) -> tuple[int, int]:
    length = len(data)
    a, b, c = _start(length, seed)
    blocks = length // 12
    if blocks:
        words = _words(blocks).unpack_from(data)
        m = _M32
        for i in range(0, blocks * 3, 3):
            # lookup3's mix(), inlined: this loop is the cost of hashing text.
            a = (a + words[i]) & m
            b = (b + words[i + 1]) & m
            c = (c + words[i + 2]) & m
            a = ((a - c) & m) ^ (((c << 4) | (c >> 28)) & m)
            c = (c + b) & m
            b = ((b - a) & m) ^ (((a << 6) | (a >> 26)) & m)
            a = (a + c) & m
            c = ((c - b) & m) ^ (((b << 8) | (b >> 24)) & m)
            b = (b + a) & m
            a = ((a - c) & m) ^ (((c << 16) | (c >> 16)) & m)
            c = (c + b) & m
            b = ((b - a) & m) ^ (((a << 19) | (a >> 13)) & m)
            a = (a + c) & m
            c = ((c - b) & m) ^ (((b << 4) | (b >> 28)) & m)
            b = (b + a) & m
    offset = blocks * 12
    if offset < length:
        # The last 1-11 bytes, little-endian; c's lowest byte is the length's.
        tail = data[offset:]
        a = (a + int.from_bytes(tail[0:4], "little")) & _M32
        b = (b + int.from_bytes(tail[4:8], "little")) & _M32
        c = (c + (int.from_bytes(tail[8:11], "little") << 8)) & _M32
    return _final(a, b, c)


def hash_bytes(data: bytes) -> int:
    """``hash_bytes``/``hash_any``: the 32-bit hash of ``data`` (unsigned)."""
    return _bytes_state(data, 0)[1]


def hash_bytes_extended(data: bytes, seed: int) -> int:
    """``hash_bytes_extended``/``hash_any_extended``: the 64-bit hash (unsigned) of ``data``."""
    b, c = _bytes_state(data, seed & _M64)
    return (b << 32) | c


def hash_uint32(word: int) -> int:
    """``hash_bytes_uint32``/``hash_uint32``: the 32-bit hash (unsigned) of one 32-bit word."""
    a = b = c = (_GOLDEN + 4) & _M32
    return _final((a + word) & _M32, b, c)[1]


def hash_uint32_extended(word: int, seed: int) -> int:
    """``hash_bytes_uint32_extended``: the 64-bit hash (unsigned) of one 32-bit word."""
    a = b = c = (_GOLDEN + 4) & _M32
    a, b, c = _seeded(a, b, c, seed & _M64)
    b, c = _final((a + word) & _M32, b, c)
    return (b << 32) | c


def int8_word(value: int) -> int:
    """The 32-bit word ``hashint8`` hashes for ``value`` (any int64; also int2 and int4)."""
    low = value & _M32
    high = (value >> 32) & _M32
    return low ^ (high if value >= 0 else ~high & _M32)


# hash_uint32_extended with the partition seed starts from the same state for
# every integer key: computed once.
_START4: Final = (_GOLDEN + 4) & _M32
_A0, _B0, _C0 = _seeded(_START4, _START4, _START4, HASH_PARTITION_SEED)


def partition_hash_of_word(word: int) -> int:
    """``hashint8extended`` with the partition seed, for ``int8_word(key)``."""
    b, c = _final((_A0 + word) & _M32, _B0, _C0)
    return (b << 32) | c


def partition_shard(hash64: int, count: int) -> int:
    """The ``pg_partition`` shard of a key whose seeded 64-bit type hash is ``hash64``.

    ``hash_combine64(0, hash64)`` is ``hash64 + 0x49a0f4dd15e5a8e3`` (mod 2**64);
    the partition is that modulo ``count``.
    """
    return ((hash64 + _COMBINE64) & _M64) % count


def citus_shard(hash32: int, count: int) -> int:
    """The ``citus`` shard of a key whose 32-bit type hash (unsigned) is ``hash32``.

    Citus reads the hash as a signed int32 and finds its range at
    ``(hash - INT32_MIN) / (2**32 / count)``; values past the last full range
    belong to the last shard.
    """
    index = (hash32 ^ 0x80000000) // (_TOKENS // count)
    return index if index < count else count - 1


def citus_hash_range(shard: int, count: int) -> tuple[int, int]:
    """The int32 hash range ``(min, max)`` Citus gives shard index ``shard`` of ``count``.

    These are ``pg_dist_shard.shardminvalue`` and ``shardmaxvalue`` of the
    table's shards, in shard-id order. Raises ``ValueError`` for a shard
    outside ``0 .. count - 1``.
    """
    if not 0 <= shard < count:
        raise ValueError(f"shard {shard} is outside 0..{count - 1}")
    step = _TOKENS // count
    low = -(1 << 31) + shard * step
    high = (1 << 31) - 1 if shard == count - 1 else low + step - 1
    return low, high
