"""Transactions: one connection for a block, savepoints when nested.

For the breaker a transaction is one call: permission is asked when it
begins, and its outcome (committed, an availability failure anywhere, or an
SQL error) is recorded when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import asyncpg

from wellwon_db.client._guarded import record_outcome
from wellwon_db.client._scope import (
    TransactionScope,
    execute_call,
    executemany_call,
    fetch_call,
    fetchrow_call,
)
from wellwon_db.client._slot import PoolSlot
from wellwon_db.client._write_tracking import record_position
from wellwon_db.config._registry import DatabaseName
from wellwon_db.errors import DatabaseUnavailableError
from wellwon_db.pool._failures import translate_error
from wellwon_db.pool._pool import Connection, DatabasePool
from wellwon_db.pool._session import SessionEffect
from wellwon_db.pool._slots import Holder
from wellwon_db.resilience._retry import is_transaction_retryable
from wellwon_db.telemetry._telemetry import PoolTelemetry

__all__ = [
    "IsolationLevel",
    "Transaction",
    "TransactionScope",
    "execute_call",
    "executemany_call",
    "fetch_call",
    "fetchrow_call",
    "run_in_transaction",
]

_T = TypeVar("_T")
Record = asyncpg.Record
IsolationLevel = Literal["read_committed", "repeatable_read", "serializable"]


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
