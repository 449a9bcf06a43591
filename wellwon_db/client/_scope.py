"""``TransactionScope``: the query API inside a transaction, all on its one connection.

Statements inside a transaction do not ask the breaker (the transaction is
one call for it, see ``_transaction.py``); each is one CLIENT span, and a
lost connection is ``DatabaseUnavailableError`` (nothing of the transaction
committed). COPY and streaming cursors take the same path.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import asyncpg

from wellwon_db.client._copy import (
    Records,
    copy_call,
    copy_from_query,
    copy_from_table,
    copy_records_to_table,
    copy_to_table,
)
from wellwon_db.client._cursor import RowStream, check_prefetch
from wellwon_db.client._rows import (
    check_row_options,
    fetch_call_for,
    fetchrow_call_for,
    map_row,
    map_rows,
    mapper,
)
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import DatabaseUnavailableError
from wellwon_db.pool._failures import translate_error
from wellwon_db.pool._pool import Connection
from wellwon_db.pool._raw import RawConnection
from wellwon_db.pool._session import (
    SessionEffect,
    reads_sequence_state,
    session_effect,
    writes_data,
)
from wellwon_db.telemetry._telemetry import PoolTelemetry

if TYPE_CHECKING:
    from wellwon_db.client._transaction import Transaction

__all__ = [
    "TransactionScope",
    "execute_call",
    "executemany_call",
    "fetch_call",
    "fetchrow_call",
    "lost_in_transaction",
]

_T = TypeVar("_T")
_M = TypeVar("_M")
_R = TypeVar("_R", bound=asyncpg.Record)
Record = asyncpg.Record


# Module-level calls so that the per-query path allocates no closures.
def fetch_call(c: Connection, q: str, a: Any, t: float | None) -> Awaitable[list[Record]]:
    """``connection.fetch``."""
    return c.fetch(q, *a, timeout=t)


def fetchrow_call(c: Connection, q: str, a: Any, t: float | None) -> Awaitable[Any]:
    """``connection.fetchrow``."""
    return c.fetchrow(q, *a, timeout=t)


def execute_call(c: Connection, q: str, a: Any, t: float | None) -> Awaitable[str]:
    """``connection.execute``."""
    return c.execute(q, *a, timeout=t)


def executemany_call(c: Connection, q: str, a: Any, t: float | None) -> Awaitable[None]:
    """``connection.executemany``."""
    return c.executemany(q, a, timeout=t)


class TransactionScope:
    """The query methods inside a transaction, all on its one connection.

    ``transaction()`` opens a savepoint: rolled back alone when its block
    raises. ``cursor()`` streams rows; the ``copy_*`` methods run COPY. Using
    the scope after its block ended raises asyncpg's ``InterfaceError`` (the
    connection went back to the pool).
    """

    __slots__ = ("_connection", "_database", "_lent", "_owner", "_streams", "_telemetry")

    def __init__(
        self,
        connection: Connection,
        database: DatabaseName,
        owner: Transaction,
        telemetry: PoolTelemetry | None = None,
    ) -> None:
        self._connection: Connection | None = connection
        self._lent: RawConnection | None = None
        self._database = database
        self._owner = owner
        self._telemetry = telemetry
        #: Cursors being read: ended (their spans closed) with the block.
        self._streams: set[RowStream[Any]] = set()

    def _live(self) -> Connection:
        connection = self._connection
        if connection is None:
            raise asyncpg.InterfaceError(
                "cannot use the transaction scope: its block ended and the connection was "
                "released back to the pool; run statements inside the `async with` block"
            )
        return connection

    def _end(self) -> None:
        self._connection = None
        if self._lent is not None:
            self._lent.detach()
        for stream in list(self._streams):
            stream._abandon()

    @property
    def connection(self) -> Connection:
        """The raw connection, lent for the block; using it marks the session for a reset.

        Using it after the block raises asyncpg's ``InterfaceError``.
        """
        connection = self._live()
        self._owner.effect = max(self._owner.effect, SessionEffect.RESET)
        self._owner.wrote = True  # anything may be done with it
        if self._lent is None:
            self._lent = RawConnection(connection)
        return cast("Connection", self._lent)

    def _note(self, query: str) -> None:
        """What ``query`` leaves on the session, and whether it may write, for the release."""
        owner = self._owner
        effect = session_effect(query)
        if effect > owner.effect:
            owner.effect = effect
        if not owner.wrote and owner.tracks_writes and writes_data(query):
            owner.wrote = True

    async def _clear_stale_sequences(self, connection: Connection, query: str) -> None:
        """``DISCARD SEQUENCES`` before ``query`` reads ``lastval()``/``currval()`` on a
        session holding an earlier borrower's sequence state (not this block's own)."""
        owner = self._owner
        holder = owner._holder
        if (
            holder is not None
            and holder.stale_sequences
            and owner.effect < SessionEffect.SEQUENCES
            and reads_sequence_state(query)
        ):
            await connection.execute("DISCARD SEQUENCES")
            holder.stale_sequences = False

    def _failed(self, exc: BaseException, connection: Connection) -> BaseException:
        """``exc`` of a statement on ``connection``, translated; a lost one marks it broken."""
        error = lost_in_transaction(exc, connection, self._database)
        if isinstance(error, DatabaseUnavailableError):
            self._owner.effect = SessionEffect.BROKEN
        return error

    async def _run(
        self,
        call: Callable[[Connection, str, Any, float | None], Awaitable[_T]],
        query: str,
        args: Any,
        timeout: float | None,
        batch: int | None = None,
    ) -> _T:
        connection = self._live()
        await self._clear_stale_sequences(connection, query)
        self._note(query)
        telemetry = self._telemetry
        span = (
            telemetry.start(query, parameterized=bool(args), batch=batch)
            if telemetry is not None
            else None
        )
        started = time.monotonic()
        try:
            result = await call(connection, query, args, timeout)
        except BaseException as exc:
            error = self._failed(exc, connection)
            if telemetry is not None:
                telemetry.finish(span, query, started, error, sent=started, batch=batch)
            if error is exc:
                raise
            raise error from exc
        if telemetry is not None:
            telemetry.finish(span, query, started, sent=started, batch=batch)
        return result

    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[Record]: ...
    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, model: type[_M]
    ) -> list[_M]: ...
    @overload
    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, record_class: type[_R]
    ) -> list[_R]: ...
    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> list[Any]:
        """Run ``query`` with ``args``; all rows (as ``model`` or ``record_class`` when given)."""
        if model is None and record_class is None:
            return await self._run(fetch_call, query, args, timeout)
        check_row_options(model, record_class)
        call = fetch_call if record_class is None else fetch_call_for(record_class)
        rows: list[Any] = await self._run(call, query, args, timeout)
        return rows if model is None else map_rows(rows, model)

    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Record | None: ...
    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, model: type[_M]
    ) -> _M | None: ...
    @overload
    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, record_class: type[_R]
    ) -> _R | None: ...
    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """Run ``query`` with ``args``; the first row (as ``model`` ...) or ``None``."""
        if model is None and record_class is None:
            return await self._run(fetchrow_call, query, args, timeout)
        check_row_options(model, record_class)
        call = fetchrow_call if record_class is None else fetchrow_call_for(record_class)
        row = await self._run(call, query, args, timeout)
        return row if model is None else map_row(row, model)

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run ``query`` with ``args``; value ``column`` of the first row, or ``None``."""
        row: Record | None = await self._run(fetchrow_call, query, args, timeout)
        return None if row is None else row[column]

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run ``query`` with ``args``; the command status."""
        return await self._run(execute_call, query, args, timeout)

    async def executemany(
        self, query: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run ``query`` once per tuple in ``args``."""
        sets = args if isinstance(args, list) else list(args)
        await self._run(executemany_call, query, sets, timeout, batch=len(sets))

    @overload
    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
    ) -> RowStream[Record]: ...
    @overload
    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
        model: type[_M],
    ) -> RowStream[_M]: ...
    @overload
    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
        record_class: type[_R],
    ) -> RowStream[_R]: ...
    def cursor(
        self,
        query: str,
        *args: Any,
        prefetch: int | None = None,
        timeout: float | None = None,
        model: type[Any] | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> RowStream[Any]:
        """``async for row in tx.cursor(query, *args)``: rows streamed ``prefetch`` at a time.

        A server-side cursor (a portal) of this transaction: one round trip
        per ``prefetch`` rows (default 50), so only a batch is in memory.
        ``timeout`` bounds each fetch (seconds). Nothing is sent before the
        first row is asked for; the stream ends with the transaction's block.
        Raises ``ValueError`` for a ``prefetch`` below 1.
        """
        check_prefetch(prefetch)
        check_row_options(model, record_class)
        return RowStream(
            self,
            query,
            args,
            prefetch=prefetch,
            timeout=timeout,
            record_class=record_class,
            make=None if model is None else mapper(model),
        )

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Records,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        where: str | None = None,
    ) -> str:
        """COPY ``records`` (tuples, or an async iterable of them) into a table; ``"COPY n"``."""
        call = copy_records_to_table(table_name, records, columns, schema_name, where)
        return await self._run(copy_call, call.statement, call, timeout)

    async def copy_to_table(
        self,
        table_name: str,
        *,
        source: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> str:
        """COPY ``source`` (a path, a file, an async iterable of bytes) into a table."""
        call = copy_to_table(table_name, source, columns, schema_name, options)
        return await self._run(copy_call, call.statement, call, timeout)

    async def copy_from_table(
        self,
        table_name: str,
        *,
        output: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> str:
        """COPY a table to ``output`` (a path, a file, an async function taking bytes)."""
        call = copy_from_table(table_name, output, columns, schema_name, options)
        return await self._run(copy_call, call.statement, call, timeout)

    async def copy_from_query(
        self, query: str, *args: Any, output: Any, timeout: float | None = None, **options: Any
    ) -> str:
        """COPY the rows of ``query`` (with ``args``) to ``output``."""
        call = copy_from_query(query, args, output, options)
        return await self._run(copy_call, call.statement, call, timeout)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionScope]:
        """A savepoint for the block: released on success, rolled back on error."""
        async with self._live().transaction():
            yield self


def lost_in_transaction(
    exc: BaseException, connection: Connection, database: DatabaseName
) -> BaseException:
    """A statement's failure inside a transaction, translated.

    A lost connection rolls the transaction back on the server, so nothing of
    it can have committed (``may_have_run`` false: running it again is safe).
    asyncpg reports a connection it already knows closed as a bare
    ``InterfaceError``; that is a lost connection too.
    """
    if isinstance(exc, asyncpg.InterfaceError) and connection.is_closed():
        return DatabaseUnavailableError(
            f"the {database} database connection was lost during a transaction, which "
            "was rolled back (nothing of it committed; it is safe to run again)",
            database=str(database),
            may_have_run=False,
        )
    return translate_error(exc, database, "running a query in a transaction", may_have_run=False)
