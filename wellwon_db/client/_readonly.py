"""Read-only clients of replica databases: ``MainReplicaDB`` and ``ReferenceReplicaDB``.

Each read goes where :meth:`ReplicaSet.choose` says: a replica that keeps
up (and has replayed this context's own writes), else the primary. A read
that cannot be had from a replica (refused, broken, breaker open, no
connection in time) is run on the primary instead, and that replica is not
used again until the background measurement sees it answer: a dead replica
costs the caller nothing but the failed attempt. If the primary fails too,
the caller gets its error (``DatabaseUnavailableError`` and friends).

There is no ``execute``/``executemany``: writes go through the primary's client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, overload

import asyncpg

from wellwon_db.client._declared import DeclaredClient
from wellwon_db.client._guarded import StatementCall, run_guarded
from wellwon_db.client._replicas import ReplicaSet
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
    fetch_call,
    fetchrow_call,
)
from wellwon_db.config._registry import MAIN_REPLICA, REFERENCE_REPLICA, DatabaseName
from wellwon_db.errors import ConfigurationError, DatabaseUnavailableError, PoolTimeoutError
from wellwon_db.telemetry._telemetry import record_route

__all__ = ["MainReplicaDB", "ReadOnlyClient", "ReferenceReplicaDB"]

_T = TypeVar("_T")
_M = TypeVar("_M")
_R = TypeVar("_R", bound=asyncpg.Record)
Record = asyncpg.Record

#: Failures of a replica after which the read is run on the primary instead.
_REPLICA_FAILURES = (DatabaseUnavailableError, PoolTimeoutError)


class ReadOnlyClient(DeclaredClient):
    """Reads from a replica database's replicas, or its primary (see the module docstring).

    ``fetch``, ``fetchrow`` and ``fetchval`` as on ``DatabaseClient``;
    ``transaction()`` is always read-only. A subclass names its replica
    database: ``class AuditReplicaDB(ReadOnlyClient, database=AUDIT_REPLICA)``.
    """

    __slots__ = ("_replicas",)

    def __init__(self, replicas: ReplicaSet) -> None:
        expected = type(self).spec
        if not isinstance(replicas, ReplicaSet):
            raise TypeError(
                f"{type(self).__name__} needs a ReplicaSet, got {type(replicas).__name__}; in "
                "tests, override the client with a wellwon_db.testing fake instead"
            )
        if expected is not None and replicas.database != expected.name:
            raise ConfigurationError(
                f"{type(self).__name__} is for the {expected.name} database but was given the "
                f"replicas of {replicas.database}; check the container's providers"
            )
        self._replicas = replicas

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._replicas!r}>"

    @property
    def database(self) -> DatabaseName:
        """The replica database this client reads (``main_replica``)."""
        return self._replicas.database

    @property
    def replicas(self) -> ReplicaSet:
        """The replicas, their state and lag, and the primary it falls back to."""
        return self._replicas

    async def _read(
        self, call: StatementCall[_T], query: str, args: Any, timeout: float | None
    ) -> _T:
        replicas = self._replicas
        slot, reason = replicas.choose()
        if slot is replicas.primary:
            record_route(replicas.database, "primary", reason)
            return await run_guarded(slot, call, query, args, timeout, False)
        try:
            result = await run_guarded(slot, call, query, args, timeout, False)
        except _REPLICA_FAILURES as exc:
            replicas.failed(slot, exc)
            record_route(replicas.database, "primary", "failover")
            return await run_guarded(replicas.primary, call, query, args, timeout, False)
        record_route(replicas.database, "replica", reason)
        return result

    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[Record]: ...
    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, model: type[_M]
    ) -> list[_M]: ...
    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, record_class: type[_R]
    ) -> list[_R]: ...
    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> list[Any]:
        """Run ``query`` with ``args`` on a replica (or the primary); all rows.

        ``model`` and ``record_class`` as for ``DatabaseClient.fetch``.
        """
        if model is None and record_class is None:
            return await self._read(fetch_call, query, args, timeout)
        check_row_options(model, record_class)
        call = fetch_call if record_class is None else fetch_call_for(record_class)
        rows: list[Any] = await self._read(call, query, args, timeout)
        return rows if model is None else map_rows(rows, model)

    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Record | None: ...
    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, model: type[_M]
    ) -> _M | None: ...
    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, record_class: type[_R]
    ) -> _R | None: ...
    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """Run ``query`` with ``args``; the first row (as ``model`` ...) or ``None``."""
        if model is None and record_class is None:
            return await self._read(fetchrow_call, query, args, timeout)
        check_row_options(model, record_class)
        call = fetchrow_call if record_class is None else fetchrow_call_for(record_class)
        row = await self._read(call, query, args, timeout)
        return row if model is None else map_row(row, model)

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run ``query`` with ``args``; value ``column`` of the first row, or ``None``."""
        row: Record | None = await self._read(fetchrow_call, query, args, timeout)
        return None if row is None else row[column]

    def transaction(
        self, *, isolation: IsolationLevel | None = None, deferrable: bool = False
    ) -> AbstractAsyncContextManager[TransactionScope]:
        """A read-only transaction on one server (a replica, or the primary) for the block.

        When the replica cannot start it, it starts on the primary; a failure
        once it runs is the caller's, as for any transaction.
        """
        return self._transaction(isolation, deferrable)

    @asynccontextmanager
    async def _transaction(
        self, isolation: IsolationLevel | None, deferrable: bool
    ) -> AsyncIterator[TransactionScope]:
        replicas = self._replicas
        slot, reason = replicas.choose()
        transaction = Transaction(slot, isolation, True, deferrable)
        try:
            scope = await transaction.__aenter__()
        except _REPLICA_FAILURES as exc:
            if slot is replicas.primary:
                raise
            replicas.failed(slot, exc)
            slot, reason = replicas.primary, "failover"
            transaction = Transaction(slot, isolation, True, deferrable)
            scope = await transaction.__aenter__()
        record_route(replicas.database, _target(replicas, slot), reason)
        try:
            yield scope
        except BaseException as exc:
            await transaction.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await transaction.__aexit__(None, None, None)


def _target(replicas: ReplicaSet, slot: PoolSlot) -> str:
    return "primary" if slot is replicas.primary else "replica"


class MainReplicaDB(ReadOnlyClient, database=MAIN_REPLICA):
    """Read-only client of the main database's replicas (or main itself when none keeps up)."""

    __slots__ = ()


class ReferenceReplicaDB(ReadOnlyClient, database=REFERENCE_REPLICA):
    """Read-only client of the reference database's replicas."""

    __slots__ = ()
