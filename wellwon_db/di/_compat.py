"""The original ``pg_client`` module-level API, over one default container.

Kept so that code written against ``pg_client`` runs unchanged: the same
function names, the same ``database=`` keyword, the same environment. Unlike
the original, each database gets its own DSN and its own pool settings, and
any database named by the environment works: with ``POSTGRES_AUDIT_DSN`` set,
``fetch_for_db(query, database="audit")`` opens audit's own pool with its
``PG_AUDIT_POOL_*`` settings. Pools open on first use (or with
:func:`init_pool_for_db`) and close with :func:`close_pools`, after which the
settings are read again. In a process forked after they opened, the
functions notice, abandon the parent's pools (without touching its
connections) and open the child's own.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, overload

import asyncpg
from dependency_injector import providers

from wellwon_db.client._client import DatabaseClient
from wellwon_db.client._readonly import ReadOnlyClient
from wellwon_db.client._replicas import ReplicaSet
from wellwon_db.client._slot import PoolSlot
from wellwon_db.config._config import get_postgres_config
from wellwon_db.config._registry import Database, DatabaseName, spec_for
from wellwon_db.di._container import DatabaseContainer, resolve, stop_databases
from wellwon_db.di._providers import DatabaseMember, ensure_database
from wellwon_db.errors import ConfigurationError
from wellwon_db.pool._pool import DatabasePool

__all__ = [
    "close_pools",
    "default_container",
    "execute_for_db",
    "fetch_for_db",
    "fetchrow_for_db",
    "fetchval_for_db",
    "get_postgres_dsn_for_db",
    "init_pool_for_db",
]

_container: DatabaseContainer | None = None
_locks: dict[DatabaseName, asyncio.Lock] = {}


def default_container() -> DatabaseContainer:
    """The container behind the module-level functions (created on first use).

    Its settings are :func:`get_postgres_config`'s (the environment and
    ``./.env``); databases other than main and reference get providers the
    first time they are named.
    """
    global _container
    if _container is None:
        _container = DatabaseContainer()
        _container.config.override(providers.Callable(get_postgres_config))
    return _container


def get_postgres_dsn_for_db(database: Database | str = Database.MAIN) -> str:
    """The DSN of ``database`` from the environment.

    Raises ``ConfigurationError`` (also a ``RuntimeError``) naming the
    variable to set (``POSTGRES_DSN``, ``POSTGRES_REFERENCE_DSN``,
    ``POSTGRES_<NAME>_DSN``) when it is unset.
    """
    return get_postgres_config().get_dsn(database)


def _member(database: Database | str) -> DatabaseMember:
    return ensure_database(default_container(), database)


def _forked(slot: PoolSlot | ReplicaSet) -> bool:
    """Whether ``slot``'s pools were opened before this process was forked."""
    if isinstance(slot, ReplicaSet):
        slots = [slot.primary, *(endpoint.slot for endpoint in slot.endpoints)]
    else:
        slots = [slot]
    return any(s.pool is not None and not s.pool.opened_in_this_process for s in slots)


@overload
async def init_pool_for_db(  # type: ignore[overload-overlap]  # the members before any str
    database: Literal[Database.MAIN_REPLICA, Database.REFERENCE_REPLICA],
) -> ReplicaSet: ...
@overload
async def init_pool_for_db(database: Database | str = Database.MAIN) -> DatabasePool: ...
async def init_pool_for_db(database: Database | str = Database.MAIN) -> DatabasePool | ReplicaSet:
    """Open ``database``'s pool (once; later calls return the same pool).

    A replica database gives its :class:`ReplicaSet` (its replicas' pools,
    opened after its primary's). Raises ``ConfigurationError`` naming the DSN
    variable when it is unset. In a process forked after the pool opened,
    the parent's pools are abandoned and this process's own are opened.
    """
    member = _member(database)
    name = member.name
    lock = _locks.setdefault(name, asyncio.Lock())
    async with lock:
        if member.pool.initialized and _forked(member.slot()):
            # A forked worker: drop the parent's pools (without touching
            # their connections) and open this process's own.
            await _close_all()
        opened: DatabasePool | ReplicaSet | None = await resolve(member.pool)
    if opened is None:
        unconfigured = member.slot().unconfigured
        await _shutdown(member)
        if unconfigured is not None:
            raise unconfigured
        raise RuntimeError(f"the {name} pool did not open")  # pragma: no cover (defensive)
    return opened


async def _shutdown(member: DatabaseMember) -> None:
    """An unconfigured database's Resource must not stay initialised: the next call reads again."""
    result = member.pool.shutdown()
    if result is not None:
        await result


async def _client(database: Database | str) -> DatabaseClient | ReadOnlyClient:
    member = _member(database)
    if not member.pool.initialized or _forked(member.slot()):
        await init_pool_for_db(database)
    assert member.client is not None
    client: DatabaseClient | ReadOnlyClient = await resolve(member.client)
    return client


async def _writer(database: Database | str) -> DatabaseClient:
    client = await _client(database)
    if isinstance(client, ReadOnlyClient):
        spec = spec_for(database)
        raise ConfigurationError(
            f"the {spec.name} database is read-only (a replica of {spec.replica_of}): run "
            f"writes with database={str(spec.replica_of)!r}"
        )
    return client


async def _close_all() -> None:
    if _container is not None:
        await stop_databases(_container)
    get_postgres_config.cache_clear()


async def close_pools() -> None:
    """Close every pool the module-level functions opened; the next call reopens them.

    The settings are read again (from the environment and ``./.env``) when
    they reopen.
    """
    _locks.clear()
    await _close_all()


async def fetch_for_db(
    query: str, *args: Any, database: Database | str = Database.MAIN
) -> list[asyncpg.Record]:
    """``fetch`` on ``database``."""
    return await (await _client(database)).fetch(query, *args)


async def fetchrow_for_db(
    query: str, *args: Any, database: Database | str = Database.MAIN
) -> asyncpg.Record | None:
    """``fetchrow`` on ``database``."""
    return await (await _client(database)).fetchrow(query, *args)


async def fetchval_for_db(query: str, *args: Any, database: Database | str = Database.MAIN) -> Any:
    """``fetchval`` on ``database``."""
    return await (await _client(database)).fetchval(query, *args)


async def execute_for_db(query: str, *args: Any, database: Database | str = Database.MAIN) -> str:
    """``execute`` on ``database``."""
    return await (await _writer(database)).execute(query, *args)
