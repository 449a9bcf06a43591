"""The providers of one database, generated in one place, and finding them again in a container.

:func:`database_providers` makes the trio every database gets: a slot
(``Singleton[PoolSlot]``: where its pool, breaker and retry policy live), a
pool (``Resource``: opens the pool into the slot, closes it on shutdown) and
a typed client (``Singleton[<client class>]`` on the slot). The
``DatabaseContainer`` declares main and reference with it; an application
declares its own the same way. :func:`database_members` finds them in any
container by their structure, not by their names, so lifecycle helpers,
health, fakes and the CLI work for every database a container holds, and
leave every other provider (an application's Redis) alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar

from dependency_injector import containers, providers

from wellwon_db.client._cache import CacheConfig
from wellwon_db.client._cached import CacheService
from wellwon_db.client._client import DatabaseClient
from wellwon_db.client._declared import DeclaredClient
from wellwon_db.client._readonly import ReadOnlyClient
from wellwon_db.client._replicas import ReplicaEndpoint, ReplicaSet
from wellwon_db.client._slot import PoolSlot
from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._connection import ConnectionInit, ConnectionSetup, connection_setup_for
from wellwon_db.config._credentials import ConnectParams, connect_params
from wellwon_db.config._policies import PoolConfig
from wellwon_db.config._registry import DatabaseName, DatabaseSpec, client_class_of, spec_for
from wellwon_db.config._settings import ReplicaSettings, env_var_name, split_dsns
from wellwon_db.errors import ConfigurationError
from wellwon_db.pool._pool import DatabasePool
from wellwon_db.telemetry._telemetry import (
    register_breaker,
    register_replica_set,
    unregister_breaker,
    unregister_replica_set,
)

__all__ = [
    "ContainerLike",
    "DatabaseMember",
    "DatabaseProviders",
    "database_members",
    "database_providers",
    "ensure_database",
    "open_database_pool",
    "open_replica_set",
    "replica_providers",
]

logger = logging.getLogger("wellwon_db.container")

#: A ``DatabaseContainer`` instance, or one embedded with ``providers.Container``.
ContainerLike: TypeAlias = "containers.Container | providers.Container[Any]"

_C = TypeVar("_C", bound=DatabaseClient)
_R = TypeVar("_R", bound=ReadOnlyClient)


async def open_database_pool(
    spec: DatabaseSpec, config: PostgresConfig, slot: PoolSlot, init: object = None
) -> AsyncIterator[DatabasePool | None]:
    """Resource body: open ``spec``'s pool with its own settings and put it in ``slot``.

    ``init`` is what the container's ``connection_init`` gave (a
    ``ConnectionSetup``, an init function, or a mapping of database names to
    either): every connection of the pool is set up with it. A database
    whose DSN is unset is off: nothing opens, and its client
    raises ``ConfigurationError`` naming the variable to set, unless its
    ``PG_[<DB>_]STARTUP_DSN_REQUIRED`` is true, which fails here instead. On
    shutdown the slot is emptied first (new calls fail fast with
    ``PoolClosedError``), then the pool closes.
    """
    if slot.database != spec.name:
        raise ValueError(f"the {slot.database} slot given for the {spec.name} pool")
    settings = config.settings_for(spec.name)
    if settings.dsn is None:
        missing = config.missing_dsn_error(spec.name)
        if settings.startup_dsn_required:
            raise missing
        slot.unconfigured = missing
        logger.info(
            "the %s database is not configured (%s unset): off", spec.name, missing.env_var
        )
        try:
            yield None
        finally:
            slot.unconfigured = None
        return
    slot.unconfigured = None
    slot.configure(config.get_breaker_config(spec.name), config.get_retry_config(spec.name))
    pool = DatabasePool(
        spec.name,
        config.get_dsn(spec.name),
        _with_setup(config.get_pool_config(spec.name), init, spec),
        telemetry=config.get_telemetry_config(spec.name),
        connect=config.get_connect_params(spec.name),
    )
    await pool.open()
    try:
        service = await _start_cache(spec, config, slot)
    except BaseException:
        await pool.close()
        raise
    slot.pool = pool
    slot.loop_ended = False
    slot.listen_dsn, slot.listen_off = _listen_target(spec, config)
    register_breaker(slot.breaker)
    try:
        yield pool
    except GeneratorExit:
        # asyncio closes the async generators of a loop that ends (asyncio.run
        # returned) with the pool still open; a stop_databases() never does.
        slot.loop_ended = True
        raise
    finally:
        unregister_breaker(slot.breaker)
        if slot.pool is pool:
            slot.pool = None
        await slot.breaker_watch.stop()
        slot.cache = None
        slot.listen_dsn = slot.listen_off = None
        if service is not None:
            await service.stop()
        await pool.close()


def _as_provider(given: object) -> providers.Provider[Any]:
    """``given`` as a provider of itself, unless it is one already."""
    if isinstance(given, providers.Provider):
        return given
    return providers.Object(given)


def _with_setup(pool_config: PoolConfig, init: object, spec: DatabaseSpec) -> PoolConfig:
    """``pool_config`` with the connection set-up ``init`` gives ``spec``'s database."""
    primary = str(spec.replica_of) if spec.replica_of is not None else None
    setup = connection_setup_for(init, str(spec.name), primary)
    if setup is None:
        return pool_config
    return dataclasses.replace(pool_config, setup=setup)


def _listen_target(
    spec: DatabaseSpec, config: PostgresConfig
) -> tuple[ConnectParams | None, ConfigurationError | None]:
    """How ``client.listen()`` connects (password and TLS as the pool's), or why it
    cannot (LISTEN through PgBouncer)."""
    settings = config.settings_for(spec.name)
    listen_dsn = settings.cache_listen_dsn
    if listen_dsn is not None:
        variable = env_var_name(type(settings), "cache_listen_dsn")
        return connect_params(settings, listen_dsn.get_secret_value(), dsn_variable=variable), None
    if settings.pool_pgbouncer:
        var = env_var_name(type(settings), "cache_listen_dsn")
        return None, ConfigurationError(
            f"the {spec.name} database's DSN points at PgBouncer "
            f"({env_var_name(type(settings), 'pool_pgbouncer')}=true), where LISTEN does not "
            f"work: set {var} to a direct DSN for LISTEN connections",
            env_var=var,
        )
    return config.get_connect_params(spec.name), None


async def _start_cache(
    spec: DatabaseSpec, config: PostgresConfig, slot: PoolSlot
) -> CacheService | None:
    """The database's result cache, listening, when it is enabled (else why not, on the slot)."""
    settings = config.settings_for(spec.name)
    settings_type = type(settings)
    enabled = env_var_name(settings_type, "cache_enabled")
    if not settings.cache_enabled:
        slot.cache, slot.cache_off = (
            None,
            ConfigurationError(
                f"the {spec.name} database has no result cache: set {enabled}=true "
                "(docs/caching.md)",
                env_var=enabled,
            ),
        )
        return None
    listen_dsn = settings.cache_listen_dsn
    if listen_dsn is None and settings.pool_pgbouncer:
        var = env_var_name(settings_type, "cache_listen_dsn")
        slot.cache, slot.cache_off = (
            None,
            ConfigurationError(
                f"the {spec.name} database's result cache is off: its DSN points at PgBouncer "
                f"({env_var_name(settings_type, 'pool_pgbouncer')}=true), where LISTEN does not "
                f"work; set {var} to a direct DSN (or {enabled}=false)",
                env_var=var,
            ),
        )
        logger.warning("%s", slot.cache_off)
        return None
    service = CacheService(
        str(spec.name),
        CacheConfig(
            max_entries=settings.cache_max_entries,
            ttl=settings.cache_ttl_sec,
            stale_if_error=settings.cache_stale_if_error_sec,
        ),
        listen=(
            connect_params(
                settings,
                listen_dsn.get_secret_value(),
                dsn_variable=env_var_name(settings_type, "cache_listen_dsn"),
            )
            if listen_dsn is not None
            else config.get_connect_params(spec.name)
        ),
        channel=settings.cache_channel,
        connect_timeout=settings.pool_connect_timeout_sec,
    )
    await service.start()
    slot.cache, slot.cache_off = service, None
    return service


class DatabaseProviders(NamedTuple, Generic[_C]):
    """The providers of one database: unpack them into a container's class body."""

    slot: providers.Singleton[PoolSlot]
    pool: providers.Resource[DatabasePool | None]
    client: providers.Singleton[_C]


def database_providers(
    client_class: type[_C],
    config: providers.Provider[PostgresConfig],
    *,
    spec: DatabaseSpec | None = None,
    init: providers.Provider[Any] | ConnectionInit | ConnectionSetup | None = None,
) -> DatabaseProviders[_C]:
    """The slot, pool and client providers of ``client_class``'s database.

    ``client_class`` is a typed client (``class AuditDB(DatabaseClient,
    database="audit")``); ``config`` is the container's settings provider
    (``DatabaseContainer.config``)::

        class AppDatabases(DatabaseContainer):
            audit_slot, audit_pool, audit_db = database_providers(
                AuditDB, DatabaseContainer.config
            )

    ``spec`` gives the database of an untyped client (``DatabaseClient``).
    ``init`` sets up every new connection of the pool: a ``ConnectionSetup``,
    an async function taking the connection, or a provider of either (or of
    a mapping of database names to either, such as the container's
    ``connection_init``). Raises ``TypeError`` for a client class that names
    no database.
    """
    spec = spec or client_class.spec
    if spec is None or not (
        isinstance(client_class, type) and issubclass(client_class, DatabaseClient)
    ):
        raise TypeError(
            f"{getattr(client_class, '__name__', client_class)!r} names no database: declare it "
            'as `class AuditDB(DatabaseClient, database="audit")`'
        )
    slot = providers.Singleton(PoolSlot, spec.name)
    pool: providers.Resource[DatabasePool | None] = providers.Resource(
        open_database_pool, spec, config, slot, _as_provider(init)
    )
    client = providers.Singleton(client_class, slot)
    return DatabaseProviders(slot, pool, client)


async def open_replica_set(
    spec: DatabaseSpec,
    config: PostgresConfig,
    replicas: ReplicaSet,
    primary: object,
    init: object = None,
) -> AsyncIterator[ReplicaSet]:
    """Resource body: open a pool per replica DSN, measure their lag, keep measuring.

    ``primary`` is the primary's pool (or ``None``): the primary opens first.
    ``init`` is the container's ``connection_init`` (the replica database's
    entry, else its primary's, sets up every replica connection).
    With no replica DSN every read goes to the primary. A replica that is
    down at start-up does not fail it (unless its ``STARTUP_REQUIRED`` is
    true): it connects in the background and takes reads once it answers.
    Lag is known when this returns: the first measurement runs here.
    """
    settings = config.settings_for(spec.name)
    if not isinstance(settings, ReplicaSettings):
        raise TypeError(f"the {spec.name} database is not declared as a replica")
    replicas.max_lag_sec = settings.max_lag_sec
    replicas.lag_check_sec = settings.lag_check_sec
    dsns = split_dsns(settings.dsn.get_secret_value()) if settings.dsn is not None else []
    pool_config = _with_setup(config.get_pool_config(spec.name), init, spec)
    endpoints: list[ReplicaEndpoint] = []
    for dsn in dsns:
        slot = PoolSlot(spec.name)
        slot.configure(config.get_breaker_config(spec.name), config.get_retry_config(spec.name))
        pool = DatabasePool(
            spec.name,
            dsn,
            pool_config,
            telemetry=config.get_telemetry_config(spec.name),
            connect=config.get_connect_params(spec.name, dsn),
        )
        slot.pool = pool
        slot.breaker.add_listener(lambda _transition: replicas.refresh())
        endpoints.append(ReplicaEndpoint(slot, pool.address))
    results = await asyncio.gather(
        *(endpoint.slot.get().open() for endpoint in endpoints), return_exceptions=True
    )
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        await asyncio.gather(
            *(e.slot.get().close() for e, r in zip(endpoints, results, strict=True) if r is None)
        )
        raise errors[0]
    replicas.endpoints = endpoints
    replicas.unconfigured = None if dsns else config.missing_dsn_error(spec.name)
    primary_slot = replicas.primary
    primary_slot.track_writes = bool(endpoints)
    try:
        await replicas.measure()
        replicas.start_monitor()
        register_replica_set(replicas)
        yield replicas
    finally:
        unregister_replica_set(replicas)
        replicas.unconfigured = None
        primary_slot.track_writes = False
        await replicas.stop_monitor()
        replicas.reset()
        await asyncio.gather(
            *(endpoint.slot.get().close() for endpoint in endpoints), return_exceptions=True
        )
        for endpoint in endpoints:
            endpoint.slot.pool = None
            await endpoint.slot.breaker_watch.stop()


class ReplicaProviders(NamedTuple, Generic[_R]):
    """The providers of one replica database: unpack them into a container's class body."""

    slot: providers.Singleton[ReplicaSet]
    pool: providers.Resource[ReplicaSet]
    client: providers.Singleton[_R]


def replica_providers(
    client_class: type[_R],
    config: providers.Provider[PostgresConfig],
    primary_slot: providers.Provider[PoolSlot],
    primary_pool: providers.Provider[Any],
    *,
    init: providers.Provider[Any] | ConnectionInit | ConnectionSetup | None = None,
) -> ReplicaProviders[_R]:
    """The replica set, its pools' Resource and the read-only client of a replica database.

    ``client_class`` names the replica database (``MainReplicaDB``);
    ``primary_slot`` and ``primary_pool`` are its primary's providers (the
    replicas' Resource opens after the primary's); ``init`` as for
    :func:`database_providers` (a mapping without the replica database's
    name gives its primary's set-up)::

        main_replica_slot, main_replica_pool, main_replica_db = replica_providers(
            MainReplicaDB, config, main_slot, main_pool
        )
    """
    spec = client_class.spec
    if spec is None or spec.replica_of is None:
        raise TypeError(
            f"{client_class.__name__} names no replica database: declare it with "
            "declare_database(name, replica_of=primary) and "
            "`class X(ReadOnlyClient, database=name)`"
        )
    replicas = providers.Singleton(ReplicaSet, spec.name, primary_slot)
    pool: providers.Resource[ReplicaSet] = providers.Resource(
        open_replica_set, spec, config, replicas, primary_pool, _as_provider(init)
    )
    client = providers.Singleton(client_class, replicas)
    return ReplicaProviders(replicas, pool, client)


#: The Resource bodies that mark a database's providers.
_OPENERS = (open_database_pool, open_replica_set)


@dataclass(frozen=True, slots=True)
class DatabaseMember:
    """One database's providers as found in a container."""

    spec: DatabaseSpec
    #: A ``Singleton[PoolSlot]``, or ``Singleton[ReplicaSet]`` for a replica database.
    slot: providers.Singleton[Any]
    pool: providers.Resource[Any]
    #: ``Singleton`` of a ``DatabaseClient`` (or ``ReadOnlyClient`` for a replica database).
    client: providers.Singleton[Any] | None
    config: providers.Provider[PostgresConfig]

    @property
    def name(self) -> DatabaseName:
        """The database's name."""
        return self.spec.name

    @property
    def is_replica(self) -> bool:
        """Whether this is a replica database (its slot is a ``ReplicaSet``)."""
        return self.spec.replica_of is not None


def _providers_of(container: Any) -> dict[str, providers.Provider[Any]]:
    found: dict[str, providers.Provider[Any]] = dict(container.providers)
    return found


def _walk(container: Any) -> Iterator[providers.Provider[Any]]:
    for provider in _providers_of(container).values():
        yield provider
        if isinstance(provider, providers.Container):
            yield from _walk(provider)


def database_members(container: ContainerLike) -> list[DatabaseMember]:
    """Every database whose providers ``container`` holds (in embedded containers too).

    Found by structure: a ``Resource`` of :func:`open_database_pool`, its
    slot, and the client ``Singleton`` on that slot. Ordered as declared.
    """
    all_providers = list(_walk(container))
    members: list[DatabaseMember] = []
    for provider in all_providers:
        if not isinstance(provider, providers.Resource):
            continue
        # dependency-injector wraps an async generator function; ``__wrapped__`` is ours.
        if getattr(provider.provides, "__wrapped__", provider.provides) not in _OPENERS:
            continue
        args: tuple[Any, ...] = tuple(provider.args)
        spec, config, slot = args[0], args[1], args[2]
        client = next(
            (
                candidate
                for candidate in all_providers
                if isinstance(candidate, providers.Singleton)
                and candidate.args
                and candidate.args[0] is slot
                and isinstance(candidate.provides, type)
                and issubclass(candidate.provides, DeclaredClient)
            ),
            None,
        )
        members.append(DatabaseMember(spec, slot, provider, client, config))
    return members


def ensure_database(container: containers.Container, database: DatabaseName) -> DatabaseMember:
    """``database``'s providers in ``container``, added (with its declared client class, else a
    plain ``DatabaseClient``) when the container has none: for the seed API and the CLI,
    which serve any database the environment names.
    """
    spec = spec_for(database)
    for member in database_members(container):
        if member.name == spec.name and member.client is not None:
            return member
    config = container.config
    if spec.replica_of is not None:
        primary = ensure_database(container, spec.replica_of)
        readonly = client_class_of(spec.name)
        if not (isinstance(readonly, type) and issubclass(readonly, ReadOnlyClient)):
            raise ConfigurationError(
                f"the {spec.name} database is a replica with no client class: declare one "
                f"(class X(ReadOnlyClient, database={str(spec.name)!r}))"
            )
        made_replicas = replica_providers(
            readonly, config, primary.slot, primary.pool, init=_connection_init_of(container)
        )
        _add(container, spec, made_replicas.slot, made_replicas.pool, made_replicas.client)
        return DatabaseMember(
            spec, made_replicas.slot, made_replicas.pool, made_replicas.client, config
        )
    client_class = client_class_of(spec.name)
    if not (isinstance(client_class, type) and issubclass(client_class, DatabaseClient)):
        client_class = DatabaseClient
    config = container.config
    made = database_providers(client_class, config, spec=spec, init=_connection_init_of(container))
    _add(container, spec, made.slot, made.pool, made.client)
    return DatabaseMember(spec, made.slot, made.pool, made.client, config)


def _connection_init_of(container: containers.Container) -> providers.Provider[Any] | None:
    """The container's ``connection_init`` provider, if it has one."""
    found = _providers_of(container).get("connection_init")
    return found if isinstance(found, providers.Provider) else None


def _add(
    container: containers.Container,
    spec: DatabaseSpec,
    slot: providers.Provider[Any],
    pool: providers.Provider[Any],
    client: providers.Provider[Any],
) -> None:
    container.set_provider(f"{spec.name}_slot", slot)
    container.set_provider(f"{spec.name}_pool", pool)
    container.set_provider(f"{spec.name}_db", client)
