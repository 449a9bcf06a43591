"""Transactions: one connection for a block, savepoints when nested.

For the breaker a transaction is one call: permission is asked when it
begins, and its outcome (committed, an availability failure anywhere, or an
SQL error) is recorded when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar, cast

import asyncpg

from wellwon_db.client._guarded import record_outcome
from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._write_tracking import record_position
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import DatabaseUnavailableError
from wellwon_db.pool._failures import translate_error
from wellwon_db.pool._pool import Connection, DatabasePool
from wellwon_db.pool._raw import RawConnection
from wellwon_db.pool._session import (
    SessionEffect,
    reads_sequence_state,
    session_effect,
    writes_data,
)
from wellwon_db.pool._slots import Holder
from wellwon_db.resilience._retry import is_transaction_retryable
from wellwon_db.telemetry._telemetry import PoolTelemetry

__all__ = ["IsolationLevel", "Transaction", "TransactionScope", "run_in_transaction"]

_T = TypeVar("_T")
Record = asyncpg.Record
IsolationLevel = Literal["read_committed", "repeatable_read", "serializable"]


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
    raises. Using the scope after its block ended raises asyncpg's
    ``InterfaceError`` (the connection went back to the pool).
    """

    __slots__ = ("_connection", "_database", "_lent", "_owner", "_telemetry")

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

    async def _run(
        self,
        call: Callable[[Connection, str, Any, float | None], Awaitable[_T]],
        query: str,
        args: Any,
        timeout: float | None,
        batch: int | None = None,
    ) -> _T:
        connection = self._live()
        effect = session_effect(query)
        owner = self._owner
        holder = owner._holder
        if (
            holder is not None
            and holder.stale_sequences
            and owner.effect < SessionEffect.SEQUENCES  # not this block's own lastval()
            and reads_sequence_state(query)
        ):
            await connection.execute("DISCARD SEQUENCES")  # an earlier borrower's goes
            holder.stale_sequences = False
        if effect > owner.effect:
            owner.effect = effect
        if not owner.wrote and owner.tracks_writes and writes_data(query):
            owner.wrote = True
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
            error = _lost_in_transaction(exc, connection, self._database)
            if telemetry is not None:
                telemetry.finish(span, query, started, error, sent=started, batch=batch)
            if isinstance(error, DatabaseUnavailableError):
                self._owner.effect = SessionEffect.BROKEN
            if error is exc:
                raise
            raise error from exc
        if telemetry is not None:
            telemetry.finish(span, query, started, sent=started, batch=batch)
        return result

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Record]:
        """Run ``query`` with ``args``; all rows."""
        return await self._run(fetch_call, query, args, timeout)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Record | None:
        """Run ``query`` with ``args``; the first row or ``None``."""
        row: Record | None = await self._run(fetchrow_call, query, args, timeout)
        return row

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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionScope]:
        """A savepoint for the block: released on success, rolled back on error."""
        async with self._live().transaction():
            yield self


class Transaction:
    """``async with client.transaction(...) as tx:``; commits on success, rolls back on error.

    ``commit_attempted`` tells, after the block, whether COMMIT was sent.
    """

    __slots__ = (
        "_connection",
        "_holder",
        "_options",
        "_pool",
        "_scope",
        "_slot",
        "_span",
        "_started",
        "_tx",
        "commit_attempted",
        "effect",
        "tracks_writes",
        "wrote",
    )

    def __init__(
        self,
        slot: PoolSlot,
        isolation: IsolationLevel | None,
        readonly: bool,
        deferrable: bool,
    ) -> None:
        self._slot = slot
        self._pool: DatabasePool | None = None
        self._options = (isolation, readonly, deferrable)
        self._connection: Connection | None = None
        self._holder: Holder[Connection] | None = None
        self._scope: TransactionScope | None = None
        self._tx: Any = None
        self._started = 0.0
        self._span: tuple[Any, object] | None = None
        self.effect = SessionEffect.NONE
        self.commit_attempted = False
        #: Record the commit's WAL position (the primary's replicas are open) ...
        self.tracks_writes = slot.track_writes
        #: ... if a statement of the block may have written.
        self.wrote = False

    async def __aenter__(self) -> TransactionScope:
        if self._connection is not None:
            raise RuntimeError("a Transaction object can be entered only once")
        pool = self._pool = self._slot.get()
        breaker = self._slot.breaker
        self._span = pool.telemetry.start_transaction()
        try:
            breaker.allow()
        except BaseException as exc:
            pool.telemetry.refused("breaker_open")
            self._end_span("refused", exc)
            raise
        self._started = started = time.monotonic()
        leases = pool.leases
        try:
            holder = leases.lease_nowait() or await leases.lease(started)
        except BaseException as exc:
            record_outcome(breaker, exc, started)
            self._end_span("not started", exc)
            raise
        # A transaction runs statements the pool does not watch: asyncpg times them.
        connection = leases.lend(holder)
        isolation, readonly, deferrable = self._options
        try:
            tx = connection.transaction(
                isolation=isolation, readonly=readonly, deferrable=deferrable
            )
            await _operation(pool.telemetry, "BEGIN", tx.__aenter__())
        except BaseException as exc:
            # asyncpg may still count a transaction as open: reset fully.
            if isinstance(exc, asyncio.CancelledError):
                # BEGIN may be in flight.
                leases.release_in_background(holder, SessionEffect.RESET)
            else:
                await leases.release(holder, SessionEffect.RESET)
            # Nothing ran: a failed BEGIN is safe to retry.
            error = translate_error(
                exc, pool.database, "starting a transaction", may_have_run=False
            )
            record_outcome(breaker, error, started)
            self._end_span("not started", error)
            if error is exc:
                raise
            raise error from exc
        self._connection = connection
        self._holder = holder
        self._tx = tx
        self._scope = TransactionScope(connection, pool.database, self, pool.telemetry)
        return self._scope

    def _end_span(self, outcome: str, error: BaseException | None) -> None:
        if self._pool is not None:
            self._pool.telemetry.end_transaction(self._span, outcome, error)
        self._span = None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        holder, pool, connection = self._holder, self._pool, self._connection
        if holder is None or pool is None or connection is None:
            raise RuntimeError("Transaction.__aexit__ called without __aenter__")
        leases = pool.leases
        breaker = self._slot.breaker
        if self._scope is not None:
            self._scope._end()  # statements after the block must not reach the pool's connection
        if isinstance(exc, asyncio.CancelledError):
            # The connection may be mid-statement: no rollback round trip for
            # a cancelled caller; the background release rolls back or discards.
            record_outcome(breaker, exc, self._started)
            self._end_span("cancelled", exc)
            # Rolled back and reset in the background: asyncpg's own record of
            # the open transaction must go too, or the next lease nests in it.
            leases.release_in_background(holder, max(self.effect, SessionEffect.RESET))
            return
        if exc is None and connection.is_closed():
            # Lost while the block ran (a backend terminated while the
            # application paused): COMMIT is never sent, so nothing committed.
            lost = _lost_before_commit(pool.database)
            record_outcome(breaker, lost, self._started)
            self._end_span("rollback", lost)
            await leases.release(holder, SessionEffect.BROKEN)
            raise lost
        try:
            if exc is None:
                self.commit_attempted = True
                try:
                    await _operation(
                        pool.telemetry, "COMMIT", self._tx.__aexit__(None, None, None)
                    )
                except BaseException as error:
                    translated = _commit_failure(error, connection, pool.database)
                    if (
                        isinstance(translated, DatabaseUnavailableError)
                        and not translated.during_commit
                    ):
                        self.commit_attempted = False  # refused before it was sent
                    record_outcome(breaker, translated, self._started)
                    self._end_span("commit failed", translated)
                    if translated is error:
                        raise
                    raise translated from error
                breaker.record_success(time.monotonic() - self._started)
                self._end_span("commit", None)
                if self.wrote and self.tracks_writes:
                    try:
                        await record_position(self._slot, connection)
                    except Exception:
                        # Committed; only the position could not be read (recorded as unknown).
                        await leases.release(holder, SessionEffect.BROKEN)
                        return
            else:
                record_outcome(breaker, exc, self._started)
                # A failed rollback must not hide the error that caused it;
                # the connection is discarded on release when it is unusable.
                with contextlib.suppress(Exception):
                    await _operation(
                        pool.telemetry, "ROLLBACK", self._tx.__aexit__(exc_type, exc, tb)
                    )
                self._end_span("rollback", exc)
        except asyncio.CancelledError:
            # Cancelled mid-COMMIT or mid-ROLLBACK: the statement may still be
            # in flight and its outcome is unknown, so the connection is
            # terminated in the background and the caller does not wait.
            self._end_span("cancelled", None)
            leases.release_in_background(holder, SessionEffect.BROKEN)
            raise
        except BaseException:
            self._end_span("cancelled", None)
            await leases.release(holder, max(self.effect, SessionEffect.RESET))
            raise
        await leases.release(holder, self.effect)

    def __repr__(self) -> str:
        return f"<Transaction {self._slot.database} options={self._options}>"


async def _operation(telemetry: PoolTelemetry, name: str, statement: Awaitable[Any]) -> None:
    """``BEGIN``, ``COMMIT`` or ``ROLLBACK``, sent by asyncpg, as an operation of its own.

    Its span is a child of the transaction's; ``db.operation.name`` is set,
    since the client knows the statement without reading any text.
    """
    span = telemetry.start(name, operation=name)
    started = time.monotonic()
    try:
        await statement
    except BaseException as exc:
        telemetry.finish(span, name, started, exc, sent=started, operation=name)
        raise
    telemetry.finish(span, name, started, sent=started, operation=name)


def _lost_in_transaction(
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


def _lost_before_commit(database: DatabaseName) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"the {database} database connection was lost before COMMIT: the transaction was "
        "rolled back (nothing of it committed; it is safe to run again)",
        database=str(database),
        may_have_run=False,
    )


def _commit_failure(
    error: BaseException, connection: Connection, database: DatabaseName
) -> BaseException:
    """COMMIT's failure, translated: a lost connection or a timeout leaves the outcome unknown.

    ``InterfaceError`` on a connection asyncpg knows closed is raised before
    COMMIT is sent (nothing committed); PostgreSQL's errors (a deferred
    constraint, a serialization failure at commit) mean it did not commit
    and pass through.
    """
    if isinstance(error, asyncpg.InterfaceError) and connection.is_closed():
        return _lost_before_commit(database)
    if isinstance(error, TimeoutError):
        return DatabaseUnavailableError(
            f"COMMIT on the {database} database timed out: the transaction may or may not "
            "have committed (outcome unknown; check before running it again)",
            database=str(database),
            during_commit=True,
        )
    translated = translate_error(error, database, "committing", during_commit=True)
    if isinstance(translated, DatabaseUnavailableError):
        translated.args = (
            f"{translated}; the transaction may or may not have committed (outcome unknown; "
            "check before running it again)",
        )
    return translated


async def run_in_transaction(
    slot: PoolSlot,
    fn: Callable[..., Awaitable[_T]],
    args: tuple[Any, ...],
    *,
    isolation: IsolationLevel | None,
    readonly: bool,
    deferrable: bool,
    attempts: int | None,
) -> _T:
    """Run ``fn(scope, *args)`` in a transaction; re-run it whole when that is safe."""

    async def once() -> _T:
        async with Transaction(slot, isolation, readonly, deferrable) as scope:
            return await fn(scope, *args)

    started = time.monotonic()
    try:
        return await once()
    except Exception as exc:
        policy = slot.retry
        limit = attempts if attempts is not None else policy.config.attempts
        if limit <= 1 or not is_transaction_retryable(exc):
            raise
        return await policy.retry_after(
            exc, started, once, is_transaction_retryable, attempts=limit
        )
