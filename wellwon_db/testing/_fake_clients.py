"""Fake clients for application tests: scripted results, recorded calls, no database.

``FakeMainDB`` is a ``MainDB``, ``FakeReferenceDB`` a ``ReferenceDB``,
``FakeMainReplicaDB`` a ``MainReplicaDB``: they pass wherever the real
clients are expected, for mypy too. Scripting is in ``_scripting.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from wellwon_db.client._cached import CachedQueries
from wellwon_db.client._client import DatabaseClient, MainDB, ReferenceDB
from wellwon_db.client._readonly import MainReplicaDB, ReadOnlyClient, ReferenceReplicaDB
from wellwon_db.client._replicas import ReplicaSet
from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._transaction import IsolationLevel, TransactionScope
from wellwon_db.config._registry import Database
from wellwon_db.pool._pool import Connection
from wellwon_db.testing._scripting import FakeCall, Scripted, rows_of, value_of

__all__ = [
    "FakeCachedQueries",
    "FakeDatabaseClient",
    "FakeMainDB",
    "FakeMainReplicaDB",
    "FakeReadOnlyClient",
    "FakeReferenceDB",
    "FakeReferenceReplicaDB",
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
    what was done, transactions included.
    """

    __slots__ = ("_scripts", "calls", "strict")

    def __init__(self, *, strict: bool = False) -> None:
        spec = type(self).spec
        super().__init__(PoolSlot(spec.name if spec is not None else Database.MAIN))
        self._init_scripts(strict)

    # -- the query API -------------------------------------------------------

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> list[asyncpg.Record]:
        """Scripted rows (``[]`` when unscripted)."""
        return rows_of(self._answer("fetch", query, args, False))

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> asyncpg.Record | None:
        """The first scripted row, or ``None``."""
        rows = rows_of(self._answer("fetchrow", query, args, False))
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
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        """Scripted rows."""
        return rows_of(self._client._answer("fetch", query, args, True))

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> asyncpg.Record | None:
        """The first scripted row, or ``None``."""
        rows = rows_of(self._client._answer("fetchrow", query, args, True))
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
        return await self._fake.fetch(query, *args)

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        tables: Iterable[str] | None = None,
    ) -> asyncpg.Record | None:
        """The first scripted row, or ``None``."""
        return await self._fake.fetchrow(query, *args)

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


class FakeReadOnlyClient(Scripted, ReadOnlyClient):
    """A fake read-only (replica) client: ``script()`` and ``calls`` as on the other fakes.

    Reads are recorded with ``in_transaction`` false, or true inside its
    (read-only) ``transaction()``, whose ``begin`` call records the options.
    """

    __slots__ = ("_scripts", "calls", "strict")

    def __init__(self, *, strict: bool = False) -> None:
        spec = type(self).spec
        name = spec.name if spec is not None else Database.MAIN_REPLICA
        primary = spec.replica_of if spec is not None and spec.replica_of else Database.MAIN
        super().__init__(ReplicaSet(name, PoolSlot(primary)))
        self._init_scripts(strict)

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        """Scripted rows (``[]`` when unscripted)."""
        return rows_of(self._answer("fetch", query, args, False))

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> asyncpg.Record | None:
        """The first scripted row, or ``None``."""
        rows = rows_of(self._answer("fetchrow", query, args, False))
        return rows[0] if rows else None

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """The scripted value (or column ``column`` of the first scripted row)."""
        return value_of(self._answer("fetchval", query, args, False), column)

    def transaction(
        self, *, isolation: IsolationLevel | None = None, deferrable: bool = False
    ) -> AbstractAsyncContextManager[TransactionScope]:
        """Records ``begin`` (read-only) and ``commit`` (or ``rollback``)."""
        return self._fake_transaction(isolation, deferrable)

    @asynccontextmanager
    async def _fake_transaction(
        self, isolation: IsolationLevel | None, deferrable: bool
    ) -> AsyncIterator[TransactionScope]:
        options = (("isolation", isolation), ("readonly", True), ("deferrable", deferrable))
        self.calls.append(FakeCall("begin", args=options, in_transaction=True))
        try:
            yield FakeTransactionScope(self)
        except BaseException:
            self.calls.append(FakeCall("rollback", in_transaction=True))
            raise
        self.calls.append(FakeCall("commit", in_transaction=True))


class FakeMainReplicaDB(FakeReadOnlyClient, MainReplicaDB):
    """A fake ``MainReplicaDB``."""

    __slots__ = ()


class FakeReferenceReplicaDB(FakeReadOnlyClient, ReferenceReplicaDB):
    """A fake ``ReferenceReplicaDB``."""

    __slots__ = ()
