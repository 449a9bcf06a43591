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
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import asyncpg
from dependency_injector import providers

from wellwon_db.client._client import DatabaseClient, MainDB, ReferenceDB
from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._transaction import IsolationLevel, TransactionScope
from wellwon_db.config._registry import Database, database_name
from wellwon_db.di._providers import ContainerLike, database_members
from wellwon_db.errors import ConfigurationError
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
        spec = type(self).spec
        super().__init__(PoolSlot(spec.name if spec is not None else Database.MAIN))
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


def fake_client_class(client_class: type[DatabaseClient]) -> type[FakeDatabaseClient]:
    """The fake of a typed client class: a subclass of both, so it passes where the real one is
    expected. ``FakeMainDB`` and ``FakeReferenceDB`` for the built-in ones; made (once) for others.
    """
    if issubclass(client_class, FakeDatabaseClient):
        return client_class
    made = _FAKE_CLASSES.get(client_class)
    if made is None:
        made = type(
            f"Fake{client_class.__name__}",
            (FakeDatabaseClient, client_class),
            {"__slots__": (), "__doc__": f"A fake ``{client_class.__name__}``."},
        )
        _FAKE_CLASSES[client_class] = made
    return made


_FAKE_CLASSES: dict[type[DatabaseClient], type[FakeDatabaseClient]] = {
    MainDB: FakeMainDB,
    ReferenceDB: FakeReferenceDB,
}


class FakeDatabases:
    """The fakes :func:`override_with_fakes` put in place, one per database.

    ``fakes.main`` and ``fakes.reference`` are typed; any database's fake is
    ``fakes["audit"]`` (or ``fakes.for_database("audit")``, or ``fakes.audit``).
    Fakes passed in (``FakeDatabases(main=my_fake)``) are used as they are;
    the others are made when the container's databases are known.
    """

    def __init__(
        self,
        main: FakeMainDB | None = None,
        reference: FakeReferenceDB | None = None,
        **others: FakeDatabaseClient,
    ) -> None:
        self._fakes: dict[str, FakeDatabaseClient] = {}
        for name, fake in {"main": main, "reference": reference, **others}.items():
            if fake is not None:
                self._fakes[str(database_name(name))] = fake

    @property
    def main(self) -> FakeMainDB:
        """The main database's fake."""
        fake = self.for_database(Database.MAIN)
        assert isinstance(fake, FakeMainDB)
        return fake

    @property
    def reference(self) -> FakeReferenceDB:
        """The reference database's fake."""
        fake = self.for_database(Database.REFERENCE)
        assert isinstance(fake, FakeReferenceDB)
        return fake

    def for_database(self, database: Database | str) -> FakeDatabaseClient:
        """The fake of ``database``; ``KeyError`` when it has none."""
        name = str(database_name(database))
        if name not in self._fakes and name in _BUILT_IN:
            self._fakes[name] = _BUILT_IN[name]()
        try:
            return self._fakes[name]
        except KeyError:
            raise KeyError(
                f"no fake for the {name} database (fakes for: {', '.join(self._fakes)})"
            ) from None

    def __getitem__(self, database: Database | str) -> FakeDatabaseClient:
        return self.for_database(database)

    def __getattr__(self, name: str) -> FakeDatabaseClient:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.for_database(name)
        except (KeyError, ConfigurationError):
            raise AttributeError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._fakes)

    def ensure(
        self, database: Database | str, client_class: type[DatabaseClient]
    ) -> FakeDatabaseClient:
        """The fake of ``database``, made from ``client_class`` if there is none yet."""
        name = str(database_name(database))
        if name not in self._fakes:
            self._fakes[name] = fake_client_class(client_class)()
        return self._fakes[name]


_BUILT_IN: dict[str, type[FakeDatabaseClient]] = {"main": FakeMainDB, "reference": FakeReferenceDB}


@contextmanager
def override_with_fakes(
    container: ContainerLike, fakes: FakeDatabases | None = None
) -> Iterator[FakeDatabases]:
    """Override every database client of ``container`` with a fake and its pool with ``None``.

    ``container`` is a ``DatabaseContainer``, an embedded one (``app.db``),
    or an application container holding database providers (an application's
    own databases included). Inside the block no pool opens, whatever the
    environment says; on leaving it the real providers are back.
    """
    fakes = fakes or FakeDatabases()
    overridden: list[providers.Provider[Any]] = []
    try:
        for member in database_members(container):
            if member.client is not None:
                client_class = _provided_class(member.client)
                fake = fakes.ensure(member.name, client_class)
                member.client.override(providers.Object(fake))
                overridden.append(member.client)
            member.pool.override(providers.Object(None))
            overridden.append(member.pool)
        yield fakes
    finally:
        for provider in reversed(overridden):
            provider.reset_last_overriding()


def _provided_class(provider: providers.Provider[Any]) -> type[DatabaseClient]:
    provides = getattr(provider, "provides", None)
    if isinstance(provides, type) and issubclass(provides, DatabaseClient):
        return provides
    return DatabaseClient
