"""Routing rules and ``ShardClient``: the query API of one logical shard.

Two task-local facts decide whether a call may go to a shard:

* the innermost ``sharded.key(key)`` block (its shard, and whether it is
  locked: a locked block refuses every other shard, as Rails'
  ``connected_to(shard:, lock: true)`` does);
* a transaction opened through a shard client and still open: a write to
  any other logical shard raises :class:`CrossShardWriteError` before
  anything is sent, since the two could not commit or roll back together.
  Reads of other shards stay allowed (they see their own snapshot).

Both live in context variables, so tasks started inside a block inherit them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from wellwon_db.client._client import DatabaseClient
from wellwon_db.client._transaction import IsolationLevel, TransactionScope
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import CrossShardWriteError, ShardRoutingError
from wellwon_db.pool._pool import Connection
from wellwon_db.pool._session import writes_data
from wellwon_db.shards._ids import NEXT_ID_SQL
from wellwon_db.shards._map import ShardKey
from wellwon_db.shards._set import PhysicalShard, ShardSet

__all__ = [
    "ShardClient",
    "check_fan_out",
    "check_route",
    "current_shard_key",
    "enter_scope",
    "leave_scope",
    "quote_literal",
    "scoped_shard",
]

_T = TypeVar("_T")
Record = asyncpg.Record


def quote_literal(value: str) -> str:
    """``value`` as an SQL string literal, as PostgreSQL's ``quote_literal`` writes it
    (``E'...'`` with doubled backslashes when it holds one, so it reads the same whatever
    ``standard_conforming_strings`` is)."""
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


@dataclass(frozen=True, slots=True)
class _Scope:
    """A ``sharded.key(...)`` block: its shard set, key, logical shard and lock."""

    owner: ShardSet
    key: ShardKey
    shard: int
    locked: bool


@dataclass(frozen=True, slots=True)
class _OpenTransaction:
    """A transaction opened through a shard client, open in this task."""

    owner: ShardSet
    shard: int
    database: DatabaseName


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "wellwon_db_shard_scope", default=None
)
_open_transaction: contextvars.ContextVar[_OpenTransaction | None] = contextvars.ContextVar(
    "wellwon_db_shard_transaction", default=None
)


def current_shard_key() -> ShardKey | None:
    """The key of the innermost ``sharded.key(...)`` block of this task, if any."""
    scope = _scope.get()
    return None if scope is None else scope.key


def check_route(owner: ShardSet, shard: int, database: DatabaseName, write: bool) -> None:
    """Raise unless this task may reach ``shard``: not locked elsewhere, no cross-shard write."""
    scope = _scope.get()
    if scope is not None and scope.locked and scope.owner is owner and scope.shard != shard:
        raise ShardRoutingError(
            f"this block is locked to logical shard {scope.shard} (key {scope.key!r}) by "
            f"sharded.key(..., lock=True); reaching logical shard {shard} inside it is "
            "refused: open the block with lock=False to allow other shards"
        )
    open_tx = _open_transaction.get()
    if write and open_tx is not None and open_tx.owner is owner and open_tx.shard != shard:
        raise CrossShardWriteError(
            f"a write to logical shard {shard} ({database}) while a transaction on logical "
            f"shard {open_tx.shard} ({open_tx.database}) is open in this task: the two would "
            "not commit or roll back together. Write through the transaction's scope when the "
            "rows belong to its shard, or after it ends (idempotently, or through an outbox "
            "table); there is no two-phase commit across shards (docs/sharding.md)",
            open_shard=open_tx.shard,
            shard=shard,
        )


class ShardClient:
    """The query API of one logical shard, on the physical database that holds it.

    ``fetch``, ``fetchrow``, ``fetchval``, ``execute``, ``executemany``,
    ``transaction()``, ``run_in_transaction()`` and ``acquire()`` behave as on
    :class:`DatabaseClient` (same errors, same retries), after the routing
    checks of the module docstring. ``shard`` is the logical shard,
    ``database`` the physical database, ``key`` the key it was made for
    (``None`` when made by shard number). Statements see every logical shard
    the database holds: filter by the key in SQL (with ``PARTITION BY HASH``
    tables, PostgreSQL prunes to the key's partition).
    """

    __slots__ = ("_owner", "_physical", "key", "shard")

    def __init__(
        self, owner: ShardSet, physical: PhysicalShard, shard: int, key: ShardKey | None
    ) -> None:
        self._owner = owner
        self._physical = physical
        self.shard = shard
        self.key = key

    def __repr__(self) -> str:
        return f"<ShardClient shard {self.shard} on {self._physical.database} key={self.key!r}>"

    @property
    def database(self) -> DatabaseName:
        """The physical database holding this logical shard."""
        return self._physical.database

    @property
    def client(self) -> DatabaseClient:
        """The physical database's client (no routing checks: use it knowingly)."""
        return self._physical.client

    def _route(self, query: str | None, *, write: bool | None = None) -> DatabaseClient:
        if write is None:
            # Parsing is only needed when a transaction of this task may be at stake.
            write = _open_transaction.get() is not None and (query is None or writes_data(query))
        check_route(self._owner, self.shard, self._physical.database, write)
        return self._physical.client

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> list[Record]:
        """Run ``query`` on this shard's database; all rows."""
        return await self._route(query).fetch(query, *args, timeout=timeout, idempotent=idempotent)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> Record | None:
        """Run ``query`` on this shard's database; the first row or ``None``."""
        return await self._route(query).fetchrow(
            query, *args, timeout=timeout, idempotent=idempotent
        )

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Run ``query`` on this shard's database; value ``column`` of the first row."""
        return await self._route(query).fetchval(
            query, *args, column=column, timeout=timeout, idempotent=idempotent
        )

    async def execute(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> str:
        """Run ``query`` on this shard's database; the command status."""
        return await self._route(query).execute(
            query, *args, timeout=timeout, idempotent=idempotent
        )

    async def executemany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> None:
        """Run ``query`` once per tuple in ``args`` on this shard's database; all or nothing."""
        await self._route(query, write=True).executemany(
            query, args, timeout=timeout, idempotent=idempotent
        )

    def transaction(
        self,
        *,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> AbstractAsyncContextManager[TransactionScope]:
        """A transaction on this shard's database for the ``async with`` block.

        While it is open, this task cannot write to another logical shard
        (``CrossShardWriteError``). With ``PG_SHARDS_KEY_SETTING`` set and a
        key, the transaction starts by setting that setting to the key.
        """
        return _KeyedTransaction(self, isolation, readonly, deferrable)

    async def run_in_transaction(
        self,
        fn: Callable[..., Awaitable[_T]],
        *args: Any,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
        attempts: int | None = None,
    ) -> _T:
        """``await fn(scope, *args)`` in a transaction on this shard, re-run when that is safe
        (as ``DatabaseClient.run_in_transaction``), under this shard's routing rules."""
        client = self._route(None, write=not readonly)

        async def body(scope: TransactionScope, *inner: Any) -> _T:
            token = _open_transaction.set(self._marker())
            try:
                await self._set_key(scope)
                return await fn(scope, *inner)
            finally:
                _open_transaction.reset(token)

        return await client.run_in_transaction(
            body,
            *args,
            isolation=isolation,
            readonly=readonly,
            deferrable=deferrable,
            attempts=attempts,
        )

    def acquire(self) -> AbstractAsyncContextManager[Connection]:
        """A raw connection to this shard's database (counts as a write for the routing rules)."""
        return self._route(None, write=True).acquire()

    async def new_id(self) -> int:
        """A new globally unique ID carrying this logical shard (see docs/sharding.md, IDs).

        Needs ``wellwon_shards.next_id`` on the database (``wellwon-db shards
        migrate`` installs it): asyncpg's ``UndefinedFunctionError`` otherwise.
        """
        epoch_ms = self._owner.settings.id_epoch_ms
        value: int = await self._route(NEXT_ID_SQL, write=False).fetchval(
            NEXT_ID_SQL, self.shard, epoch_ms
        )
        return value

    def _marker(self) -> _OpenTransaction:
        return _OpenTransaction(self._owner, self.shard, self._physical.database)

    async def _set_key(self, scope: TransactionScope) -> None:
        setting = self._owner.settings.key_setting
        if setting is not None and self.key is not None:
            # SET LOCAL, not set_config(): Citus propagates SET LOCAL commands to the
            # workers (citus.propagate_set_commands = 'local'), not function calls. The
            # name is validated by the settings; the value is quoted as quote_literal does.
            await scope.execute(f"SET LOCAL {setting} TO {quote_literal(str(self.key))}")


class _KeyedTransaction:
    """``ShardClient.transaction()``: the database's transaction, marked as open on a shard."""

    __slots__ = ("_client", "_inner", "_options", "_token")

    def __init__(
        self,
        client: ShardClient,
        isolation: IsolationLevel | None,
        readonly: bool,
        deferrable: bool,
    ) -> None:
        self._client = client
        self._options = (isolation, readonly, deferrable)
        self._inner: AbstractAsyncContextManager[TransactionScope] | None = None
        self._token: contextvars.Token[_OpenTransaction | None] | None = None

    async def __aenter__(self) -> TransactionScope:
        isolation, readonly, deferrable = self._options
        database_client = self._client._route(None, write=not readonly)
        inner = self._inner = database_client.transaction(
            isolation=isolation, readonly=readonly, deferrable=deferrable
        )
        scope = await inner.__aenter__()
        self._token = _open_transaction.set(self._client._marker())
        try:
            await self._client._set_key(scope)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return scope

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool | None:
        inner, token = self._inner, self._token
        if inner is None:
            raise RuntimeError("a shard transaction exited without being entered")
        self._inner = self._token = None
        if token is not None:
            _open_transaction.reset(token)
        return await inner.__aexit__(exc_type, exc, tb)


def check_fan_out(owner: ShardSet, query: str | None) -> None:
    """Raise unless this task may fan out ``query`` (``None``: may write anything)."""
    scope = _scope.get()
    if scope is not None and scope.owner is owner and scope.locked:
        raise ShardRoutingError(
            f"a fan-out inside a block locked to logical shard {scope.shard} by "
            "sharded.key(..., lock=True) is refused: open the block with lock=False"
        )
    open_tx = _open_transaction.get()
    if open_tx is not None and open_tx.owner is owner and (query is None or writes_data(query)):
        raise CrossShardWriteError(
            f"a fan-out write while a transaction on logical shard {open_tx.shard} "
            f"({open_tx.database}) is open in this task: it would not commit or roll "
            "back with it; run it after the transaction ends (docs/sharding.md)",
            open_shard=open_tx.shard,
            shard=None,
        )


def enter_scope(
    owner: ShardSet, client: ShardClient, lock: bool
) -> contextvars.Token[_Scope | None]:
    """Open a ``sharded.key(...)`` block for ``client``'s key (refused when an enclosing
    locked block is on another shard); reset the returned token to close it."""
    outer = _scope.get()
    locked_outside = outer is not None and outer.owner is owner and outer.locked
    if locked_outside:
        check_route(owner, client.shard, client.database, write=False)
    assert client.key is not None
    # A lock holds to the end of its block: an inner block cannot lift it.
    return _scope.set(_Scope(owner, client.key, client.shard, lock or locked_outside))


def leave_scope(token: contextvars.Token[_Scope | None]) -> None:
    """Close the block ``enter_scope`` opened."""
    _scope.reset(token)


def scoped_shard(owner: ShardSet) -> tuple[int, ShardKey] | None:
    """The logical shard and key of this task's innermost block of ``owner``, if any."""
    scope = _scope.get()
    if scope is None or scope.owner is not owner:
        return None
    return scope.shard, scope.key
