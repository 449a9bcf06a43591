"""The original ``pg_client`` module-level API, over one default container.

Kept so that code written against ``pg_client`` runs unchanged: the same
function names, the same ``database=`` keyword, the same environment. Unlike
the original, each database gets its own DSN and its own pool settings.
Pools open on first use (or with :func:`init_pool_for_db`) and close with
:func:`close_pools`. In a process forked after they opened, the functions
notice, abandon the parent's pools (without touching its connections) and
open the child's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from wellwon_db.client._client import DatabaseClient
from wellwon_db.config._config import get_postgres_config
from wellwon_db.config._database import Database
from wellwon_db.di._container import DatabaseContainer, resolve, stop_databases
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
_locks: dict[Database, asyncio.Lock] = {}


def default_container() -> DatabaseContainer:
    """The container behind the module-level functions (created on first use)."""
    global _container
    if _container is None:
        _container = DatabaseContainer()
    return _container


def get_postgres_dsn_for_db(database: Database | str = Database.MAIN) -> str:
    """The DSN of ``database`` from the environment.

    Raises ``ConfigurationError`` (also a ``RuntimeError``) naming
    ``POSTGRES_DSN`` or ``POSTGRES_REFERENCE_DSN`` when it is unset.
    """
    return get_postgres_config().get_dsn(database)


def _providers(database: Database) -> tuple[Any, Any]:
    container = default_container()
    name = Database.parse(database).value
    return getattr(container, f"{name}_pool"), getattr(container, f"{name}_db")


async def init_pool_for_db(database: Database | str = Database.MAIN) -> DatabasePool:
    """Open ``database``'s pool (once; later calls return the same pool)."""
    database = Database.parse(database)
    pool_provider, _ = _providers(database)
    lock = _locks.setdefault(database, asyncio.Lock())
    async with lock:
        pool: DatabasePool = await resolve(pool_provider)
    return pool


async def _client(database: Database | str) -> DatabaseClient:
    database = Database.parse(database)
    pool_provider, client_provider = _providers(database)
    if pool_provider.initialized:
        slot = getattr(default_container(), f"{database.value}_slot")()
        if slot.pool is not None and not slot.pool.opened_in_this_process:
            # A forked worker: drop the parent's pools (without touching their
            # connections) and open this process's own, transparently.
            await close_pools()
    if not pool_provider.initialized:
        await init_pool_for_db(database)
    client: DatabaseClient = await resolve(client_provider)
    return client


async def close_pools() -> None:
    """Close every pool the module-level functions opened; the next call reopens them."""
    _locks.clear()
    if _container is not None:
        await stop_databases(_container)


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
