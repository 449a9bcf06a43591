"""Globally unique 64-bit IDs made on the shards, with the logical shard readable from them.

The layout is Instagram's: no central coordinator, each physical shard
makes IDs for its logical shards from its clock and a sequence::

    bit 63 ........... 23 | 22 ........ 10 | 9 ...... 0
    milliseconds since the | logical shard  | sequence
    epoch (41 bits)        | (13 bits)      | mod 1024

IDs grow with time (roughly sortable by creation), fit a ``bigint``, and
stay positive for 2**40 ms (about 34.8 years) after the epoch. Two IDs can
collide only if one physical shard makes more than 1024 of them in the same
millisecond, or if its clock steps back; IDs of different logical shards
never collide. The function lives in every shard database
(``wellwon_shards.next_id``), installed by :data:`INSTALL_SQL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "INSTALL_SQL",
    "NEXT_ID_SQL",
    "SEQUENCE_BITS",
    "SHARD_BITS",
    "GlobalId",
    "decode_id",
    "shard_of_id",
]

SHARD_BITS: Final = 13
SEQUENCE_BITS: Final = 10
_SHARD_MASK: Final = (1 << SHARD_BITS) - 1
_SEQUENCE_MASK: Final = (1 << SEQUENCE_BITS) - 1
_TIME_SHIFT: Final = SHARD_BITS + SEQUENCE_BITS

#: Installs the ID function (idempotent): a sequence and ``wellwon_shards.next_id``.
INSTALL_SQL: Final = f"""
CREATE SCHEMA IF NOT EXISTS wellwon_shards;
CREATE SEQUENCE IF NOT EXISTS wellwon_shards.id_sequence;
CREATE OR REPLACE FUNCTION wellwon_shards.next_id(shard integer, epoch_ms bigint)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
BEGIN
    IF shard IS NULL OR shard < 0 OR shard > {_SHARD_MASK} THEN
        RAISE EXCEPTION 'logical shard % is outside 0..{_SHARD_MASK}', shard;
    END IF;
    IF now_ms < epoch_ms THEN
        RAISE EXCEPTION 'the ID epoch (% ms) is in the future', epoch_ms;
    END IF;
    RETURN ((now_ms - epoch_ms) << {_TIME_SHIFT})
        | (shard::bigint << {SEQUENCE_BITS})
        | (nextval('wellwon_shards.id_sequence') % {1 << SEQUENCE_BITS});
END
$$;
"""

#: One new ID: ``$1`` the logical shard, ``$2`` the epoch in Unix milliseconds.
NEXT_ID_SQL: Final = "SELECT wellwon_shards.next_id($1, $2)"


@dataclass(frozen=True, slots=True)
class GlobalId:
    """An ID taken apart: when it was made (UTC, to the millisecond), its logical shard and
    its sequence number within that millisecond."""

    value: int
    created_at: datetime
    shard: int
    sequence: int


def shard_of_id(value: int) -> int:
    """The logical shard an ID was made for. Raises ``ValueError`` for a negative value."""
    if value < 0:
        raise ValueError(f"{value} is not an ID: IDs are positive")
    return (value >> SEQUENCE_BITS) & _SHARD_MASK


def decode_id(value: int, epoch: datetime) -> GlobalId:
    """``value`` taken apart, its time counted from ``epoch`` (``PG_SHARDS_ID_EPOCH``)."""
    shard = shard_of_id(value)
    milliseconds = value >> _TIME_SHIFT
    created_at = epoch.astimezone(UTC) + timedelta(milliseconds=milliseconds)
    return GlobalId(value, created_at, shard, value & _SEQUENCE_MASK)
