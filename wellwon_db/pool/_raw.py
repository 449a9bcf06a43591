"""Connections lent raw: ``acquire()`` blocks and ``acquire_connection()``.

A raw connection may run anything, so it gets asyncpg's own command
timeout for the lease (:meth:`Leases.lend`) and a full reset when it comes
back; an ``acquire()`` block gets a :class:`RawConnection` that refuses use
after the block.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import asyncpg
from asyncpg.connection import _ConnectionProxy

from wellwon_db.pool._connector import Connection, holder_of
from wellwon_db.pool._session import SessionEffect

if TYPE_CHECKING:
    from wellwon_db.pool._leases import Leases
    from wellwon_db.pool._slots import Holder

__all__ = ["RawConnection", "acquire_connection", "lent", "release_connection"]


class RawConnection(_ConnectionProxy):
    """Every attribute of the lent asyncpg connection, until the block ends.

    After the block the connection belongs to the pool again (maybe to
    another task): any use raises asyncpg's ``InterfaceError`` instead of
    touching someone else's session, as asyncpg's own pool proxy does.
    ``isinstance(lent, asyncpg.Connection)`` holds, as for asyncpg's proxy.
    """

    __slots__ = ("_con",)

    def __init__(self, connection: asyncpg.Connection[Any]) -> None:
        self._con: asyncpg.Connection[Any] | None = connection

    def __getattr__(self, name: str) -> Any:
        connection = self._con
        if connection is None:
            raise asyncpg.InterfaceError(
                f"cannot use Connection.{name}: the connection was released back to the pool "
                "when its acquire() block ended; keep using it inside the block only"
            )
        return getattr(connection, name)

    def detach(self) -> None:
        """End the loan: later uses raise ``InterfaceError``."""
        self._con = None

    def __repr__(self) -> str:
        state = "released" if self._con is None else repr(self._con)
        return f"<RawConnection {state}>"


async def acquire_connection(leases: Leases, timeout: float | None = None) -> Connection:
    """A connection for arbitrary use; hand it back with :func:`release_connection`.

    Waits at most ``timeout`` seconds (default: the pool's acquire timeout).
    """
    holder = leases.lease_nowait() or await leases.lease(time.monotonic(), timeout)
    try:
        await leases.clear_sequences(holder)  # raw use may read lastval()
    except BaseException:
        await leases.release(holder, SessionEffect.BROKEN)
        raise
    return leases.lend(holder)


async def release_connection(
    leases: Leases, connection: Connection, effect: SessionEffect = SessionEffect.NONE
) -> None:
    """Return a connection from :func:`acquire_connection`, undoing what ``effect`` says.

    asyncpg's ``InterfaceError`` for a connection of no pool, or released twice.
    """
    holder = holder_of(connection)
    if holder is None:
        raise asyncpg.InterfaceError("this connection does not belong to a wellwon_db pool")
    await leases.release(holder, effect)


@asynccontextmanager
async def lent(leases: Leases, holder: Holder[Connection]) -> AsyncIterator[Connection]:
    """Lend ``holder``'s connection for the block; release it (fully reset) after.

    The block gets a :class:`RawConnection` that refuses use after the
    block. A cancelled block releases in the background, so cancellation is
    never held up by a connection that is still settling.
    """
    try:
        await leases.clear_sequences(holder)  # raw use may read lastval()
    except BaseException:
        await leases.release(holder, SessionEffect.BROKEN)
        raise
    raw = RawConnection(leases.lend(holder))
    try:
        yield cast("Connection", raw)
    except asyncio.CancelledError:
        raw.detach()
        leases.release_in_background(holder, SessionEffect.RESET)
        raise
    except BaseException:
        raw.detach()
        await leases.release(holder, SessionEffect.RESET)
        raise
    raw.detach()
    await leases.release(holder, SessionEffect.RESET)
