"""The query API: ``DatabaseClient`` and the typed ``MainDB``/``ReferenceDB``.

Every call goes through the database's circuit breaker, takes a connection
from its own pool, runs one statement and hands the connection back (reset
first only when the statement changed session state, see ``_session.py``).
Connection-level failures become ``DatabaseUnavailableError``; PostgreSQL
errors reach the caller unchanged. COPY takes the same path; a cursor
streams inside a transaction of its own (``_cursor.py``); ``listen()``
holds a connection of its own outside the pool (``_notifications.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, overload

import asyncpg

from wellwon_db.client._cached import CachedQueries
from wellwon_db.client._copy import (
    Records,
    copy_call,
    copy_from_query,
    copy_from_table,
    copy_records_to_table,
    copy_to_table,
)
from wellwon_db.client._cursor import CursorBlock, RowStream, check_prefetch
from wellwon_db.client._declared import DeclaredClient
from wellwon_db.client._guarded import record_outcome, run_guarded
from wellwon_db.client._notifications import Notifications, listen_on
from wellwon_db.client._rows import (
    check_row_options,
    fetch_call_for,
    fetchrow_call_for,
    map_row,
    map_rows,
)
from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._transaction import (
    IsolationLevel,
    Transaction,
    TransactionScope,
    execute_call,
    executemany_call,
    fetch_call,
    fetchrow_call,
    run_in_transaction,
)
from wellwon_db.config._registry import MAIN, REFERENCE, DatabaseName
from wellwon_db.errors import ConfigurationError
from wellwon_db.pool._pool import Connection, DatabasePool
from wellwon_db.pool._raw import lent
from wellwon_db.resilience._breaker import CircuitBreaker

__all__ = ["DatabaseClient", "MainDB", "ReferenceDB"]

_T = TypeVar("_T")
_M = TypeVar("_M")
_R = TypeVar("_R", bound=asyncpg.Record)
Record = asyncpg.Record


class DatabaseClient(DeclaredClient):
    """Queries against one database's pool.

    The container binds it to the database's :class:`PoolSlot`. Calls raise
    ``CircuitOpenError`` at once while the breaker is open,
    ``PoolClosedError`` when the pool is not open, ``PoolTimeoutError`` when
    no connection frees up within the acquire timeout,
    ``DatabaseUnavailableError`` when the server cannot be reached,
    ``TimeoutError`` when a statement exceeds its timeout (the server cancels
    it), and asyncpg's ``PostgresError`` subclasses for errors of the SQL.
    ``timeout`` arguments are seconds and override the pool's command timeout.

    A call that failed before reaching the server is retried per the
    database's retry settings; ``idempotent=True`` allows retrying a call
    whose statement may already have run.

    A subclass names the database it is for, which declares that database
    (see ``wellwon_db.declare_database``)::

        class AuditDB(DatabaseClient, database="audit"):
            ...

    An instance then accepts only that database's pool.
    """

    __slots__ = ("_cached", "_database", "_slot")

    def __init__(self, pool: DatabasePool | PoolSlot) -> None:
        expected = type(self).spec
        if isinstance(pool, DatabasePool):
            slot = PoolSlot(pool.database, pool)
        elif isinstance(pool, PoolSlot):
            slot = pool
        else:
            raise TypeError(
                f"{type(self).__name__} needs a DatabasePool or PoolSlot, got "
                f"{type(pool).__name__}; in tests, override the client with a "
                "wellwon_db.testing fake instead"
            )
        if expected is not None and slot.database != expected.name:
            raise ConfigurationError(
                f"{type(self).__name__} is for the {expected.name} database but was given "
                f"the {slot.database} pool; check the container's providers"
            )
        self._slot = slot
        self._database = slot.database
        self._cached: CachedQueries | None = None

    def __repr__(self) -> str:
        target = self._slot.pool or f"{self._database} (not open)"
        return f"<{type(self).__name__} {target!r}>"

    @property
    def database(self) -> DatabaseName:
        """The database this client queries (a ``Database`` member for the built-in ones)."""
        return self._database

    @property
    def pool(self) -> DatabasePool:
        """The open pool this client draws from; ``PoolClosedError`` when none is open."""
        return self._slot.get()

    @property
    def cached(self) -> CachedQueries:
        """The result cache's view of this client: ``fetch``, ``fetchrow``, ``fetchval``.

        Its calls raise ``ConfigurationError`` naming ``PG_[<DB>_]CACHE_ENABLED``
        when the cache is off for this database (docs/caching.md).
        """
        view = self._cached
        if view is None:
            view = self._cached = CachedQueries(self, self._slot)
        return view

    @property
    def breaker(self) -> CircuitBreaker:
        """This database's circuit breaker (state, listeners, force open, reset)."""
        return self._slot.breaker

    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> list[Record]: ...
    @overload
    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        model: type[_M],
    ) -> list[_M]: ...
    @overload
    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        record_class: type[_R],
    ) -> list[_R]: ...
    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> list[Any]:
        """Run ``query`` with ``args``; all rows.

        ``model``: each row becomes ``model(**row)`` (a dataclass, ...) or,
        for a pydantic model, ``model.model_validate(row)``; a row that does
        not fit raises ``TypeError`` naming its columns (pydantic's
        ``ValidationError`` for a pydantic model). ``record_class``: rows are
        built by asyncpg as that ``asyncpg.Record`` subclass. Not both.
        """
        if model is None and record_class is None:
            return await run_guarded(self._slot, fetch_call, query, args, timeout, idempotent)
        check_row_options(model, record_class)
        call = fetch_call if record_class is None else fetch_call_for(record_class)
        rows: list[Any] = await run_guarded(self._slot, call, query, args, timeout, idempotent)
        return rows if model is None else map_rows(rows, model)

    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> Record | None: ...
    @overload
    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        model: type[_M],
    ) -> _M | None: ...
    @overload
    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        record_class: type[_R],
    ) -> _R | None: ...
    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """Run ``query`` with ``args``; the first row or ``None`` (``model`` as for ``fetch``)."""
        if model is None and record_class is None:
            return await run_guarded(self._slot, fetchrow_call, query, args, timeout, idempotent)
        check_row_options(model, record_class)
        call = fetchrow_call if record_class is None else fetchrow_call_for(record_class)
        row = await run_guarded(self._slot, call, query, args, timeout, idempotent)
        return row if model is None else map_row(row, model)

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Run ``query`` with ``args``; value ``column`` of the first row, or ``None``."""
        row: Record | None = await run_guarded(
            self._slot, fetchrow_call, query, args, timeout, idempotent
        )
        return None if row is None else row[column]

    async def execute(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> str:
        """Run ``query`` with ``args``; the command status such as ``"UPDATE 3"``.

        Without ``args``, ``query`` may hold several statements.
        """
        return await run_guarded(self._slot, execute_call, query, args, timeout, idempotent)

    async def executemany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> None:
        """Run ``query`` once per tuple in ``args``; all or nothing."""
        sets = args if isinstance(args, list) else list(args)
        await run_guarded(
            self._slot, executemany_call, query, sets, timeout, idempotent, batch=len(sets)
        )

    def transaction(
        self,
        *,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> AbstractAsyncContextManager[TransactionScope]:
        """A transaction on one connection for the ``async with`` block.

        Commits when the block ends normally, rolls back when it raises.
        Yields a :class:`TransactionScope` with the query methods;
        ``scope.transaction()`` nests a savepoint. Not retried: use
        :meth:`run_in_transaction` for that.
        """
        return Transaction(self._slot, isolation, readonly, deferrable)

    async def run_in_transaction(
        self,
        fn: Callable[..., Awaitable[_T]],
        *args: Any,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
        attempts: int | None = None,
    ) -> _T:
        """Run ``await fn(scope, *args)`` in a transaction and return its result.

        The whole function runs again (backoff and deadline from the retry
        settings; ``attempts`` overrides their count) after
        ``serialization_failure``, ``deadlock_detected``, or a connection
        failure before COMMIT was sent, so ``fn`` must be safe to re-run. A
        failure during COMMIT is never retried: its outcome is unknown.
        """
        return await run_in_transaction(
            self._slot,
            fn,
            args,
            isolation=isolation,
            readonly=readonly,
            deferrable=deferrable,
            attempts=attempts,
        )

    @overload
    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
    ) -> CursorBlock[Record]: ...
    @overload
    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        model: type[_M],
    ) -> CursorBlock[_M]: ...
    @overload
    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        record_class: type[_R],
    ) -> CursorBlock[_R]: ...
    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> CursorBlock[Any]:
        """``async with client.cursor(query, *args) as rows: async for row in rows:``.

        Streams the rows through a server-side cursor, ``prefetch`` (default
        50) per round trip, in a transaction of its own that lasts exactly
        the block (committed when it ends normally, rolled back when it
        raises; ``isolation``/``readonly`` as for :meth:`transaction`). The
        breaker is asked when the block starts; ``timeout`` bounds each fetch.
        Inside a transaction already, use ``tx.cursor(...)``. Raises
        ``ValueError`` for a ``prefetch`` below 1, ``TypeError`` for
        ``async for`` over the block itself.
        """
        check_prefetch(prefetch)
        check_row_options(model, record_class)

        def stream(scope: TransactionScope) -> RowStream[Any]:
            if record_class is not None:
                return scope.cursor(
                    query, *args, prefetch=prefetch, timeout=timeout, record_class=record_class
                )
            if model is not None:
                return scope.cursor(query, *args, prefetch=prefetch, timeout=timeout, model=model)
            return scope.cursor(query, *args, prefetch=prefetch, timeout=timeout)

        return CursorBlock(Transaction(self._slot, isolation, readonly, False), stream)

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Records,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        where: str | None = None,
    ) -> str:
        """COPY ``records`` into a table (binary); the status, ``"COPY 3"``.

        ``records``: tuples (or an async iterable of them) in ``columns``'
        order. Through the breaker and the pool like any call, bounded by
        ``timeout`` (default: the command timeout); retried only when it
        failed before reaching the server (the records are read once).
        """
        call = copy_records_to_table(table_name, records, columns, schema_name, where)
        return await run_guarded(self._slot, copy_call, call.statement, call, timeout, False)

    async def copy_to_table(
        self,
        table_name: str,
        *,
        source: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> str:
        """COPY ``source`` (a path, a file, an async iterable of bytes) into a table.

        ``options`` are asyncpg's COPY options (``format="csv"``,
        ``header=True``, ``delimiter``, ``null``, ``where``, ...); an unknown
        one raises ``TypeError`` before anything is sent.
        """
        call = copy_to_table(table_name, source, columns, schema_name, options)
        return await run_guarded(self._slot, copy_call, call.statement, call, timeout, False)

    async def copy_from_table(
        self,
        table_name: str,
        *,
        output: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> str:
        """COPY a table to ``output`` (a path, a file, an async function taking bytes)."""
        call = copy_from_table(table_name, output, columns, schema_name, options)
        return await run_guarded(self._slot, copy_call, call.statement, call, timeout, False)

    async def copy_from_query(
        self, query: str, *args: Any, output: Any, timeout: float | None = None, **options: Any
    ) -> str:
        """COPY the rows of ``query`` (with ``args``) to ``output``; the status."""
        call = copy_from_query(query, args, output, options)
        return await run_guarded(self._slot, copy_call, call.statement, call, timeout, False)

    def listen(
        self, channel: str, *channels: str, max_queued: int = 10_000
    ) -> AbstractAsyncContextManager[Notifications]:
        """``async with client.listen("orders") as notifications: async for item in ...``.

        LISTEN on ``channel`` (and ``channels``) over a connection of its own,
        outside the pool, for the block. Entering returns once listening:
        a ``NOTIFY`` committed after that is delivered. Items are
        ``Notification`` (channel, payload, pid) and ``NotificationGap``
        (notifications may have been missed: after a reconnect, or when more
        than ``max_queued`` were waiting). The connection is re-established
        with backoff after any failure. Raises ``CircuitOpenError`` while the
        breaker is open, ``DatabaseUnavailableError`` when the first connect
        fails, ``ValueError`` for an unusable channel name, and
        ``ConfigurationError`` when the DSN points at PgBouncer without
        ``PG_[<DB>_]CACHE_LISTEN_DSN``.
        """
        return listen_on(self._slot, (channel, *channels), max_queued)

    def acquire(self) -> AbstractAsyncContextManager[Connection]:
        """A raw asyncpg connection for the block; its session is reset afterwards."""
        return self._acquire()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Connection]:
        leases = self._slot.get().leases
        breaker = self._slot.breaker
        breaker.allow()
        started = time.monotonic()
        try:
            holder = leases.lease_nowait() or await leases.lease(started)
        except BaseException as exc:
            record_outcome(breaker, exc, started)
            raise
        breaker.record_ignored()
        async with lent(leases, holder) as connection:
            yield connection


class MainDB(DatabaseClient, database=MAIN):
    """Client of the main database."""

    __slots__ = ()


class ReferenceDB(DatabaseClient, database=REFERENCE):
    """Client of the reference database (slowly changing lookup data)."""

    __slots__ = ()
