"""The query API: ``DatabaseClient``, the typed ``MainDB``/``ReferenceDB``, transactions.

Every call takes a connection from the client's own pool, runs one statement
and hands the connection back (reset first only when the statement changed
session state, see ``_session.py``). ``transaction()`` holds one connection
for the block. Connection-level failures become ``DatabaseUnavailableError``;
PostgreSQL errors reach the caller unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import asyncpg

from wellwon_db._database import Database
from wellwon_db._pool import Connection, DatabasePool, PoolSlot, translate_error
from wellwon_db._session import SessionEffect, session_effect
from wellwon_db.errors import ConfigurationError

__all__ = [
    "DatabaseClient",
    "IsolationLevel",
    "MainDB",
    "QueryRunner",
    "ReferenceDB",
    "TransactionScope",
]

_T = TypeVar("_T")
Record = asyncpg.Record
IsolationLevel = Literal["read_committed", "repeatable_read", "serializable"]


class QueryRunner(Protocol):
    """What clients, transaction scopes and the shipped fakes all offer."""

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Record]:
        """Run ``query``; all rows."""
        ...

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Record | None:
        """Run ``query``; the first row or ``None``."""
        ...

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run ``query``; one value of the first row, or ``None``."""
        ...

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run ``query``; the command status (``"INSERT 0 1"``)."""
        ...

    async def executemany(
        self, query: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run ``query`` once per argument tuple, atomically."""
        ...


# Module-level calls so that the per-query path allocates no closures.
def _fetch(c: Connection, q: str, a: tuple[Any, ...], t: float | None) -> Awaitable[list[Record]]:
    return c.fetch(q, *a, timeout=t)


def _fetchrow(c: Connection, q: str, a: tuple[Any, ...], t: float | None) -> Awaitable[Any]:
    return c.fetchrow(q, *a, timeout=t)


def _execute(c: Connection, q: str, a: tuple[Any, ...], t: float | None) -> Awaitable[str]:
    return c.execute(q, *a, timeout=t)


def _executemany(c: Connection, q: str, a: Any, t: float | None) -> Awaitable[None]:
    return c.executemany(q, a, timeout=t)


class DatabaseClient:
    """Queries against one database's pool.

    Bind it to a :class:`DatabasePool`; the container does this. Calls raise
    ``PoolClosedError`` when the pool is not open, ``PoolTimeoutError`` when
    no connection frees up within the acquire timeout,
    ``DatabaseUnavailableError`` when the server cannot be reached,
    ``TimeoutError`` when a statement exceeds its timeout (the server cancels
    it), and asyncpg's ``PostgresError`` subclasses for errors of the SQL.
    ``timeout`` arguments are seconds and override the pool's command timeout.
    """

    #: The database a subclass is bound to; ``None`` accepts any pool.
    database_kind: ClassVar[Database | None] = None

    __slots__ = ("_database", "_slot")

    def __init__(self, pool: DatabasePool | PoolSlot) -> None:
        expected = type(self).database_kind
        if isinstance(pool, DatabasePool):
            slot = PoolSlot(pool.database)
            slot.pool = pool
        elif isinstance(pool, PoolSlot):
            slot = pool
        else:
            raise TypeError(
                f"{type(self).__name__} needs a DatabasePool or PoolSlot, got "
                f"{type(pool).__name__}; in tests, override the client with a "
                "wellwon_db.testing fake instead"
            )
        if expected is not None and slot.database is not expected:
            raise ConfigurationError(
                f"{type(self).__name__} is for the {expected.value} database but was given "
                f"the {slot.database.value} pool; check the container's providers"
            )
        self._slot = slot
        self._database = slot.database

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._slot.pool or self._database.value + ' (not open)'!r}>"
        )

    @property
    def database(self) -> Database:
        """The logical database this client queries."""
        return self._database

    @property
    def pool(self) -> DatabasePool:
        """The open pool this client draws from; ``PoolClosedError`` when none is open."""
        return self._slot.get()

    async def _run(
        self,
        call: Callable[[Connection, str, Any, float | None], Awaitable[_T]],
        query: str,
        args: Any,
        timeout: float | None,
    ) -> _T:
        pool = self._slot.get()
        connection = await pool.acquire_connection()
        effect = session_effect(query)
        try:
            return await call(connection, query, args, timeout)
        except BaseException as exc:
            error = translate_error(exc, self._database, "running a query")
            if error is exc:
                raise
            raise error from exc
        finally:
            await pool.release_connection(connection, effect)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Record]:
        """Run ``query`` with ``args``; all rows."""
        return await self._run(_fetch, query, args, timeout)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Record | None:
        """Run ``query`` with ``args``; the first row or ``None``."""
        row: Record | None = await self._run(_fetchrow, query, args, timeout)
        return row

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run ``query`` with ``args``; value ``column`` of the first row, or ``None``."""
        row: Record | None = await self._run(_fetchrow, query, args, timeout)
        return None if row is None else row[column]

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run ``query`` with ``args``; the command status such as ``"UPDATE 3"``.

        Without ``args``, ``query`` may hold several statements.
        """
        return await self._run(_execute, query, args, timeout)

    async def executemany(
        self, query: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run ``query`` once per tuple in ``args``; all or nothing."""
        await self._run(_executemany, query, args, timeout)

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
        ``scope.transaction()`` nests a savepoint.
        """
        return Transaction(self._slot, isolation, readonly, deferrable)

    def acquire(self) -> AbstractAsyncContextManager[Connection]:
        """A raw asyncpg connection for the block; its session is reset afterwards."""
        return self._slot.get().acquire()


class MainDB(DatabaseClient):
    """Client of the main database."""

    __slots__ = ()
    database_kind: ClassVar[Database | None] = Database.MAIN


class ReferenceDB(DatabaseClient):
    """Client of the reference database (slowly changing lookup data)."""

    __slots__ = ()
    database_kind: ClassVar[Database | None] = Database.REFERENCE


class TransactionScope:
    """The query methods inside a transaction, all on its one connection.

    ``transaction()`` opens a savepoint: rolled back alone when its block
    raises. Using the scope after its block ended raises asyncpg's
    ``InterfaceError`` (the connection went back to the pool).
    """

    __slots__ = ("_connection", "_database", "_owner")

    def __init__(self, connection: Connection, database: Database, owner: Transaction) -> None:
        self._connection = connection
        self._database = database
        self._owner = owner

    @property
    def connection(self) -> Connection:
        """The raw connection; using it marks the session for a reset on release."""
        self._owner.effect = max(self._owner.effect, SessionEffect.RESET)
        return self._connection

    async def _run(
        self,
        call: Callable[[Connection, str, Any, float | None], Awaitable[_T]],
        query: str,
        args: Any,
        timeout: float | None,
    ) -> _T:
        effect = session_effect(query)
        if effect > self._owner.effect:
            self._owner.effect = effect
        try:
            return await call(self._connection, query, args, timeout)
        except BaseException as exc:
            error = translate_error(exc, self._database, "running a query in a transaction")
            if error is exc:
                raise
            raise error from exc

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Record]:
        """Run ``query`` with ``args``; all rows."""
        return await self._run(_fetch, query, args, timeout)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Record | None:
        """Run ``query`` with ``args``; the first row or ``None``."""
        row: Record | None = await self._run(_fetchrow, query, args, timeout)
        return row

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run ``query`` with ``args``; value ``column`` of the first row, or ``None``."""
        row: Record | None = await self._run(_fetchrow, query, args, timeout)
        return None if row is None else row[column]

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run ``query`` with ``args``; the command status."""
        return await self._run(_execute, query, args, timeout)

    async def executemany(
        self, query: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run ``query`` once per tuple in ``args``."""
        await self._run(_executemany, query, args, timeout)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionScope]:
        """A savepoint for the block: released on success, rolled back on error."""
        async with self._connection.transaction():
            yield self


class Transaction:
    """``async with client.transaction(...) as tx:``; see :meth:`DatabaseClient.transaction`."""

    __slots__ = ("_connection", "_options", "_pool", "_slot", "_tx", "effect")

    def __init__(
        self,
        slot: PoolSlot,
        isolation: IsolationLevel | None,
        readonly: bool,
        deferrable: bool,
    ) -> None:
        self._slot = slot
        self._pool: DatabasePool | None = None
        self._options = (isolation, readonly, deferrable)
        self._connection: Connection | None = None
        self._tx: Any = None
        self.effect = SessionEffect.NONE

    async def __aenter__(self) -> TransactionScope:
        if self._connection is not None:
            raise RuntimeError("a Transaction object can be entered only once")
        pool = self._pool = self._slot.get()
        connection = await pool.acquire_connection()
        isolation, readonly, deferrable = self._options
        try:
            tx = connection.transaction(
                isolation=isolation, readonly=readonly, deferrable=deferrable
            )
            await tx.__aenter__()
        except BaseException as exc:
            await pool.release_connection(connection, SessionEffect.NONE)
            error = translate_error(exc, pool.database, "starting a transaction")
            if error is exc:
                raise
            raise error from exc
        self._connection = connection
        self._tx = tx
        return TransactionScope(connection, pool.database, self)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        connection, pool = self._connection, self._pool
        if connection is None or pool is None:
            raise RuntimeError("Transaction.__aexit__ called without __aenter__")
        try:
            await self._tx.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            translated = translate_error(error, pool.database, "ending a transaction")
            if translated is error:
                raise
            raise translated from error
        finally:
            await pool.release_connection(connection, self.effect)
