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
from typing import Any

import asyncpg
from dependency_injector import providers

from wellwon_db.client._client import DatabaseClient
from wellwon_db.config._config import get_postgres_config
from wellwon_db.config._registry import Database, DatabaseName, spec_for
from wellwon_db.di._container import DatabaseContainer, resolve, stop_databases
from wellwon_db.di._providers import DatabaseProviders, ensure_database
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


def _providers(database: Database | str) -> DatabaseProviders[DatabaseClient]:
    return ensure_database(default_container(), database)


async def init_pool_for_db(database: Database | str = Database.MAIN) -> DatabasePool:
    """Open ``database``'s pool (once; later calls return the same pool).

    Raises ``ConfigurationError`` naming the DSN variable when it is unset.
    In a process forked after the pool opened, the parent's pools are
    abandoned and this process's own is opened.
    """
    made = _providers(database)
    name = spec_for(database).name
    lock = _locks.setdefault(name, asyncio.Lock())
    async with lock:
        if made.pool.initialized:
            slot = made.slot()
            if slot.pool is not None and not slot.pool.opened_in_this_process:
                # A forked worker: drop the parent's pools (without touching
                # their connections) and open this process's own.
                await _close_all()
        pool: DatabasePool | None = await resolve(made.pool)
    if pool is None:
        unconfigured = made.slot().unconfigured
        await _shutdown(made)
        if unconfigured is not None:
            raise unconfigured
        raise RuntimeError(f"the {name} pool did not open")  # pragma: no cover (defensive)
    return pool


async def _shutdown(made: DatabaseProviders[Any]) -> None:
    """An unconfigured database's Resource must not stay initialised: the next call reads again."""
    result = made.pool.shutdown()
    if result is not None:
        await result


async def _client(database: Database | str) -> DatabaseClient:
    made = _providers(database)
    slot = made.slot()
    if not made.pool.initialized or (
        slot.pool is not None and not slot.pool.opened_in_this_process
    ):
        await init_pool_for_db(database)
    client: DatabaseClient = await resolve(made.client)
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
    return await (await _client(database)).execute(query, *args)
