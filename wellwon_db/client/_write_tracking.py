"""Recording where a committed write ends in the primary's WAL (for read-your-writes).

Paid only by writes on a primary whose replicas are open (``slot.track_writes``):
one round trip on the same connection right after the write committed.
"""

from __future__ import annotations

from typing import Final

from wellwon_db.client._positions import record_write
from wellwon_db.client._slot import PoolSlot
from wellwon_db.pool._pool import Connection

__all__ = ["UNKNOWN_POSITION", "record_position"]

#: After a COMMIT, the WAL written so far covers it, except under
#: ``synchronous_commit = off``, where the commit record may still be only
#: inserted: then the insert position, which is past it.
_POSITION_SQL: Final = (
    "SELECT CASE WHEN current_setting('synchronous_commit') = 'off' "
    "THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_lsn() END"
)

#: Recorded when the position could not be read: no replica is ever past it, so
#: this context reads from the primary, which is always right.
UNKNOWN_POSITION: Final = 2**64 - 1


async def record_position(slot: PoolSlot, connection: Connection) -> None:
    """Record the WAL position after the write just committed on ``connection``.

    Raises what asyncpg raises (the caller decides what becomes of the
    connection); before raising, records :data:`UNKNOWN_POSITION`, so a
    failure never lets a later read miss the write.
    """
    try:
        position: int | None = await connection.fetchval(_POSITION_SQL)
    except BaseException:
        record_write(str(slot.database), UNKNOWN_POSITION)
        raise
    record_write(str(slot.database), UNKNOWN_POSITION if position is None else position)
