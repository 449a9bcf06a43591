"""Fake clients for application tests: scripted results, recorded calls, no database.

``FakeMainDB`` is a ``MainDB``, ``FakeReferenceDB`` a ``ReferenceDB``,
``FakeMainReplicaDB`` a ``MainReplicaDB``: they pass wherever the real
clients are expected, for mypy too (the replica fakes are in
``_fake_replicas.py``). Scripting is in ``_scripting.py``;
cursors, COPY and ``listen()`` in ``_fake_streams.py``. ``model=`` maps
scripted rows as on a real client; ``record_class=`` is accepted and
ignored (rows are ``FakeRecord``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from wellwon_db.client._cached import CachedQueries
from wellwon_db.client._client import DatabaseClient, MainDB, ReferenceDB
from wellwon_db.client._copy import (
    Records,
    copy_from_query,
    copy_from_table,
    copy_records_to_table,
    copy_to_table,
)
from wellwon_db.client._cursor import CursorBlock, RowStream, check_prefetch
from wellwon_db.client._notifications import Notifications
from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._transaction import IsolationLevel, TransactionScope
from wellwon_db.config._registry import Database
from wellwon_db.pool._pool import Connection
from wellwon_db.testing._fake_streams import (
    FakeCursorBlock,
    FakeListeners,
    FakeRowStream,
    fake_copy,
    fake_rows,
)
from wellwon_db.testing._scripting import FakeCall, Scripted, value_of

__all__ = [
    "FakeCachedQueries",
    "FakeDatabaseClient",
    "FakeMainDB",
    "FakeReferenceDB",
    "FakeTransactionScope",
]

_T = TypeVar("_T")


class FakeDatabaseClient(Scripted, DatabaseClient):
    """A client that answers from a script and records every call.

    ``script(query, result)`` says what a query returns. ``query`` is the
    exact text (whitespace-insensitive) or a compiled regex; ``result`` is a
    list of row dicts (``fetch`` gets them all, ``fetchrow`` the first,
    ``fetchval`` its first value), a scalar (``fetchval``), a status string
    (``execute``), an exception instance or class (raised), or a callable
    taking the query's args and returning one of those. Unscripted queries return no
    rows (``strict=True``: raise ``UnscriptedQueryError``). ``calls`` lists
    what was done, transactions included. ``notify()`` and
    ``simulate_reconnect()`` feed its ``listen()`` blocks.
    """

    __slots__ = ("_listeners", "_scripts", "calls", "strict")

    def __init__(self, *, strict: bool = False) -> None:
        spec = type(self).spec
        super().__init__(PoolSlot(spec.name if spec is not None else Database.MAIN))
        self._init_scripts(strict)
        self._listeners = FakeListeners()

    # -- the query API -------------------------------------------------------

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """Scripted rows (``[]`` when unscripted), each a ``model`` when given."""
        return fake_rows(self, "fetch", query, args, False, model, record_class)

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """The first scripted row (a ``model`` when given), or ``None``."""
        rows = fake_rows(self, "fetchrow", query, args, False, model, record_class)
        return rows[0] if rows else None

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """The scripted value (or column ``column`` of the first scripted row)."""
        return value_of(self._answer("fetchval", query, args, False), column)

    async def execute(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> str:
        """The scripted status, or ``"OK"``."""
        result = self._answer("execute", query, args, False)
        return result if isinstance(result, str) else "OK"

    async def executemany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> None:
        """Records one call per argument tuple."""
        for row in args:
            self._answer("executemany", query, tuple(row), False)

    def transaction(
        self,
        *,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> AbstractAsyncContextManager[TransactionScope]:
        """Records ``begin`` and ``commit`` (or ``rollback`` when the block raises)."""
        return self._transaction(isolation, readonly, deferrable)

    @asynccontextmanager
    async def _transaction(
        self, isolation: IsolationLevel | None, readonly: bool, deferrable: bool
    ) -> AsyncIterator[TransactionScope]:
        options = (("isolation", isolation), ("readonly", readonly), ("deferrable", deferrable))
        self.calls.append(FakeCall("begin", args=options, in_transaction=True))
        try:
            yield FakeTransactionScope(self)
        except BaseException:
            self.calls.append(FakeCall("rollback", in_transaction=True))
            raise
        self.calls.append(FakeCall("commit", in_transaction=True))

    async def run_in_transaction(
        self,
        fn: Callable[..., Awaitable[_T]],
        *args: Any,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
        attempts: int | None = None,
    ) -> _T:
        """Runs ``fn(scope, *args)`` once inside a recorded fake transaction."""
        async with self.transaction(
            isolation=isolation, readonly=readonly, deferrable=deferrable
        ) as scope:
            return await fn(scope, *args)

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
        """A recorded fake transaction streaming the rows scripted for ``query``."""
        check_prefetch(prefetch)

        def stream(scope: TransactionScope) -> RowStream[Any]:
            return FakeRowStream(fake_rows(self, "cursor", query, args, True, model, record_class))

        return FakeCursorBlock(self._transaction(isolation, readonly, False), stream)

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
        """Records the call with the records as its args; ``COPY <n>`` unless scripted."""
        call = copy_records_to_table(table_name, records, columns, schema_name, where)
        return await fake_copy(self, call, False)

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
        """Records the call (``source`` unread); ``COPY 0`` unless scripted."""
        call = copy_to_table(table_name, source, columns, schema_name, options)
        return await fake_copy(self, call, False)

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
        """Records the call (nothing written to ``output``); ``COPY 0`` unless scripted."""
        call = copy_from_table(table_name, output, columns, schema_name, options)
        return await fake_copy(self, call, False)

    async def copy_from_query(
        self, query: str, *args: Any, output: Any, timeout: float | None = None, **options: Any
    ) -> str:
        """Records the call (nothing written to ``output``); ``COPY 0`` unless scripted."""
        return await fake_copy(self, copy_from_query(query, args, output, options), False)

    def listen(
        self, channel: str, *channels: str, max_queued: int = 10_000
    ) -> AbstractAsyncContextManager[Notifications]:
        """A ``listen`` block fed by :meth:`notify` (recorded as a ``listen`` call)."""
        return self._listeners.listen(self, (channel, *channels), max_queued)

    def notify(self, channel: str, payload: str = "", *, pid: int = 0) -> int:
        """Deliver a notification to the open ``listen`` blocks on ``channel``; how many."""
        return self._listeners.notify(channel, payload, pid)

    def simulate_reconnect(self) -> None:
        """Put a ``NotificationGap("reconnected")`` in every open ``listen`` block."""
        self._listeners.reconnect()

    @property
    def cached(self) -> CachedQueries:
        """The cached view, answered by the same scripts (no cache, no listener)."""
        return FakeCachedQueries(self)

    def acquire(self) -> AbstractAsyncContextManager[Connection]:
        """Not available: a fake has no raw connections."""
        raise NotImplementedError(
            f"{type(self).__name__} has no raw connections; tests that need acquire() "
            "should run against a real server (wellwon_db.testing.PostgresServer)"
        )


class FakeTransactionScope(TransactionScope):
    """The scope a fake transaction yields: the same query API, recorded as in-transaction."""

    __slots__ = ("_client",)

    def __init__(self, client: Scripted) -> None:  # no connection: nothing to call
        self._client = client

    @property
    def connection(self) -> Connection:
        """Not available: a fake has no raw connections."""
        raise NotImplementedError(f"{type(self).__name__} has no raw connection")

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """Scripted rows, each a ``model`` when given."""
        return fake_rows(self._client, "fetch", query, args, True, model, record_class)

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """The first scripted row (a ``model`` when given), or ``None``."""
        rows = fake_rows(self._client, "fetchrow", query, args, True, model, record_class)
        return rows[0] if rows else None

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """The scripted value."""
        return value_of(self._client._answer("fetchval", query, args, True), column)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """The scripted status, or ``"OK"``."""
        result = self._client._answer("execute", query, args, True)
        return result if isinstance(result, str) else "OK"

    async def executemany(
        self, query: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Records one call per argument tuple."""
        for row in args:
            self._client._answer("executemany", query, tuple(row), True)

    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> RowStream[Any]:
        """The rows scripted for ``query`` (recorded as a ``cursor`` call, in the transaction)."""
        check_prefetch(prefetch)
        return FakeRowStream(
            fake_rows(self._client, "cursor", query, args, True, model, record_class)
        )

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
        """Records the call with the records as its args; ``COPY <n>`` unless scripted."""
        call = copy_records_to_table(table_name, records, columns, schema_name, where)
        return await fake_copy(self._client, call, True)

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
        """Records the call (``source`` unread); ``COPY 0`` unless scripted."""
        call = copy_to_table(table_name, source, columns, schema_name, options)
        return await fake_copy(self._client, call, True)

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
        """Records the call (nothing written to ``output``); ``COPY 0`` unless scripted."""
        call = copy_from_table(table_name, output, columns, schema_name, options)
        return await fake_copy(self._client, call, True)

    async def copy_from_query(
        self, query: str, *args: Any, output: Any, timeout: float | None = None, **options: Any
    ) -> str:
        """Records the call (nothing written to ``output``); ``COPY 0`` unless scripted."""
        call = copy_from_query(query, args, output, options)
        return await fake_copy(self._client, call, True)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionScope]:
        """Records ``savepoint`` and ``release_savepoint`` (or ``rollback_to_savepoint``)."""
        calls = self._client.calls
        calls.append(FakeCall("savepoint", in_transaction=True))
        try:
            yield self
        except BaseException:
            calls.append(FakeCall("rollback_to_savepoint", in_transaction=True))
            raise
        calls.append(FakeCall("release_savepoint", in_transaction=True))


class FakeCachedQueries(CachedQueries):
    """``fake.cached``: the fake's own scripts answer (recorded as ``fetch`` and so on)."""

    __slots__ = ()

    def __init__(self, fake: FakeDatabaseClient) -> None:
        super().__init__(fake, fake._slot)

    @property
    def _fake(self) -> FakeDatabaseClient:
        fake = self._client
        assert isinstance(fake, FakeDatabaseClient)
        return fake

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        tables: Iterable[str] | None = None,
    ) -> list[asyncpg.Record]:
        """Scripted rows."""
        rows: list[asyncpg.Record] = await self._fake.fetch(query, *args)
        return rows

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        tables: Iterable[str] | None = None,
    ) -> asyncpg.Record | None:
        """The first scripted row, or ``None``."""
        row: asyncpg.Record | None = await self._fake.fetchrow(query, *args)
        return row

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        tables: Iterable[str] | None = None,
    ) -> Any:
        """The scripted value."""
        return await self._fake.fetchval(query, *args, column=column)

    async def install_invalidation(self, *tables: str | Sequence[str]) -> None:
        """Records an ``install_invalidation`` call with the tables as its args."""
        self._fake.calls.append(FakeCall("install_invalidation", args=tuple(tables)))


class FakeMainDB(FakeDatabaseClient, MainDB):
    """A fake ``MainDB``."""

    __slots__ = ()


class FakeReferenceDB(FakeDatabaseClient, ReferenceDB):
    """A fake ``ReferenceDB``."""

    __slots__ = ()
