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
  ``config`` is read on first use, not at definition; each container has its
  own (a ``Singleton``), read again at the next start after a stop.
* ``init_resources()`` starts every Resource of the container it is given:
  :func:`start_databases` starts the database pools only, so it can be given
  a whole application container without starting its Redis.
* ``Closing[...]`` on a client would shut the shared pool down: a client's
  dependencies hold no Resource, so there is nothing for ``Closing`` to close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from dependency_injector import containers, providers

from wellwon_db.client._client import MainDB, ReferenceDB
from wellwon_db.client._readonly import MainReplicaDB, ReferenceReplicaDB
from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._settings import DEFAULT_ENV_FILE
from wellwon_db.di._providers import (
    ContainerLike,
    DatabaseMember,
    database_members,
    database_providers,
    replica_providers,
)
from wellwon_db.di._shards import open_physical_shards, shard_members
from wellwon_db.health._health import HealthChecker, HealthReport

__all__ = [
    "DatabaseContainer",
    "check_health",
    "database_lifespan",
    "health_checker",
    "load_container_config",
    "resolve",
    "start_databases",
    "stop_databases",
]

logger = logging.getLogger("wellwon_db.container")

_T = TypeVar("_T")


def load_container_config(values: Mapping[str, Any] | None = None) -> PostgresConfig:
    """A container's settings: the environment and ``./.env``, with ``values`` from code over them.

    ``values`` is the container's ``settings`` configuration: database names
    mapping to settings by field name (``{"main": {"pool_max_size": 5}}``).
    """
    return PostgresConfig.load(env_file=DEFAULT_ENV_FILE, values=values or None)


def health_checker(container: ContainerLike) -> HealthChecker:
    """A :class:`HealthChecker` for every database of ``container``, overrides included."""
    members = database_members(container)
    if not members:
        raise TypeError(
            f"{type(container).__name__} holds no database providers: health checks need a "
            "wellwon_db.DatabaseContainer (or one embedded with providers.Container)"
        )
    config: PostgresConfig = members[0].config()
    slots = {str(member.name): member.slot() for member in members}
    clients = {
        str(member.name): member.client() for member in members if member.client is not None
    }
    for shard in open_physical_shards(container):  # each physical shard is a database
        slots[str(shard.database)], clients[str(shard.database)] = shard.slot, shard.client
    return HealthChecker(config, slots, clients)


async def check_health(container: ContainerLike) -> HealthReport:
    """Check every database of ``container`` (a ``DatabaseContainer``, embedded, or an app's).

    Probes run concurrently, each bounded by its database's
    ``PG_[<DB>_]HEALTH_TIMEOUT_SEC``; the whole call takes about as long as
    the slowest probe. Overrides are honoured (a faked client is probed as it
    is). Raises ``ConfigurationError`` only when the settings cannot be read.
    """
    return await health_checker(container).check()


if TYPE_CHECKING:  # the stubs do not declare the metaclass
    _DeclarativeMeta = type
else:
    _DeclarativeMeta = type(containers.DeclarativeContainer)


class _DatabaseContainerMeta(_DeclarativeMeta):
    """Gives every ``DatabaseContainer`` class (subclasses too) a ``health`` provider of its own.

    ``providers.Self`` is made per class, so a ``health`` declared once on the
    base would check the base's databases only, never those a subclass adds.
    """

    def __new__(mcs, class_name: str, bases: tuple[type, ...], attributes: dict[str, Any]) -> type:
        cls = super().__new__(mcs, class_name, bases, attributes)
        if "health" not in attributes:
            own_self: providers.Self[Any] = getattr(cls, "__self__")  # noqa: B009 (set by the metaclass)
            cls.health = providers.Factory(health_checker, own_self)  # type: ignore[attr-defined]
        return cls


class DatabaseContainer(containers.DeclarativeContainer, metaclass=_DatabaseContainerMeta):
    """Settings, one pool Resource per database and the typed clients.

    Embed it with ``providers.Container(DatabaseContainer)``; start it with
    :func:`start_databases` (or :func:`database_lifespan`), stop it with
    :func:`stop_databases`. It has no ``wiring_config``: the application wires.

    ``settings`` takes settings from code (a ``providers.Configuration``:
    ``providers.Container(DatabaseContainer, settings=app.config.db)``),
    which win over the environment; ``config`` is the validated
    :class:`PostgresConfig`, read when the pools start; ``connection_init``
    maps database names to the set-up of their new connections (an init
    hook, server settings: ``ConnectionSetup``). Each database's providers
    come from :func:`database_providers`; subclass to add yours (pass
    ``init=DatabaseContainer.connection_init`` for the mapping to apply).

    Clients reach their pool through a slot, not through the Resource: they
    are plain objects (no Future), survive a stop and start, and
    ``Closing[...]`` on a client cannot shut the shared pool down.
    """

    settings = providers.Configuration(strict=False)
    config: providers.Singleton[PostgresConfig] = providers.Singleton(
        load_container_config, settings
    )
    #: Set-up of every new connection, by database name: a ``ConnectionSetup`` or an async
    #: function taking the connection (a replica database without an entry gets its
    #: primary's). Override it: ``providers.Container(DatabaseContainer,
    #: connection_init=providers.Dict(main=init_main))``.
    connection_init: providers.Dict = providers.Dict()

    main_slot, main_pool, main_db = database_providers(MainDB, config, init=connection_init)
    reference_slot, reference_pool, reference_db = database_providers(
        ReferenceDB, config, init=connection_init
    )
    main_replica_slot, main_replica_pool, main_replica_db = replica_providers(
        MainReplicaDB, config, main_slot, main_pool, init=connection_init
    )
    reference_replica_slot, reference_replica_pool, reference_replica_db = replica_providers(
        ReferenceReplicaDB, config, reference_slot, reference_pool, init=connection_init
    )

    #: A :class:`HealthChecker` of every database of this container (set by the metaclass).
    health: providers.Factory[HealthChecker]


async def resolve(provider: providers.Provider[_T]) -> _T:
    """Call ``provider`` and await the result when it is awaitable.

    ``client = await resolve(container.main_db)`` works before and after the
    pools were started.
    """
    result: Any = provider()
    if inspect.isawaitable(result):
        result = await result
    return result  # type: ignore[no-any-return]


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


async def _init(resource: providers.Resource[Any]) -> None:
    # init() may raise before returning an awaitable (a dependency failing to resolve);
    # inside a coroutine that is one more result for gather, not an escape past the
    # clean-up of the pools that did start.
    await _maybe_await(resource.init())


async def start_databases(container: ContainerLike) -> None:
    """Open every database pool of ``container`` concurrently (embedded containers included),
    and the pools of each physical shard of its sharded clients (``shard_providers``).

    ``container`` is a :class:`DatabaseContainer`, one embedded with
    ``providers.Container``, or an application container holding either:
    only database pools are started, never its other Resources. When any
    pool fails to open, the ones that did are closed and the first error is
    raised (the others are logged): nothing stays half-open. Starting a
    started container does nothing; one whose pools closed with the event
    loop they were opened on is started anew.
    """
    members = database_members(container)
    for member in members:
        slot = member.slot()
        if member.pool.initialized and getattr(slot, "loop_ended", False):
            # Closed by the end of an earlier event loop, not through stop_databases():
            # the Resource still counts as started. Finish it so it opens anew here.
            await _maybe_await(member.pool.shutdown())
    resources = [member.pool for member in members]
    resources += [shards.pools for shards in shard_members(container)]
    results = await asyncio.gather(
        *(_init(resource) for resource in resources), return_exceptions=True
    )
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        for extra in errors[1:]:
            logger.error("database start-up also failed: %s", extra)
        await stop_databases(container)
        raise errors[0]


async def stop_databases(container: ContainerLike) -> None:
    """Close every database pool of ``container``, shards' included (and nothing else).

    Clients stay valid: after :func:`start_databases` they use the new pools,
    with the settings read again. Pools close concurrently; an error closing
    one does not keep the others open. Stopping a stopped container does
    nothing.
    """
    members = database_members(container)
    sharded = shard_members(container)
    resources = [member.pool for member in members if member.pool.initialized]
    resources += [shards.pools for shards in sharded if shards.pools.initialized]
    results = await asyncio.gather(
        *(_maybe_await(resource.shutdown()) for resource in resources), return_exceptions=True
    )
    _forget_settings(members)
    for shards in sharded:
        if isinstance(shards.settings, providers.Singleton):
            shards.settings.reset()  # read PG_SHARDS_* again at the next start
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        raise errors[0]


def _forget_settings(members: list[DatabaseMember]) -> None:
    """The next start reads the settings again (``shutdown_resources`` keeps singletons)."""
    for member in members:
        if isinstance(member.config, providers.Singleton) and not any(
            member.pool.initialized for member in members
        ):
            member.config.reset()


@asynccontextmanager
async def database_lifespan(container: ContainerLike) -> AsyncIterator[None]:
    """``async with database_lifespan(container):`` the pools are open inside."""
    await start_databases(container)
    try:
        yield
    finally:
        await stop_databases(container)
