"""``ShardMap``: a fixed number of logical shards, each placed on one named database.

A key's logical shard is decided by PostgreSQL's own hash for the key's
type under the map's scheme (``_hashing.py``); the placement says which
physical database holds each logical shard. The logical count never changes
(changing it would move almost every key); growing means placing some
logical shards on a new database, and bumping ``version``.

Placement text (``PG_SHARDS_PLACEMENT``), one entry per database, separated
by spaces:

* ``shard_a shard_b shard_c``: the logical shards split into contiguous
  blocks in that order, the first blocks one larger when the count does not
  divide evenly;
* ``shard_a:0-31 shard_b:32-47,56-63 shard_c:48-55``: explicit ranges and
  single numbers, separated by commas.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from wellwon_db.config._registry import DatabaseName, database_name
from wellwon_db.errors import ConfigurationError, InvalidShardKeyError, ShardRoutingError
from wellwon_db.shards._hashing import (
    HASH_PARTITION_SEED,
    HashScheme,
    citus_shard,
    hash_bytes,
    hash_bytes_extended,
    hash_uint32,
    int8_word,
    partition_hash_of_word,
    partition_shard,
)

__all__ = [
    "MAX_LOGICAL_SHARDS",
    "KeyType",
    "Placement",
    "ShardKey",
    "ShardMap",
    "format_shards",
    "parse_placement",
]

#: ``bigint`` (also right for ``integer`` and ``smallint`` columns), ``text`` or ``uuid``.
KeyType = Literal["bigint", "text", "uuid"]
#: What a shard key may be: an ``int``, a ``str`` or a ``uuid.UUID`` (per the map's key type).
ShardKey: TypeAlias = int | str | uuid.UUID

_Hash: TypeAlias = Callable[[ShardKey], int]

#: Logical shards at most: the 13 shard bits of a global ID (``_ids.py``).
MAX_LOGICAL_SHARDS: Final = 8192

_INT8_MIN: Final = -(1 << 63)
_INT8_MAX: Final = (1 << 63) - 1
_PLACEMENT: Final = "PG_SHARDS_PLACEMENT"


@dataclass(frozen=True, slots=True)
class Placement:
    """One physical database and the logical shards it holds (ascending)."""

    database: DatabaseName
    shards: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.database}:{format_shards(self.shards)}"


class ShardMap:
    """The logical shards, their hash scheme, key type and version, and where each one lives.

    Immutable. Build it from settings (``ShardSettings.shard_map()``) or in
    code: ``ShardMap(64, "shard_a shard_b")``, or with a mapping of databases
    to shard numbers (``{"shard_a": range(0, 32), "shard_b": range(32, 64)}``).
    Raises ``ConfigurationError`` naming ``PG_SHARDS_PLACEMENT`` (or the
    setting at fault) when a logical shard is placed twice or not at all,
    a shard number is out of range, or a name is not a valid database name.
    """

    __slots__ = ("_by_shard", "_hash", "count", "key_type", "placements", "scheme", "version")

    def __init__(
        self,
        count: int,
        placement: str | Mapping[str, Iterable[int] | str] | Sequence[str],
        *,
        scheme: HashScheme = "pg_partition",
        key_type: KeyType = "bigint",
        version: int = 1,
    ) -> None:
        if (
            isinstance(count, bool)
            or not isinstance(count, int)
            or not (1 <= count <= MAX_LOGICAL_SHARDS)
        ):
            raise ConfigurationError(
                f"PG_SHARDS_COUNT={count!r}: the number of logical shards must be an integer "
                f"from 1 to {MAX_LOGICAL_SHARDS}",
                env_var="PG_SHARDS_COUNT",
            )
        if scheme not in ("pg_partition", "citus"):
            raise ConfigurationError(
                f"PG_SHARDS_SCHEME={scheme!r}: use 'pg_partition' or 'citus'",
                env_var="PG_SHARDS_SCHEME",
            )
        if key_type not in ("bigint", "text", "uuid"):
            raise ConfigurationError(
                f"PG_SHARDS_KEY_TYPE={key_type!r}: use 'bigint', 'text' or 'uuid'",
                env_var="PG_SHARDS_KEY_TYPE",
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigurationError(
                f"PG_SHARDS_VERSION={version!r}: use a positive integer, bumped whenever the "
                "placement changes",
                env_var="PG_SHARDS_VERSION",
            )
        self.count = count
        self.scheme: HashScheme = scheme
        self.key_type: KeyType = key_type
        self.version = version
        self.placements = parse_placement(placement, count)
        by_shard: list[Placement] = [self.placements[0]] * count
        for entry in self.placements:
            for shard in entry.shards:
                by_shard[shard] = entry
        self._by_shard = tuple(by_shard)
        self._hash = _hasher(scheme, key_type, count)

    # -- where keys live ------------------------------------------------------------

    def shard_of(self, key: ShardKey) -> int:
        """The logical shard of ``key``, as PostgreSQL (or Citus) would place it.

        Raises ``InvalidShardKeyError`` when ``key`` is not of the map's key
        type (``int`` for bigint, ``str`` for text, ``uuid.UUID`` or its text
        for uuid) or is outside the type's range.
        """
        return self._hash(key)

    def database_of(self, shard: int) -> DatabaseName:
        """The database holding logical shard ``shard`` (``ShardRoutingError``: no such shard)."""
        return self.placement_of(shard).database

    def placement_of(self, shard: int) -> Placement:
        """The placement holding logical shard ``shard`` (``ShardRoutingError``: no such shard)."""
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < self.count:
            raise ShardRoutingError(
                f"there is no logical shard {shard!r}: the map has shards 0 to {self.count - 1}"
            )
        return self._by_shard[shard]

    @property
    def databases(self) -> tuple[DatabaseName, ...]:
        """The physical databases, in placement order."""
        return tuple(entry.database for entry in self.placements)

    def shards_on(self, database: str) -> tuple[int, ...]:
        """The logical shards ``database`` holds; ``ShardRoutingError`` when it holds none."""
        name = database_name(database)
        for entry in self.placements:
            if entry.database == name:
                return entry.shards
        raise ShardRoutingError(
            f"the {name} database holds no logical shard of this map (its databases: "
            f"{', '.join(map(str, self.databases))})"
        )

    # -- showing --------------------------------------------------------------------

    @property
    def placement_text(self) -> str:
        """The placement in ``PG_SHARDS_PLACEMENT``'s explicit form."""
        return " ".join(map(str, self.placements))

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable description (for ``wellwon-db config`` and health)."""
        return {
            "count": self.count,
            "scheme": self.scheme,
            "key_type": self.key_type,
            "version": self.version,
            "placement": {
                str(entry.database): format_shards(entry.shards) for entry in self.placements
            },
        }

    def __repr__(self) -> str:
        return (
            f"<ShardMap v{self.version} {self.count} {self.scheme} {self.key_type} "
            f"{self.placement_text}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardMap):
            return NotImplemented
        return self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash((self.count, self.scheme, self.key_type, self.version, self.placements))


# -- keys ------------------------------------------------------------------------------


def _bigint_word(key: ShardKey) -> int:
    if isinstance(key, bool) or not isinstance(key, int):
        raise InvalidShardKeyError(
            f"the shard key type is bigint (PG_SHARDS_KEY_TYPE): got {type(key).__name__} "
            f"{key!r}; pass an int"
        )
    if not _INT8_MIN <= key <= _INT8_MAX:
        raise InvalidShardKeyError(f"shard key {key} is outside the bigint range")
    return int8_word(key)


def _text_bytes(key: ShardKey) -> bytes:
    if not isinstance(key, str):
        raise InvalidShardKeyError(
            f"the shard key type is text (PG_SHARDS_KEY_TYPE): got {type(key).__name__} "
            f"{key!r}; pass a str"
        )
    if "\x00" in key:
        raise InvalidShardKeyError("a text shard key cannot contain NUL (PostgreSQL's text)")
    return key.encode("utf-8")


def _uuid_bytes(key: ShardKey) -> bytes:
    if isinstance(key, uuid.UUID):
        return key.bytes
    if isinstance(key, str):
        try:
            return uuid.UUID(key).bytes
        except ValueError:
            pass
    raise InvalidShardKeyError(
        f"the shard key type is uuid (PG_SHARDS_KEY_TYPE): got {type(key).__name__} {key!r}; "
        "pass a uuid.UUID or its text"
    )


def _hasher(scheme: HashScheme, key_type: KeyType, count: int) -> _Hash:
    seed = HASH_PARTITION_SEED
    if scheme == "pg_partition":
        if key_type == "bigint":
            return lambda key: partition_shard(partition_hash_of_word(_bigint_word(key)), count)
        encode = _text_bytes if key_type == "text" else _uuid_bytes
        return lambda key: partition_shard(hash_bytes_extended(encode(key), seed), count)
    if key_type == "bigint":
        return lambda key: citus_shard(hash_uint32(_bigint_word(key)), count)
    encode = _text_bytes if key_type == "text" else _uuid_bytes
    return lambda key: citus_shard(hash_bytes(encode(key)), count)


# -- placement --------------------------------------------------------------------------


def format_shards(shards: Iterable[int]) -> str:
    """``0-3,8,10-11`` for ``[0, 1, 2, 3, 8, 10, 11]`` (sorted, runs collapsed)."""
    ordered = sorted(set(shards))
    parts: list[str] = []
    start = previous = None
    for shard in [*ordered, None]:
        if shard is not None and previous is not None and shard == previous + 1:
            previous = shard
            continue
        if start is not None and previous is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = shard
    return ",".join(parts)


def parse_placement(
    placement: str | Mapping[str, Iterable[int] | str] | Sequence[str], count: int
) -> tuple[Placement, ...]:
    """The placements ``placement`` describes, each logical shard of ``count`` exactly once.

    Raises ``ConfigurationError`` naming ``PG_SHARDS_PLACEMENT`` and what to fix.
    """
    entries: list[tuple[str, str | Iterable[int] | None]]
    if isinstance(placement, str):
        entries = []
        # "shard_a:0-15, 32-47" is one entry: spaces around commas do not separate.
        for token in re.sub(r"\s*,\s*", ",", placement.strip()).split():
            name, colon, ranges_text = token.partition(":")
            entries.append((name, ranges_text if colon else None))
    elif isinstance(placement, Mapping):
        entries = list(placement.items())
    else:
        entries = [(str(name), None) for name in placement]
    if not entries:
        raise ConfigurationError(
            f"{_PLACEMENT} is empty: name the databases that hold the logical shards "
            "(e.g. 'shard_a shard_b', or 'shard_a:0-31 shard_b:32-63')",
            env_var=_PLACEMENT,
        )
    explicit = [ranges is not None for _, ranges in entries]
    if any(explicit) and not all(explicit):
        raise ConfigurationError(
            f"{_PLACEMENT} mixes databases with ranges and without; give every database its "
            "shards (shard_a:0-31 shard_b:32-63) or none (shard_a shard_b)",
            env_var=_PLACEMENT,
        )
    names = [_valid_name(name) for name, _ in entries]
    repeated = sorted({str(name) for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigurationError(
            f"{_PLACEMENT} names {', '.join(repeated)} more than once; list all of a "
            "database's shards in one entry (shard_a:0-15,32-47)",
            env_var=_PLACEMENT,
        )
    if not any(explicit):
        return _even(names, count)
    owner: dict[int, DatabaseName] = {}
    placements = []
    for name, (_, ranges) in zip(names, entries, strict=True):
        assert ranges is not None
        shards = _shard_numbers(name, ranges, count)
        for shard in shards:
            if shard in owner:
                raise ConfigurationError(
                    f"{_PLACEMENT} places logical shard {shard} on both {owner[shard]} and "
                    f"{name}; place each of the {count} logical shards exactly once",
                    env_var=_PLACEMENT,
                )
            owner[shard] = name
        placements.append(Placement(name, tuple(sorted(shards))))
    missing = [shard for shard in range(count) if shard not in owner]
    if missing:
        raise ConfigurationError(
            f"{_PLACEMENT} places no database for logical shard(s) {format_shards(missing)} "
            f"of 0-{count - 1} (PG_SHARDS_COUNT={count}); place each exactly once",
            env_var=_PLACEMENT,
        )
    return tuple(placements)


def _valid_name(name: str) -> DatabaseName:
    try:
        return database_name(name)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{_PLACEMENT}: {exc}", env_var=_PLACEMENT) from None


def _even(names: list[DatabaseName], count: int) -> tuple[Placement, ...]:
    if len(names) > count:
        raise ConfigurationError(
            f"{_PLACEMENT} names {len(names)} databases for {count} logical shards "
            "(PG_SHARDS_COUNT): each database needs at least one",
            env_var=_PLACEMENT,
        )
    size, extra = divmod(count, len(names))
    placements = []
    start = 0
    for index, name in enumerate(names):
        end = start + size + (1 if index < extra else 0)
        placements.append(Placement(name, tuple(range(start, end))))
        start = end
    return tuple(placements)


def _shard_numbers(name: DatabaseName, ranges: str | Iterable[int], count: int) -> list[int]:
    shards: list[int] = []
    if not isinstance(ranges, str):
        shards = list(ranges)
    else:
        for part in ranges.split(","):
            low, dash, high = part.strip().partition("-")
            try:
                first = int(low)
                last = int(high) if dash else first
            except ValueError:
                raise ConfigurationError(
                    f"{_PLACEMENT}: {name}:{ranges} is not a list of shard numbers and ranges "
                    "(e.g. shard_a:0-15,32-47)",
                    env_var=_PLACEMENT,
                ) from None
            if last < first:
                raise ConfigurationError(
                    f"{_PLACEMENT}: the range {part} of {name} runs backwards",
                    env_var=_PLACEMENT,
                )
            shards.extend(range(first, last + 1))
    for shard in shards:
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < count:
            raise ConfigurationError(
                f"{_PLACEMENT} places logical shard {shard!r} on {name}, outside 0-{count - 1} "
                f"(PG_SHARDS_COUNT={count})",
                env_var=_PLACEMENT,
            )
    if not shards:
        raise ConfigurationError(f"{_PLACEMENT} gives {name} no logical shard", env_var=_PLACEMENT)
    return shards
