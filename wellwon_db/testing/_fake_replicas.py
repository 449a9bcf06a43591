"""Fakes of the read-only (replica) clients: ``FakeMainReplicaDB``, ``FakeReferenceReplicaDB``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg

from wellwon_db.client._readonly import MainReplicaDB, ReadOnlyClient, ReferenceReplicaDB
from wellwon_db.client._replicas import ReplicaSet
from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._transaction import IsolationLevel, TransactionScope
from wellwon_db.config._registry import Database
from wellwon_db.testing._fake_clients import FakeTransactionScope
from wellwon_db.testing._fake_streams import fake_rows
from wellwon_db.testing._scripting import FakeCall, Scripted, value_of

__all__ = ["FakeMainReplicaDB", "FakeReadOnlyClient", "FakeReferenceReplicaDB"]


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
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
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
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """The first scripted row (a ``model`` when given), or ``None``."""
        rows = fake_rows(self, "fetchrow", query, args, False, model, record_class)
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
