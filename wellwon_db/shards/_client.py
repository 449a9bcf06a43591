"""Routing by key: ``ShardedClient`` and the per-shard ``ShardClient``.

``sharded.for_key(key)`` hashes the key as PostgreSQL would (the map's
scheme and key type) and gives a :class:`ShardClient` with the usual query
API, every call confined to that key's logical shard and sent to the
physical database holding it (its own pool, breaker and retries).

``with sharded.key(key):`` routes everything inside the block (in this task
and the tasks it starts) to that key's shard: ``sharded.fetch(...)`` and
friends use it, and without one they raise :class:`ShardRoutingError`
rather than guess. With ``lock=True`` (the default, as Rails'
``connected_to(shard:, lock: true)``) reaching any other shard inside the
block raises too.

While a transaction opened through a shard client is open in a task, a
write to any other logical shard raises :class:`CrossShardWriteError`
before anything is sent: the two could not commit or roll back together.
Reads of other shards stay allowed (they see their own snapshot).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from wellwon_db.client._client import DatabaseClient
from wellwon_db.client._transaction import IsolationLevel, TransactionScope
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import CrossShardWriteError, ShardRoutingError
from wellwon_db.pool._pool import Connection
from wellwon_db.pool._session import writes_data
from wellwon_db.shards._fanout import FanOut
from wellwon_db.shards._ids import NEXT_ID_SQL, shard_of_id
from wellwon_db.shards._map import ShardKey, ShardMap
from wellwon_db.shards._set import PhysicalShard, ShardSet
from wellwon_db.shards._settings import ShardSettings

__all__ = ["ShardClient", "ShardedClient", "current_shard_key"]

_T = TypeVar("_T")
Record = asyncpg.Record

_KEY_SETTING_SQL = "SELECT set_config($1, $2, true)"


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


def _check_route(owner: ShardSet, shard: int, database: DatabaseName, write: bool) -> None:
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
        _check_route(self._owner, self.shard, self._physical.database, write)
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
            await scope.execute(_KEY_SETTING_SQL, setting, str(self.key))


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


class ShardedClient:
    """The sharded data: route by key, reach a shard by number or ID, fan out to all.

    The container binds it to a :class:`ShardSet`, filled when the pools
    start (``PoolClosedError`` before that, naming how to start them).
    ``fetch``/``fetchrow``/``fetchval``/``execute``/``executemany``/
    ``transaction()``/``run_in_transaction()`` go to the shard of the
    enclosing ``with sharded.key(key):`` block and raise
    ``ShardRoutingError`` outside one.
    """

    __slots__ = ("_set",)

    def __init__(self, shard_set: ShardSet) -> None:
        if not isinstance(shard_set, ShardSet):
            raise TypeError(
                f"{type(self).__name__} needs a ShardSet, got {type(shard_set).__name__}; "
                "build it with wellwon_db.shard_providers(...)"
            )
        self._set = shard_set

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._set!r}>"

    @property
    def shard_map(self) -> ShardMap:
        """The shard map in force (``PoolClosedError`` before the pools start)."""
        return self._set.shard_map

    @property
    def settings(self) -> ShardSettings:
        """The shard settings in force (``PoolClosedError`` before the pools start)."""
        return self._set.settings

    @property
    def shard_set(self) -> ShardSet:
        """The physical shards, their slots (pool, breaker) and clients."""
        return self._set

    def shard_of(self, key: ShardKey) -> int:
        """The logical shard of ``key`` (``InvalidShardKeyError`` for a key of the wrong type)."""
        return self._set.shard_map.shard_of(key)

    def for_key(self, key: ShardKey) -> ShardClient:
        """The client of ``key``'s logical shard."""
        shard = self._set.shard_map.shard_of(key)
        return ShardClient(self._set, self._set.for_shard(shard), shard, key)

    def for_shard(self, shard: int) -> ShardClient:
        """The client of logical shard ``shard`` (``ShardRoutingError`` when out of range)."""
        return ShardClient(self._set, self._set.for_shard(shard), shard, None)

    def for_id(self, value: int) -> ShardClient:
        """The client of the logical shard a global ID was made for (``new_id()``)."""
        try:
            shard = shard_of_id(value)
        except ValueError as exc:
            raise ShardRoutingError(str(exc)) from None
        return self.for_shard(shard)

    @contextmanager
    def key(self, key: ShardKey, *, lock: bool = True) -> Iterator[ShardClient]:
        """Route this task's un-keyed calls to ``key``'s shard inside the ``with`` block.

        Yields the key's :class:`ShardClient`. With ``lock`` (default) any
        call to another shard inside the block raises ``ShardRoutingError``;
        a nested block for another shard raises at once.
        """
        client = self.for_key(key)
        outer = _scope.get()
        if outer is not None and outer.owner is self._set and outer.locked:
            _check_route(self._set, client.shard, client.database, write=False)
        token = _scope.set(_Scope(self._set, key, client.shard, lock))
        try:
            yield client
        finally:
            _scope.reset(token)

    def current(self) -> ShardClient:
        """The client of the enclosing ``with sharded.key(key):`` block.

        Raises ``ShardRoutingError`` outside one: a query that needs a shard
        never guesses.
        """
        scope = _scope.get()
        if scope is None or scope.owner is not self._set:
            raise ShardRoutingError(
                "this call needs a shard and has no key: use sharded.for_key(key).fetch(...), "
                "run it inside `with sharded.key(key):`, or ask every shard with "
                "sharded.fan_out()"
            )
        return ShardClient(self._set, self._set.for_shard(scope.shard), scope.shard, scope.key)

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> list[Record]:
        """``current().fetch(...)``."""
        return await self.current().fetch(query, *args, timeout=timeout, idempotent=idempotent)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> Record | None:
        """``current().fetchrow(...)``."""
        return await self.current().fetchrow(query, *args, timeout=timeout, idempotent=idempotent)

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """``current().fetchval(...)``."""
        return await self.current().fetchval(
            query, *args, column=column, timeout=timeout, idempotent=idempotent
        )

    async def execute(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool = False
    ) -> str:
        """``current().execute(...)``."""
        return await self.current().execute(query, *args, timeout=timeout, idempotent=idempotent)

    async def executemany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> None:
        """``current().executemany(...)``."""
        await self.current().executemany(query, args, timeout=timeout, idempotent=idempotent)

    def transaction(
        self,
        *,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> AbstractAsyncContextManager[TransactionScope]:
        """``current().transaction(...)``."""
        return self.current().transaction(
            isolation=isolation, readonly=readonly, deferrable=deferrable
        )

    async def run_in_transaction(
        self,
        fn: Callable[..., Awaitable[_T]],
        *args: Any,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
        attempts: int | None = None,
    ) -> _T:
        """``current().run_in_transaction(...)``."""
        return await self.current().run_in_transaction(
            fn,
            *args,
            isolation=isolation,
            readonly=readonly,
            deferrable=deferrable,
            attempts=attempts,
        )

    def fan_out(
        self,
        *,
        shards: Iterable[int] | None = None,
        databases: Iterable[str] | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        allow_partial: bool = False,
    ) -> FanOut:
        """A fan-out over every physical shard, or those holding ``shards`` (logical numbers)
        or named in ``databases``; see :class:`FanOut` for its statements.

        ``timeout`` (seconds) and ``concurrency`` default to
        ``PG_SHARDS_FANOUT_TIMEOUT_SEC`` and ``PG_SHARDS_FANOUT_CONCURRENCY``.
        Inside a locked ``sharded.key(...)`` block a fan-out raises
        ``ShardRoutingError``; inside a shard transaction a writing one
        raises ``CrossShardWriteError``.
        """
        settings = self._set.settings
        targets = self._targets(shards, databases)
        owner = self._set

        def before(query: str | None) -> None:
            scope = _scope.get()
            if scope is not None and scope.owner is owner and scope.locked:
                raise ShardRoutingError(
                    f"a fan-out inside a block locked to logical shard {scope.shard} by "
                    "sharded.key(..., lock=True) is refused: open the block with lock=False"
                )
            open_tx = _open_transaction.get()
            if (
                open_tx is not None
                and open_tx.owner is owner
                and (query is None or writes_data(query))
            ):
                raise CrossShardWriteError(
                    f"a fan-out write while a transaction on logical shard {open_tx.shard} "
                    f"({open_tx.database}) is open in this task: it would not commit or roll "
                    "back with it; run it after the transaction ends (docs/sharding.md)",
                    open_shard=open_tx.shard,
                    shard=None,
                )

        return FanOut(
            targets,
            timeout=settings.fanout_timeout_sec if timeout is None else timeout,
            concurrency=settings.fanout_concurrency if concurrency is None else concurrency,
            allow_partial=allow_partial,
            before=before,
        )

    def _targets(
        self, shards: Iterable[int] | None, databases: Iterable[str] | None
    ) -> list[PhysicalShard]:
        if shards is not None and databases is not None:
            raise ValueError("give fan_out() shards or databases, not both")
        if shards is not None:
            chosen = {str(self._set.for_shard(shard).database) for shard in shards}
        elif databases is not None:
            chosen = {str(self._set.physical(name)[0].database) for name in databases}
        else:
            return self._set.physical()
        return [target for target in self._set.physical() if str(target.database) in chosen]
