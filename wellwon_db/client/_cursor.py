"""Streaming rows through a server-side cursor: :class:`RowStream` and :class:`CursorBlock`.

PostgreSQL streams a query's rows through a portal, which lives inside a
transaction; each round trip fetches ``prefetch`` rows, so memory holds one
batch, never the whole result. ``scope.cursor(...)`` streams inside an open
transaction (the transaction bounds the portal's life); ``client.cursor(...)``
is an ``async with`` block that opens a transaction of its own for the
stream and ends it with the block (commit when the block ends normally,
rollback when it raises), so an early ``break`` never leaves a connection
held in an open transaction.

The breaker sees the transaction as one call (permission at ``BEGIN``, its
outcome at the end). Telemetry records one CLIENT span and one
``db.client.operation.duration`` per stream, named by the query's summary,
from the first fetch to the last row (the consumer's time between rows
included, so streams are not reported as slow queries).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import asyncpg

from wellwon_db.pool._pool import Connection

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from wellwon_db.client._transaction import Transaction, TransactionScope

__all__ = ["CursorBlock", "RowStream", "check_prefetch"]

_T = TypeVar("_T")


def check_prefetch(prefetch: int | None) -> None:
    """Raise ``ValueError`` unless ``prefetch`` is ``None`` or a count of at least 1."""
    if prefetch is None:
        return
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise ValueError(f"prefetch must be a number of rows of at least 1, got {prefetch!r}")


class RowStream(Generic[_T]):
    """``async for row in stream``: a query's rows, fetched ``prefetch`` at a time.

    Made by ``scope.cursor(...)``; nothing is sent before the first row is
    asked for. Raises what the scope's statements raise
    (``DatabaseUnavailableError`` when the connection is lost, ``TimeoutError``
    when one fetch exceeds ``timeout``, PostgreSQL's errors unchanged), and
    asyncpg's ``InterfaceError`` when used after its transaction ended.
    """

    __slots__ = (
        "_args",
        "_connection",
        "_iterator",
        "_make",
        "_prefetch",
        "_query",
        "_record_class",
        "_scope",
        "_span",
        "_started",
        "_state",
        "_timeout",
    )

    def __init__(
        self,
        scope: TransactionScope,
        query: str,
        args: tuple[Any, ...],
        *,
        prefetch: int | None,
        timeout: float | None,
        record_class: type[asyncpg.Record] | None,
        make: Callable[[Any], _T] | None,
    ) -> None:
        self._scope = scope
        self._query = query
        self._args = args
        self._prefetch = prefetch
        self._timeout = timeout
        self._record_class = record_class
        self._make = make
        self._iterator: Any = None
        self._connection: Connection | None = None
        self._span: Span | None = None
        self._started = 0.0
        #: ``new`` (nothing sent), ``open``, ``done`` (all read), ``failed``, ``ended``
        #: (its transaction ended first).
        self._state = "new"

    def __repr__(self) -> str:
        return f"<RowStream {self._state} prefetch={self._prefetch or 50}>"

    def __aiter__(self) -> RowStream[_T]:
        return self

    async def __anext__(self) -> _T:
        state = self._state
        if state != "open":
            if state == "done":
                raise StopAsyncIteration
            if state == "ended":
                raise asyncpg.InterfaceError(
                    "cannot use the cursor: its transaction ended; read the rows inside the "
                    "`async with` block"
                )
            if state == "failed":
                raise asyncpg.InterfaceError(
                    "cannot use the cursor: a fetch failed (the error was raised then); "
                    "open a new one, in a new transaction"
                )
            self._open()
        iterator = self._iterator
        try:
            row = await iterator.__anext__()
        except StopAsyncIteration:
            self._finish(None)
            raise
        except BaseException as exc:
            assert self._connection is not None  # set when opened
            error = self._scope._failed(exc, self._connection)
            self._finish(error)
            self._state = "failed"
            if error is exc:
                raise
            raise error from exc
        make = self._make
        return row if make is None else make(row)

    def _open(self) -> None:
        scope = self._scope
        self._connection = connection = scope._live()
        scope._note(self._query)
        telemetry = scope._telemetry
        if telemetry is not None:
            self._span = telemetry.start(self._query, parameterized=bool(self._args))
        self._started = time.monotonic()
        factory = connection.cursor(
            self._query,
            *self._args,
            prefetch=self._prefetch,
            timeout=self._timeout,
            record_class=self._record_class,
        )
        self._iterator = factory.__aiter__()
        self._state = "open"
        scope._streams.add(self)

    def _finish(self, error: BaseException | None) -> None:
        """Record the stream's end once: its span, its duration."""
        if self._state != "open":
            return
        self._state = "done"
        self._iterator = None
        self._scope._streams.discard(self)
        telemetry = self._scope._telemetry
        if telemetry is not None:
            # No ``sent``: the consumer's pauses are in the duration, not the server's.
            telemetry.finish(self._span, self._query, self._started, error)
        self._span = None

    def _abandon(self) -> None:
        """Its transaction ended before the stream did (an early ``break``)."""
        self._finish(None)
        self._state = "ended"


class CursorBlock(Generic[_T]):
    """``async with client.cursor(query, ...) as rows:`` a transaction of its own for a stream.

    Entering opens the transaction (``CircuitOpenError``, ``PoolTimeoutError``
    and ``DatabaseUnavailableError`` as for ``client.transaction()``) and
    gives the :class:`RowStream`; leaving commits, or rolls back when the
    block raised. ``async for`` directly over it raises ``TypeError``: the
    block is what bounds the transaction.
    """

    __slots__ = ("_make_stream", "_transaction")

    def __init__(
        self,
        transaction: Transaction,
        make_stream: Callable[[TransactionScope], RowStream[_T]],
    ) -> None:
        self._transaction = transaction
        self._make_stream = make_stream

    async def __aenter__(self) -> RowStream[_T]:
        scope = await self._transaction.__aenter__()
        return self._make_stream(scope)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self._transaction.__aexit__(exc_type, exc, tb)

    if not TYPE_CHECKING:  # a type checker should flag `async for` over the block itself

        def __aiter__(self) -> None:
            raise TypeError(
                "client.cursor(...) opens a transaction for the stream: use "
                "`async with client.cursor(...) as rows: async for row in rows: ...`, or "
                "`async for row in tx.cursor(...)` inside `async with client.transaction() as tx`"
            )

    def __repr__(self) -> str:
        return f"<CursorBlock {self._transaction!r}>"
