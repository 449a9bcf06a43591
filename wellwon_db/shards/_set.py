"""``ShardSet``: where a container's open shard map and its physical shards live.

Like a :class:`PoolSlot` for one database, a shard set is the stable object
clients hold: the container's Resource fills it when the pools start (the
map read from the settings, one pool, breaker and client per physical
database) and empties it when they stop, so the same sharded client works
across a stop and a start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wellwon_db.client._client import DatabaseClient
from wellwon_db.client._slot import PoolSlot
from wellwon_db.config._registry import DatabaseName, database_name
from wellwon_db.errors import PoolClosedError, ShardRoutingError
from wellwon_db.shards._map import ShardMap
from wellwon_db.shards._settings import ShardSettings

__all__ = ["PhysicalShard", "ShardSet"]


@dataclass(frozen=True, slots=True)
class PhysicalShard:
    """One physical database of the map: the logical shards it holds, its slot and client.

    ``down`` is why its pool could not be opened, when the set was opened
    tolerating that (``wellwon-db shards migrate``): its calls then fail.
    """

    database: DatabaseName
    shards: tuple[int, ...]
    slot: PoolSlot
    client: DatabaseClient
    down: BaseException | None = None


class ShardSet:
    """The open shard map, its settings and its physical shards; empty while stopped.

    Reading it while empty raises ``PoolClosedError`` saying how to start it.
    Each physical database keeps its slot and client across a stop and a
    start (:meth:`slot_for`), so a shard client taken before a restart works
    after it while its database still holds shards.
    """

    __slots__ = ("_by_shard", "_clients", "_map", "_physical", "_settings", "_slots")

    def __init__(self) -> None:
        self._settings: ShardSettings | None = None
        self._map: ShardMap | None = None
        self._physical: dict[str, PhysicalShard] = {}
        self._by_shard: tuple[PhysicalShard, ...] = ()
        self._slots: dict[str, PoolSlot] = {}
        self._clients: dict[str, DatabaseClient] = {}

    def __repr__(self) -> str:
        return "<ShardSet (not open)>" if self._map is None else f"<ShardSet {self._map!r}>"

    # -- lifecycle (the container's Resource) --------------------------------------------

    def slot_for(self, database: DatabaseName) -> tuple[PoolSlot, DatabaseClient]:
        """``database``'s slot and client: made on first use, the same ones afterwards."""
        key = str(database)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = PoolSlot(database)
            self._clients[key] = DatabaseClient(slot)
        return slot, self._clients[key]

    def install(self, settings: ShardSettings, physical: Iterable[PhysicalShard]) -> None:
        """Make ``physical`` (every database of ``settings``' map) the set's shards."""
        shard_map = settings.shard_map()
        by_name = {str(shard.database): shard for shard in physical}
        if set(by_name) != {str(name) for name in shard_map.databases}:
            raise ValueError("a physical shard is needed for each database of the map")
        self._physical = by_name
        self._by_shard = tuple(
            by_name[str(shard_map.database_of(shard))] for shard in range(shard_map.count)
        )
        self._settings = settings
        self._map = shard_map

    def clear(self) -> None:
        """Forget the map and the physical shards (their pools are closed by the Resource)."""
        self._settings = None
        self._map = None
        self._physical = {}
        self._by_shard = ()

    # -- reading --------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether a map is installed."""
        return self._settings is not None

    @property
    def settings(self) -> ShardSettings:
        """The shard settings in force; ``PoolClosedError`` while the set is not open."""
        settings = self._settings
        if settings is None:
            raise self._closed()
        return settings

    @property
    def shard_map(self) -> ShardMap:
        """The map in force; ``PoolClosedError`` while the set is not open."""
        shard_map = self._map
        if shard_map is None:
            raise self._closed()
        return shard_map

    def for_shard(self, shard: int) -> PhysicalShard:
        """The physical shard holding logical shard ``shard``.

        Raises ``ShardRoutingError`` for a shard number outside the map and
        ``PoolClosedError`` while the set is not open.
        """
        by_shard = self._by_shard
        if not by_shard:
            raise self._closed()
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < len(by_shard):
            raise ShardRoutingError(
                f"there is no logical shard {shard!r}: the map has shards 0 to {len(by_shard) - 1}"
            )
        return by_shard[shard]

    def physical(self, database: str | None = None) -> list[PhysicalShard]:
        """Every physical shard in placement order, or only ``database``'s.

        Raises ``ShardRoutingError`` for a database that holds no shard.
        """
        if self._settings is None:
            raise self._closed()
        if database is None:
            return list(self._physical.values())
        found = self._physical.get(str(database_name(database)))
        if found is None:
            raise ShardRoutingError(
                f"the {database} database holds no logical shard (the shard databases are "
                f"{', '.join(self._physical)})"
            )
        return [found]

    def _closed(self) -> PoolClosedError:
        return PoolClosedError(
            "the shards are not open: start them with `await wellwon_db.start_databases("
            "container)` (or `database_lifespan`) before using the sharded client",
            database="shards",
        )
