"""Fake clients for application tests: scripted results, recorded calls, no database.

``FakeMainDB`` is a ``MainDB`` and ``FakeReferenceDB`` a ``ReferenceDB``, so
they pass wherever the real clients are expected, for mypy too.
:func:`override_with_fakes` swaps both into a container in one line and
overrides the pools so that no connection is ever opened.
"""

from __future__ import annotations

import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import asyncpg
from dependency_injector import providers

from wellwon_db.client._client import DatabaseClient, MainDB, ReferenceDB
from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._transaction import IsolationLevel, TransactionScope
from wellwon_db.config._database import Database
from wellwon_db.di._container import ContainerLike
from wellwon_db.pool._pool import Connection

__all__ = [
    "FakeCall",
    "FakeDatabaseClient",
    "FakeDatabases",
    "FakeMainDB",
    "FakeRecord",
    "FakeReferenceDB",
    "FakeTransactionScope",
    "UnscriptedQueryError",
    "override_with_fakes",
]

_T = TypeVar("_T")
Result = Any
Matcher = str | re.Pattern[str]


def _normalise(query: str) -> str:
    return " ".join(query.split())


class FakeRecord:
    """A row that behaves like ``asyncpg.Record``.

    ``row["name"]`` and ``row[0]`` index, ``row[0:2]`` slices to a tuple,
    iterating and unpacking give the values, ``"name" in row`` tests the
    names, ``keys()``/``values()``/``items()``/``get()`` and ``dict(row)``
    work as on a Record.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return self._values[key]
        return tuple(self._values.values())[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values.values())

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FakeRecord):
            return self._values == other._values
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def keys(self) -> Iterator[str]:
        """The column names."""
        return iter(self._values)

    def values(self) -> Iterator[Any]:
        """The values."""
        return iter(self._values.values())

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` pairs."""
        return iter(self._values.items())

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name``, or ``default``."""
        return self._values.get(name, default)

    def __repr__(self) -> str:
        inner = " ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"<FakeRecord {inner}>"


@dataclass(frozen=True)
class FakeCall:
    """One recorded call: ``method`` is ``fetch``, ``execute``, ``begin``, ``commit``, ..."""

    method: str
    query: str = ""
    args: tuple[Any, ...] = ()
    in_transaction: bool = False


@dataclass
class _Script:
    matcher: Matcher
    result: Result
    times: int | None

    def matches(self, query: str) -> bool:
        if isinstance(self.matcher, re.Pattern):
            return self.matcher.search(query) is not None
        return _normalise(self.matcher) == _normalise(query)


class UnscriptedQueryError(AssertionError):
    """A strict fake got a query nobody scripted."""


class FakeDatabaseClient(DatabaseClient):
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
        database = type(self).database_kind or Database.MAIN
        super().__init__(PoolSlot(database))
        self._scripts: list[_Script] = []
        self.calls: list[FakeCall] = []
        self.strict = strict

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self.calls)} calls>"

    # -- scripting -----------------------------------------------------------

    def script(self, query: Matcher, result: Result, *, times: int | None = None) -> None:
        """Answer ``query`` with ``result`` (``times`` times, or always); latest script wins.

        Raises ``ValueError`` when ``times`` is not a positive count.
        """
        if times is not None and times < 1:
            raise ValueError(f"times must be a positive count or None (always), got {times}")
        self._scripts.insert(0, _Script(query, result, times))

    @property
    def queries(self) -> list[str]:
        """The query texts run so far, in order."""
        return [call.query for call in self.calls if call.query]

    def reset(self) -> None:
        """Forget scripts and recorded calls."""
        self._scripts.clear()
        self.calls.clear()

    def _answer(self, method: str, query: str, args: tuple[Any, ...], in_tx: bool) -> Result:
        self.calls.append(FakeCall(method, query, args, in_tx))
        for script in self._scripts:
            if script.matches(query):
                if script.times is not None:
                    script.times -= 1
                    if script.times == 0:
                        self._scripts.remove(script)
                result = script.result
                if isinstance(result, type) and issubclass(result, BaseException):
                    raise result(f"scripted for {query!r}")
                if callable(result) and not isinstance(result, type):
                    result = result(*args)
                if isinstance(result, BaseException):
                    raise result
                return result
        if self.strict:
            raise UnscriptedQueryError(f"{type(self).__name__}: no script for {query!r}")
        return None

    # -- the query API -------------------------------------------------------

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> list[asyncpg.Record]:
        """Scripted rows (``[]`` when unscripted)."""
        return _rows(self._answer("fetch", query, args, False))

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> asyncpg.Record | None:
        """The first scripted row, or ``None``."""
        rows = _rows(self._answer("fetchrow", query, args, False))
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
        return _value(self._answer("fetchval", query, args, False), column)

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

    def acquire(self) -> AbstractAsyncContextManager[Connection]:
        """Not available: a fake has no raw connections."""
        raise NotImplementedError(
            f"{type(self).__name__} has no raw connections; tests that need acquire() "
            "should run against a real server (wellwon_db.testing.PostgresServer)"
        )


class FakeTransactionScope(TransactionScope):
    """The scope a fake transaction yields: the same query API, recorded as in-transaction."""

    __slots__ = ("_client",)

    def __init__(self, client: FakeDatabaseClient) -> None:  # no connection: nothing to call
        self._client = client

    @property
    def connection(self) -> Connection:
        """Not available: a fake has no raw connections."""
        raise NotImplementedError(f"{type(self).__name__} has no raw connection")

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        """Scripted rows."""
        return _rows(self._client._answer("fetch", query, args, True))

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> asyncpg.Record | None:
        """The first scripted row, or ``None``."""
        rows = _rows(self._client._answer("fetchrow", query, args, True))
        return rows[0] if rows else None

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """The scripted value."""
        return _value(self._client._answer("fetchval", query, args, True), column)

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


def _rows(result: Result) -> list[asyncpg.Record]:
    if result is None:
        return []
    if isinstance(result, Mapping):
        result = [result]
    if not isinstance(result, list):
        raise TypeError(f"a fetch needs rows (a list of dicts) scripted, got {result!r}")
    return [cast(asyncpg.Record, FakeRecord(row)) for row in result]


def _value(result: Result, column: int) -> Any:
    if isinstance(result, list | Mapping):
        rows = _rows(result)
        return rows[0][column] if rows else None
    return result


class FakeMainDB(FakeDatabaseClient, MainDB):
    """A fake ``MainDB``."""

    __slots__ = ()


class FakeReferenceDB(FakeDatabaseClient, ReferenceDB):
    """A fake ``ReferenceDB``."""

    __slots__ = ()


@dataclass
class FakeDatabases:
    """The fakes :func:`override_with_fakes` put in place."""

    main: FakeMainDB = field(default_factory=FakeMainDB)
    reference: FakeReferenceDB = field(default_factory=FakeReferenceDB)

    def for_database(self, database: Database | str) -> FakeDatabaseClient:
        """The fake of ``database``."""
        fake: FakeDatabaseClient = getattr(self, Database.parse(database).value)
        return fake


@contextmanager
def override_with_fakes(
    container: ContainerLike, fakes: FakeDatabases | None = None
) -> Iterator[FakeDatabases]:
    """Override ``container``'s clients with fakes and its pools with ``None``.

    ``container`` is a ``DatabaseContainer`` or an embedded one
    (``app.db``). Inside the block no pool opens, whatever the environment
    says; on leaving it the real providers are back.
    """
    fakes = fakes or FakeDatabases()
    overridden: list[providers.Provider[Any]] = []
    try:
        for database in Database:
            client_provider = getattr(container, f"{database.value}_db")
            pool_provider = getattr(container, f"{database.value}_pool")
            client_provider.override(providers.Object(fakes.for_database(database)))
            overridden.append(client_provider)
            pool_provider.override(providers.Object(None))
            overridden.append(pool_provider)
        yield fakes
    finally:
        for provider in reversed(overridden):
            provider.reset_last_overriding()
