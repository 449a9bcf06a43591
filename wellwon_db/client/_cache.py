"""The result cache of one database: in-process, invalidated in every worker by LISTEN/NOTIFY.

Guarantees (see docs/caching.md):

* **A hit costs no I/O**: a dict lookup, a generation check per table read
  and a TTL check.
* **Never stale after a change**, within the notification's delivery time:
  a trigger on each cached table NOTIFYs a channel when a statement changes
  it (at commit); every process listens and bumps that table's generation,
  which makes every entry that read it a miss.
* **No stale set**: a miss remembers the generations of its tables before
  it queries and stores its result only if none moved meanwhile.
* **A lost listener never leads to stale reads**: while it is down, reads
  bypass the cache; when it is back everything cached before is dropped
  (notifications sent in between are lost).
* **Single flight**: concurrent misses of one key run one query.
* **Serving through an outage**: when the query fails because the database
  cannot be reached, an entry cached before the outage answers for up to
  ``stale_if_error`` seconds after it began.
* **Bounded**: at most ``max_entries``, least recently used evicted
  (``cachetools.LRUCache``); a TTL as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import cachetools

from wellwon_db.errors import ConfigurationError, DatabaseUnavailableError
from wellwon_db.sql._tables import tables_read

__all__ = ["MISS", "CacheConfig", "QueryCache"]

logger = logging.getLogger("wellwon_db.cache")

_MISSING: Final = object()
#: What :meth:`QueryCache.hit` returns when it has no valid value.
MISS: Final = object()
_monotonic = time.monotonic


class _LeaderGone(Exception):
    """The miss that others waited for was cancelled: they load for themselves."""


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Bounds of one database's cache: entries, TTL and stale-if-error window (s)."""

    max_entries: int = 10_000
    ttl: float = 300.0
    stale_if_error: float = 60.0


class _Entry:
    __slots__ = ("epoch", "generations", "stored_at", "value")

    def __init__(
        self, value: Any, generations: tuple[tuple[str, int], ...], epoch: int, stored_at: float
    ) -> None:
        self.value = value
        self.generations = generations
        self.epoch = epoch
        self.stored_at = stored_at


class _Entries(cachetools.LRUCache[Hashable, _Entry]):
    """The LRU store, counting evictions (a full cache dropping its least recently used)."""

    def __init__(self, maxsize: int, database: str) -> None:
        super().__init__(maxsize=maxsize)
        self.database = database
        self.evictions = 0

    def popitem(self) -> tuple[Hashable, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item


class QueryCache:
    """Cached query results of one database, kept honest by invalidation notifications.

    ``trusted`` is false until the invalidation listener listens, and while
    it is lost: reads then bypass the cache. :meth:`invalidate` is called per
    notification, :meth:`distrust` on a lost listener, :meth:`trust` when it
    listens (again): the epoch moves, dropping every entry.
    """

    def __init__(self, database: str, config: CacheConfig | None = None) -> None:
        self.database = database
        self.config = config or CacheConfig()
        self._entries: _Entries = _Entries(self.config.max_entries, database)
        self._generations: dict[str, int] = {}
        #: Misses being loaded: the future their result arrives on, and the tables they read.
        self._inflight: dict[Hashable, tuple[asyncio.Future[Any], frozenset[str]]] = {}
        self._epoch = 0
        self._ttl = self.config.ttl
        self.trusted = False
        #: Tables with the invalidation trigger (only those may be cached).
        self.installed: set[str] = set()
        #: ``time.monotonic()`` when the database became unreachable, ``None`` while it answers.
        self.outage_since: float | None = None
        self.stats = {
            "hits": 0,
            "misses": 0,
            "stores": 0,
            "invalidations": 0,
            "bypasses": 0,
            "stale_served": 0,
        }

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def evictions(self) -> int:
        """Entries dropped because the cache was full."""
        return self._entries.evictions

    # -- invalidation ----------------------------------------------------------

    def invalidate(self, table: str) -> None:
        """``table`` changed: its entries become misses; queries in flight will not store."""
        self._generations[table] = self._generations.get(table, 0) + 1
        self.stats["invalidations"] += 1
        for key in [key for key, (_, read) in self._inflight.items() if table in read]:
            # Later misses must not join a query that started before the change.
            del self._inflight[key]

    def distrust(self) -> None:
        """The listener was lost: bypass the cache until :meth:`trust`.

        Entries are kept (not trusted) to answer during an outage, within
        ``stale_if_error``: the notifications a dead database could send are none.
        """
        self.trusted = False

    def trust(self) -> None:
        """The listener listens (again): a new epoch, nothing cached before counts."""
        self._epoch += 1
        self.trusted = True
        self.outage_since = None
        self._inflight.clear()

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._epoch += 1

    # -- reads -----------------------------------------------------------------

    def tables_of(self, query: str, tables: Iterable[str] | None) -> frozenset[str]:
        """The tables whose changes invalidate ``query``'s results.

        ``tables`` (if given) overrides what the parser finds. Raises
        ``ConfigurationError`` when they cannot be determined, or when one of
        them has no invalidation trigger (``install_invalidation``).
        """
        found = frozenset(tables) if tables is not None else tables_read(query)
        if not found:
            raise ConfigurationError(
                f"cannot tell which tables this query reads, so its results cannot be cached "
                f"safely (only one plain SELECT qualifies; a function in FROM hides its reads): "
                f"pass tables=(...) or use the uncached client: {query[:200]!r}"
            )
        missing = found - self.installed
        if missing:
            names = ", ".join(sorted(missing))
            raise ConfigurationError(
                f"no invalidation trigger on {names} in the {self.database} database, so cached "
                f"results of it could go stale: run `await client.cached.install_invalidation("
                f"{', '.join(repr(n) for n in sorted(missing))})` or `wellwon-db cache install "
                f"--database {self.database} {' '.join(sorted(missing))}` once"
            )
        return found

    def hit(self, key: Hashable) -> Any:
        """The cached value of ``key`` when it is valid, else :data:`MISS`. No I/O, no await.

        An unhashable key is a miss (its query then runs uncached).
        """
        if not self.trusted:
            return MISS
        try:
            entry = self._entries[key]
        except (KeyError, TypeError):
            return MISS
        if entry.epoch != self._epoch or _monotonic() - entry.stored_at > self._ttl:
            return MISS
        generations = self._generations
        for table, seen in entry.generations:
            if generations.get(table, 0) != seen:
                return MISS
        self.stats["hits"] += 1
        return entry.value

    async def get(
        self,
        key: Hashable,
        tables: frozenset[str],
        load: Callable[[], Awaitable[Any]],
    ) -> Any:
        """The cached value of ``key``, or ``await load()`` (stored when it is still valid)."""
        value = self.hit(key)
        if value is not MISS:
            return value
        return await self.miss(key, tables, load)

    async def miss(
        self,
        key: Hashable,
        tables: frozenset[str],
        load: Callable[[], Awaitable[Any]],
    ) -> Any:
        """``await load()`` for a key :meth:`hit` did not answer: one load per key at a time,
        stored when still valid; while bypassed, loaded uncached (stale only in an outage).
        """
        try:
            hash(key)
        except TypeError:
            self.stats["bypasses"] += 1
            return await load()
        if not self.trusted:
            self.stats["bypasses"] += 1
            return await self._load_or_stale(key, load)
        inflight = self._inflight.get(key)
        if inflight is not None:
            try:
                return await asyncio.shield(inflight[0])
            except _LeaderGone:
                pass
        self.stats["misses"] += 1
        return await self._fill(key, tables, load)

    async def _fill(
        self, key: Hashable, tables: frozenset[str], load: Callable[[], Awaitable[Any]]
    ) -> Any:
        generations = tuple((table, self._generations.get(table, 0)) for table in tables)
        epoch = self._epoch
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (future, tables)
        try:
            value = await self._load_or_stale(key, load)
        except BaseException as exc:
            if not future.done():
                gone = isinstance(exc, asyncio.CancelledError)
                future.set_exception(_LeaderGone() if gone else exc)
                future.exception()  # retrieved here; joiners get it too
            raise
        finally:
            if self._inflight.get(key, (None,))[0] is future:
                del self._inflight[key]
        if not future.done():
            future.set_result(value)
        if (
            self.trusted
            and epoch == self._epoch
            and all(self._generations.get(table, 0) == seen for table, seen in generations)
        ):
            self._entries[key] = _Entry(value, generations, epoch, time.monotonic())
            self.stats["stores"] += 1
        return value

    async def _load_or_stale(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        try:
            value = await load()
        except DatabaseUnavailableError:
            stale = self._stale(key)
            if stale is _MISSING:
                raise
            self.stats["stale_served"] += 1
            return stale
        self.outage_since = None  # it answered: no outage
        return value

    def _stale(self, key: Hashable) -> Any:
        """An entry still valid when the outage began, if the outage is recent enough.

        Valid means of the current epoch with its tables' generations
        unchanged (the TTL aside): while the database is unreachable nothing
        can change it, and the epoch moves only once the listener is back.
        """
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
        if now - self.outage_since > self.config.stale_if_error:
            return _MISSING
        entry = self._entries.get(key)
        if entry is None or entry.epoch != self._epoch:
            return _MISSING
        generations = self._generations
        if any(generations.get(table, 0) != seen for table, seen in entry.generations):
            return _MISSING
        return entry.value

    @property
    def state(self) -> Literal["trusted", "bypassed"]:
        """``trusted`` (serving hits) or ``bypassed`` (listener not listening)."""
        return "trusted" if self.trusted else "bypassed"
