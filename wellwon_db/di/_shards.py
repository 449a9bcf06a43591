"""The providers of a sharded client, and finding them again in a container.

:func:`shard_providers` makes four providers: the shard settings
(``Singleton``, read from ``PG_SHARDS_*`` when the pools start), the
:class:`ShardSet` the client holds, a ``Resource`` that opens one pool per
physical database of the map (each with its own ``POSTGRES_<NAME>_DSN`` and
``PG_<NAME>_*`` settings, breaker and telemetry) and the client. The
lifecycle helpers start and stop them with the databases, and health checks
each physical shard as a database of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar, cast

from dependency_injector import providers

from wellwon_db.client._slot import PoolSlot
from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._registry import spec_for
from wellwon_db.config._settings import DEFAULT_ENV_FILE
from wellwon_db.di._providers import ContainerLike, _walk, open_database_pool
from wellwon_db.errors import ConfigurationError
from wellwon_db.pool._pool import DatabasePool
from wellwon_db.shards._client import ShardedClient
from wellwon_db.shards._map import ShardMap, format_shards
from wellwon_db.shards._set import PhysicalShard, ShardSet
from wellwon_db.shards._settings import ShardSettings, check_databases, load_shard_settings

__all__ = [
    "ShardMember",
    "ShardProviders",
    "check_shard_dsns",
    "open_physical_shards",
    "open_shard_set",
    "shard_members",
    "shard_providers",
]

logger = logging.getLogger("wellwon_db.container")

_S = TypeVar("_S", bound=ShardedClient)


def check_shard_dsns(shard_map: ShardMap, config: PostgresConfig) -> None:
    """Every database of ``shard_map`` is known to ``config`` and has a DSN.

    Raises ``ConfigurationError`` naming the variable to set.
    """
    check_databases(shard_map, config)
    for entry in shard_map.placements:
        if not config.has_dsn(entry.database):
            missing = config.missing_dsn_error(entry.database)
            raise ConfigurationError(
                f"{missing} (it holds logical shards {format_shards(entry.shards)})",
                env_var=missing.env_var,
            )


async def open_shard_set(
    config: PostgresConfig,
    settings: ShardSettings,
    shard_set: ShardSet,
    tolerate_down: bool = False,
) -> AsyncIterator[ShardSet]:
    """Resource body: open a pool per physical database of the map, fill ``shard_set``.

    Each pool opens as its database's own would (``open_database_pool``:
    start-up wait, background connect when ``PG_<NAME>_STARTUP_REQUIRED`` is
    false). When one fails, those that opened are closed and its error is
    raised, unless ``tolerate_down`` (the CLI), which records the error on the
    physical shard instead. Raises ``ConfigurationError`` when the map is
    unset or invalid, names an unknown database, or one has no DSN. On
    shutdown the set is emptied first, then the pools close.
    """
    shard_map = settings.shard_map()
    check_shard_dsns(shard_map, config)
    openers: list[tuple[PoolSlot, AsyncGenerator[DatabasePool | None, None]]] = []
    for entry in shard_map.placements:
        slot, _ = shard_set.slot_for(entry.database)
        opener = open_database_pool(spec_for(entry.database), config, slot)
        # An async generator function's result: a generator, closed with aclose().
        openers.append((slot, cast("AsyncGenerator[DatabasePool | None, None]", opener)))
    tasks = [asyncio.ensure_future(opener.__anext__()) for _, opener in openers]
    try:
        await asyncio.wait(tasks)
    except BaseException:
        # Cancelled while opening: the pools that did open are closed, not leaked.
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await _close(_opened(openers, tasks))
        raise
    opened = _opened(openers, tasks)
    results: list[BaseException | None] = [task.exception() for task in tasks]
    errors = [error for error in results if error is not None]
    if errors and not tolerate_down:
        for extra in errors[1:]:
            logger.error("shard start-up also failed: %s", extra)
        await _close(opened)
        raise errors[0]
    try:
        physical = [
            PhysicalShard(
                entry.database,
                entry.shards,
                *shard_set.slot_for(entry.database),
                down=error,
            )
            for entry, error in zip(shard_map.placements, results, strict=True)
        ]
        shard_set.install(settings, physical)
        yield shard_set
    finally:
        shard_set.clear()
        await _close(opened)


def _opened(
    openers: Sequence[tuple[PoolSlot, AsyncGenerator[Any, None]]],
    tasks: Sequence[asyncio.Future[Any]],
) -> list[AsyncGenerator[Any, None]]:
    """The openers whose first step (opening the pool) completed."""
    return [
        opener
        for (_, opener), task in zip(openers, tasks, strict=True)
        if task.done() and not task.cancelled() and task.exception() is None
    ]


async def _close(openers: list[AsyncGenerator[Any, None]]) -> None:
    results = await asyncio.gather(
        *(opener.aclose() for opener in openers), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            logger.error("closing a shard's pool failed: %s", result)


class ShardProviders(NamedTuple, Generic[_S]):
    """The providers of a sharded client: unpack them into a container's class body."""

    settings: providers.Singleton[ShardSettings]
    shard_set: providers.Singleton[ShardSet]
    pools: providers.Resource[ShardSet]
    client: providers.Singleton[_S]


def shard_providers(
    config: providers.Provider[PostgresConfig],
    *,
    client_class: type[_S] = ShardedClient,  # type: ignore[assignment]
    values: providers.Provider[Any] | None = None,
) -> ShardProviders[_S]:
    """The settings, shard set, pools and client providers of a sharded client::

        class AppDatabases(DatabaseContainer):
            shard_settings, shard_set, shard_pools, sharded_db = shard_providers(
                DatabaseContainer.config
            )

    ``config`` is the container's settings provider; ``values`` a provider of
    shard settings from code (a mapping by field name, over ``PG_SHARDS_*``,
    or a ``ShardSettings``), e.g. a ``providers.Configuration``. The settings
    are read when the pools start, and again after a stop.
    """
    if not (isinstance(client_class, type) and issubclass(client_class, ShardedClient)):
        raise TypeError(f"{client_class!r} is not a ShardedClient subclass")
    settings: providers.Singleton[ShardSettings] = providers.Singleton(
        load_shard_settings, DEFAULT_ENV_FILE, values if values is not None else None
    )
    shard_set = providers.Singleton(ShardSet)
    pools: providers.Resource[ShardSet] = providers.Resource(
        open_shard_set, config, settings, shard_set
    )
    client = providers.Singleton(client_class, shard_set)
    return ShardProviders(settings, shard_set, pools, client)


@dataclass(frozen=True, slots=True)
class ShardMember:
    """A sharded client's providers as found in a container."""

    settings: providers.Provider[Any]
    shard_set: providers.Provider[Any]
    pools: providers.Resource[Any]


def shard_members(container: ContainerLike) -> list[ShardMember]:
    """Every sharded client's providers in ``container`` (embedded containers too), found by
    structure: a ``Resource`` of :func:`open_shard_set`."""
    members = []
    for provider in _walk(container):
        if not isinstance(provider, providers.Resource):
            continue
        if getattr(provider.provides, "__wrapped__", provider.provides) is not open_shard_set:
            continue
        _, settings, shard_set = tuple(provider.args)[:3]
        members.append(ShardMember(settings, shard_set, provider))
    return members


def open_physical_shards(container: ContainerLike) -> list[PhysicalShard]:
    """The physical shards of every open shard set of ``container`` (for health)."""
    found: list[PhysicalShard] = []
    for member in shard_members(container):
        shard_set = member.shard_set()
        if isinstance(shard_set, ShardSet) and shard_set.is_open:
            found.extend(shard_set.physical())
    return found
