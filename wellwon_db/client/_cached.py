"""``client.cached``: cached reads, and the triggers and listener that keep them honest.

:class:`CachedQueries` is the view a client hands out (``reference.cached``):
``fetch``, ``fetchrow`` and ``fetchval`` as on the client, answered from the
database's :class:`QueryCache`, and :meth:`CachedQueries.install_invalidation`.
:class:`CacheService` runs a database's cache: the cache itself and its
LISTEN connection (:class:`Listener`), started and stopped with the pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from wellwon_db.client._cache import MISS, CacheConfig, QueryCache
from wellwon_db.client._listener import Listener, quote_identifier
from wellwon_db.config._credentials import ConnectParams
from wellwon_db.errors import ConfigurationError
from wellwon_db.telemetry._telemetry import (
    record_invalidation_lag,
    register_cache,
    unregister_cache,
)

if TYPE_CHECKING:
    from wellwon_db.client._client import DatabaseClient
    from wellwon_db.client._slot import PoolSlot

__all__ = ["CacheService", "CachedQueries", "install_triggers", "invalidation_sql"]

logger = logging.getLogger("wellwon_db.cache")

Record = asyncpg.Record

#: The trigger every cached table carries, and the function it runs.
TRIGGER: Final = "wellwon_db_invalidate"
FUNCTION: Final = "wellwon_db_notify_invalidation"

#: Serialises concurrent installs: ``CREATE OR REPLACE`` of one function or
#: trigger from two sessions at once fails with "tuple concurrently updated".
_INSTALL_LOCK: Final = 0x5757_4442  # "WWDB"

_INSTALLED_SQL: Final = f"""
SELECT DISTINCT c.relname
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE t.tgname = '{TRIGGER}' AND NOT t.tgisinternal
"""


def _table_parts(table: str | Sequence[str]) -> tuple[str, ...]:
    """``"dc_customs"``, ``"ref.dc_customs"`` or ``("ref", "odd.name")`` as name parts."""
    if isinstance(table, str):
        parts = tuple(table.split(".", 1)) if table.count(".") == 1 else (table,)
    else:
        parts = tuple(table)
    if not 1 <= len(parts) <= 2 or not all(isinstance(p, str) and p for p in parts):
        raise ConfigurationError(
            f"not a table name: {table!r} (give 'table', 'schema.table' or ('schema', 'table'))"
        )
    return parts


def _literal(text: str) -> str:
    """``text`` as an SQL string literal, as PostgreSQL's ``quote_literal`` writes it.

    Quotes are doubled; a text with a backslash is written as an ``E''``
    string with backslashes doubled, so it reads the same whatever
    ``standard_conforming_strings`` says.
    """
    if "\x00" in text:
        raise ConfigurationError(f"not a usable channel name: {text!r}")
    quoted = text.replace("'", "''")
    if "\\" in text:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def invalidation_sql(tables: Iterable[str | Sequence[str]], channel: str) -> str:
    """The SQL that makes ``tables`` notify ``channel`` (with the table's name) on every change.

    One statement-level trigger per table (INSERT, UPDATE, DELETE, TRUNCATE),
    all running one function; every identifier quoted, so any name is safe.
    Run inside a transaction holding the install lock; ``CREATE OR REPLACE``
    makes it idempotent.
    """
    statements = [
        f"""CREATE OR REPLACE FUNCTION {quote_identifier(FUNCTION)}() RETURNS trigger
LANGUAGE plpgsql AS $wellwon$
BEGIN
  PERFORM pg_notify(TG_ARGV[0],
    TG_TABLE_NAME || ' ' || (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
  RETURN NULL;
END
$wellwon$"""
    ]
    for table in tables:
        target = ".".join(quote_identifier(part) for part in _table_parts(table))
        statements.append(
            f"CREATE OR REPLACE TRIGGER {quote_identifier(TRIGGER)} "
            f"AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {target} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {quote_identifier(FUNCTION)}("
            f"{_literal(channel)})"
        )
    return ";\n".join(statements)


async def install_triggers(
    connection: asyncpg.Connection[Any], tables: Sequence[str | Sequence[str]], channel: str
) -> set[str]:
    """Run :func:`invalidation_sql` for ``tables`` in one transaction under the install lock.

    Returns every table name that carries the trigger afterwards. Raises
    ``ConfigurationError`` for no or malformed names, asyncpg's errors for
    what the server refuses (nothing is left half-installed).
    """
    if not tables:
        raise ConfigurationError("install_invalidation needs at least one table")
    sql = invalidation_sql(tables, channel)
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _INSTALL_LOCK)
        await connection.execute(sql)
        rows = await connection.fetch(_INSTALLED_SQL)
    return {row[0] for row in rows}


class CacheService:
    """A database's result cache and the LISTEN connection that invalidates it."""

    def __init__(
        self,
        database: str,
        config: CacheConfig,
        *,
        listen: str | ConnectParams,
        channel: str,
        connect_timeout: float,
    ) -> None:
        self.cache = QueryCache(database, config)
        self.channel = channel
        self.listener = Listener(
            f"{database}-cache",
            listen,
            [channel],
            on_notify=self._notified,
            on_lost=self.cache.distrust,
            on_connect=self._listening,
            connect_timeout=connect_timeout,
        )

    async def start(self) -> None:
        """Listen (or keep trying in the background); the cache is trusted once listening."""
        register_cache(self)
        await self.listener.start()

    async def stop(self) -> None:
        """Stop listening; nothing is served from the cache any more."""
        unregister_cache(self)
        await self.listener.stop()
        self.cache.distrust()
        self.cache.clear()

    async def _listening(self, connection: asyncpg.Connection[Any]) -> None:
        # Listening already: the installed triggers read now, and a change
        # from now on, are both seen; then everything cached before is dropped.
        rows = await connection.fetch(_INSTALLED_SQL)
        self.cache.installed = {row[0] for row in rows}
        self.cache.trust()

    def _notified(self, channel: str, payload: str, pid: int) -> None:
        table, _, sent_ms = payload.rpartition(" ")
        if not table or not sent_ms.isdigit():
            table, sent_ms = payload, ""
        self.cache.invalidate(table)
        if sent_ms:
            lag = time.time() - int(sent_ms) / 1000
            record_invalidation_lag(self.cache.database, max(0.0, lag))

    @property
    def database(self) -> str:
        """The database whose results are cached."""
        return self.cache.database

    def events(self) -> dict[str, int]:
        """Counts since start by event: hits, misses, bypasses, evictions, invalidations, ..."""
        return {**self.cache.stats, "evictions": self.cache.evictions}

    def describe(self) -> dict[str, object]:
        """State for health reports: listener, trust, sizes and counters."""
        return {
            "listener": self.listener.state,
            "state": self.cache.state,
            "entries": len(self.cache),
            "evictions": self.cache.evictions,
            "reconnects": self.listener.reconnects,
            "installed": sorted(self.cache.installed),
            **self.cache.stats,
        }


class CachedQueries:
    """``client.cached``: the client's reads, answered from the database's result cache.

    The tables a query reads are found by PostgreSQL's parser (``tables=``
    overrides); a query whose tables cannot be told, or that reads a table
    without the invalidation trigger, is refused with ``ConfigurationError``.
    Arguments must be hashable (numbers, strings, tuples, ...).
    """

    __slots__ = ("_client", "_slot")

    def __init__(self, client: DatabaseClient, slot: PoolSlot) -> None:
        self._client = client
        self._slot = slot

    def __repr__(self) -> str:
        service = self._slot.cache
        state = "off" if service is None else service.cache.state
        return f"<CachedQueries {self._slot.database} {state}>"

    @property
    def _service(self) -> CacheService:
        service = self._slot.cache
        if service is None:
            raise self._slot.cache_off or self._slot.no_pool_error()
        return service

    @property
    def cache(self) -> QueryCache:
        """The cache itself (state, stats, ``clear()``)."""
        return self._service.cache

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        tables: Iterable[str] | None = None,
    ) -> list[Record]:
        """``client.fetch``, cached: all rows (a new list each time)."""
        key = ("fetch", query, args)
        service = self._slot.cache
        if service is not None:
            rows = service.cache.hit(key)
            if rows is not MISS:
                return list(rows)
        loaded: tuple[Record, ...] = await self._miss(
            key, query, tables, self._load_rows(query, args, timeout)
        )
        return list(loaded)

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        tables: Iterable[str] | None = None,
    ) -> Record | None:
        """``client.fetchrow``, cached: the first row or ``None``."""
        key = ("fetchrow", query, args)
        service = self._slot.cache
        if service is not None:
            row = service.cache.hit(key)
            if row is not MISS:
                return row  # type: ignore[no-any-return]
        loaded: Record | None = await self._miss(
            key, query, tables, lambda: self._client.fetchrow(query, *args, timeout=timeout)
        )
        return loaded

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        tables: Iterable[str] | None = None,
    ) -> Any:
        """``client.fetchval``, cached: value ``column`` of the first row, or ``None``."""
        key = ("fetchrow", query, args)  # the same entry as fetchrow's
        service = self._slot.cache
        if service is not None:
            row = service.cache.hit(key)
            if row is not MISS:
                return None if row is None else row[column]
        loaded: Record | None = await self._miss(
            key, query, tables, lambda: self._client.fetchrow(query, *args, timeout=timeout)
        )
        return None if loaded is None else loaded[column]

    def _load_rows(self, query: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        async def load() -> tuple[Record, ...]:
            return tuple(await self._client.fetch(query, *args, timeout=timeout))

        return load

    async def _miss(
        self, key: Hashable, query: str, tables: Iterable[str] | None, load: Any
    ) -> Any:
        cache = self._service.cache
        return await cache.miss(key, cache.tables_of(query, tables), load)

    async def install_invalidation(self, *tables: str | Sequence[str]) -> None:
        """Put the invalidation trigger on ``tables`` (idempotent, safe to run concurrently).

        When it returns, this process listens and caches reads of them.
        Raises ``ConfigurationError`` for a malformed name, and what the
        server says (no such table, no privilege) as asyncpg's errors.
        """
        service = self._service
        async with self._client.acquire() as connection:
            installed = await install_triggers(connection, tables, service.channel)
        service.cache.installed |= installed
        await self._service.listener.wait_listening(self._client.pool.config.connect_timeout)
