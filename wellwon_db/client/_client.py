"""The query API: ``DatabaseClient`` and the typed ``MainDB``/``ReferenceDB``.

Every call goes through the database's circuit breaker, takes a connection
from its own pool, runs one statement and hands the connection back (reset
first only when the statement changed session state, see ``_session.py``).
Connection-level failures become ``DatabaseUnavailableError``; PostgreSQL
errors reach the caller unchanged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from wellwon_db.client._cached import CachedQueries
from wellwon_db.client._declared import DeclaredClient
from wellwon_db.client._guarded import record_outcome, run_guarded
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

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> list[Record]:
        """Run ``query`` with ``args``; all rows."""
        return await run_guarded(self._slot, fetch_call, query, args, timeout, idempotent)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> Record | None:
        """Run ``query`` with ``args``; the first row or ``None``."""
        row: Record | None = await run_guarded(
            self._slot, fetchrow_call, query, args, timeout, idempotent
        )
        return row

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
