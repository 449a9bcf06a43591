"""``QueryRunner``: the query API that clients, transaction scopes and the fakes all offer.

Application code typed against it takes a client or a transaction scope
alike (``async def load(db: QueryRunner) -> ...``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar, overload

import asyncpg

__all__ = ["QueryRunner"]

_M = TypeVar("_M")
Record = asyncpg.Record


class QueryRunner(Protocol):
    """What clients, transaction scopes and the shipped fakes all offer."""

    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[Record]: ...
    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, model: type[_M]
    ) -> list[_M]: ...
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, model: Any = None
    ) -> list[Any]:
        """Run ``query``; all rows (each a ``model`` when given)."""
        ...

    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Record | None: ...
    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, model: type[_M]
    ) -> _M | None: ...
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, model: Any = None
    ) -> Any:
        """Run ``query``; the first row (a ``model`` when given) or ``None``."""
        ...

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run ``query``; one value of the first row, or ``None``."""
        ...

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run ``query``; the command status (``"INSERT 0 1"``)."""
        ...

    async def executemany(
        self, query: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run ``query`` once per argument tuple, atomically."""
        ...
