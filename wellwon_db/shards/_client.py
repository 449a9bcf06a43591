"""``ShardedClient``: route by key, reach a shard by number or ID, fan out to every shard.

``sharded.for_key(key)`` hashes the key as PostgreSQL would (the map's
scheme and key type) and gives a :class:`ShardClient` with the usual query
API, every call confined to that key's logical shard and sent to the
physical database holding it (its own pool, breaker and retries).
``with sharded.key(key):`` routes everything inside the block (in this task
and the tasks it starts) to that key's shard; without one, the un-keyed
calls raise :class:`ShardRoutingError` rather than guess. The routing rules
(locked blocks, no cross-shard writes in a transaction) are in ``_routing.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

import asyncpg

from wellwon_db.client._transaction import IsolationLevel, TransactionScope
from wellwon_db.errors import ShardRoutingError
from wellwon_db.shards._fanout import FanOut
from wellwon_db.shards._ids import shard_of_id
from wellwon_db.shards._map import ShardKey, ShardMap
from wellwon_db.shards._routing import (
    ShardClient,
    check_fan_out,
    enter_scope,
    leave_scope,
    scoped_shard,
)
from wellwon_db.shards._set import PhysicalShard, ShardSet
from wellwon_db.shards._settings import ShardSettings

__all__ = ["ShardedClient"]

_T = TypeVar("_T")
Record = asyncpg.Record


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
        token = enter_scope(self._set, client, lock)
        try:
            yield client
        finally:
            leave_scope(token)

    def current(self) -> ShardClient:
        """The client of the enclosing ``with sharded.key(key):`` block.

        Raises ``ShardRoutingError`` outside one: a query that needs a shard
        never guesses.
        """
        scoped = scoped_shard(self._set)
        if scoped is None:
            raise ShardRoutingError(
                "this call needs a shard and has no key: use sharded.for_key(key).fetch(...), "
                "run it inside `with sharded.key(key):`, or ask every shard with "
                "sharded.fan_out()"
            )
        shard, key = scoped
        return ShardClient(self._set, self._set.for_shard(shard), shard, key)

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
        raises ``CrossShardWriteError``. ``ValueError`` when given both
        ``shards`` and ``databases``, or a selection of no shard;
        ``ShardRoutingError`` for an unknown shard number or database.
        """
        settings = self._set.settings
        targets = self._targets(shards, databases)
        owner = self._set

        def before(query: str | None) -> None:
            check_fan_out(owner, query)

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
        if not chosen:
            raise ValueError("fan_out() was given no shard to ask")
        return [target for target in self._set.physical() if str(target.database) in chosen]
