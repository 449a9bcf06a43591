"""``DatabaseContainer`` and the helpers that make its lifecycle safe.

dependency-injector's traps, and what the helpers do about them:

* ``init_resources()``/``shutdown_resources()`` return ``None`` when nothing
  is async: :func:`start_databases`/:func:`stop_databases` always work with ``await``.
* A provider that depends on an async Resource returns a Future: clients do
  not depend on the Resource (they hold a :class:`PoolSlot` it fills), so
  ``container.main_db()`` is a plain client; :func:`resolve` awaits whatever
  any provider returns.
* ``shutdown_resources()`` does not reset singletons, so clients would keep
  their closed pools: clients hold the slot, which the next start fills with
  the new pool.
* A failed start-up leaves the pools that did open open:
  :func:`start_databases` closes them before raising.
* Settings read when a container class is defined fail at import:
  ``config`` is read on first use, not at definition.
* ``Closing[...]`` on a client would shut the shared pool down: a client's
  dependencies hold no Resource, so there is nothing for ``Closing`` to close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar

from dependency_injector import containers, providers

from wellwon_db.client._client import MainDB, ReferenceDB
from wellwon_db.client._slot import PoolSlot
from wellwon_db.config._config import PostgresConfig, get_postgres_config
from wellwon_db.config._database import Database
from wellwon_db.health._health import HealthChecker
from wellwon_db.pool._pool import DatabasePool
from wellwon_db.telemetry._telemetry import register_breaker, unregister_breaker

__all__ = [
    "DatabaseContainer",
    "database_lifespan",
    "open_database_pool",
    "resolve",
    "start_databases",
    "stop_databases",
]

logger = logging.getLogger("wellwon_db.container")

#: A ``DatabaseContainer`` instance, or one embedded with ``providers.Container``.
ContainerLike: TypeAlias = "containers.Container | providers.Container[Any]"
_T = TypeVar("_T")


async def open_database_pool(
    database: Database, config: PostgresConfig, slot: PoolSlot
) -> AsyncIterator[DatabasePool]:
    """Resource body: open ``database``'s pool with its own settings and put it in ``slot``.

    On shutdown the slot is emptied first (new calls fail fast with
    ``PoolClosedError``), then the pool closes.
    """
    if slot.database is not database:
        raise ValueError(f"the {slot.database.value} slot given for the {database.value} pool")
    slot.configure(config.get_breaker_config(database), config.get_retry_config(database))
    pool = DatabasePool(
        database,
        config.get_dsn(database),
        config.get_pool_config(database),
        telemetry=config.get_telemetry_config(database),
    )
    await pool.open()
    slot.pool = pool
    register_breaker(slot.breaker)
    try:
        yield pool
    finally:
        unregister_breaker(slot.breaker)
        if slot.pool is pool:
            slot.pool = None
        await pool.close()


class DatabaseContainer(containers.DeclarativeContainer):
    """Settings, one pool Resource per database and the typed clients.

    Embed it with ``providers.Container(DatabaseContainer)``; start it with
    :func:`start_databases` (or :func:`database_lifespan`), stop it with
    :func:`stop_databases`. It has no ``wiring_config``: the application wires.

    Clients reach their pool through a slot, not through the Resource: they
    are plain objects (no Future), survive a stop and start, and
    ``Closing[...]`` on a client cannot shut the shared pool down.
    """

    config = providers.Callable(get_postgres_config)

    main_slot = providers.Singleton(PoolSlot, Database.MAIN)
    reference_slot = providers.Singleton(PoolSlot, Database.REFERENCE)

    main_pool = providers.Resource(open_database_pool, Database.MAIN, config, main_slot)
    reference_pool = providers.Resource(
        open_database_pool, Database.REFERENCE, config, reference_slot
    )

    main_db = providers.Singleton(MainDB, main_slot)
    reference_db = providers.Singleton(ReferenceDB, reference_slot)

    health = providers.Factory(
        HealthChecker,
        config=config,
        slots=providers.Dict(main=main_slot, reference=reference_slot),
        clients=providers.Dict(main=main_db, reference=reference_db),
    )


async def resolve(provider: providers.Provider[_T]) -> _T:
    """Call ``provider`` and await the result when it is awaitable.

    ``client = await resolve(container.main_db)`` works before and after the
    pools were started.
    """
    result: Any = provider()
    if inspect.isawaitable(result):
        result = await result
    return result  # type: ignore[no-any-return]


def _pool_resources(container: ContainerLike) -> list[providers.Resource[Any]]:
    return [
        provider
        for provider in container.traverse(types=[providers.Resource])
        if isinstance(provider, providers.Resource)
    ]


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


async def start_databases(container: ContainerLike) -> None:
    """Open every pool of ``container`` (a :class:`DatabaseContainer`) concurrently.

    When any pool fails to open, the ones that did are closed and the first
    error is raised (the others are logged): nothing stays half-open.
    Starting a started container does nothing.
    """
    resources = _pool_resources(container)
    results = await asyncio.gather(
        *(_maybe_await(resource.init()) for resource in resources), return_exceptions=True
    )
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        for extra in errors[1:]:
            logger.error("database start-up also failed: %s", extra)
        await stop_databases(container)
        raise errors[0]


async def stop_databases(container: ContainerLike) -> None:
    """Close every pool of ``container``.

    Clients stay valid: after :func:`start_databases` they use the new pools.
    Pools close concurrently; an error closing one does not keep the others
    open. Stopping a stopped container does nothing.
    """
    resources = [r for r in _pool_resources(container) if r.initialized]
    results = await asyncio.gather(
        *(_maybe_await(resource.shutdown()) for resource in resources), return_exceptions=True
    )
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        raise errors[0]


@asynccontextmanager
async def database_lifespan(container: ContainerLike) -> AsyncIterator[None]:
    """``async with database_lifespan(container):`` the pools are open inside."""
    await start_databases(container)
    try:
        yield
    finally:
        await stop_databases(container)
