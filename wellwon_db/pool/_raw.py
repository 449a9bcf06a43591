"""``RawConnection``: an asyncpg connection lent for one ``acquire()`` block."""

from __future__ import annotations

from typing import Any

import asyncpg
from asyncpg.connection import _ConnectionProxy

__all__ = ["RawConnection"]


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
