"""Fan-out: one statement on every physical shard (or some), answers and errors per shard.

Each shard's call runs as its own task through that shard's client (its
breaker, pool and retry policy), at most ``concurrency`` at a time. The
fan-out returns when every shard has answered or failed, or when
``timeout`` seconds have passed: a shard still running then is reported as
timed out and its task is cancelled and left to clean up on its own, so a
dead or silent shard never delays the answer beyond the timeout. An open
breaker answers at once (``CircuitOpenError``) without touching the network.

With ``allow_partial=False`` (the default) a result missing any shard
raises :class:`PartialResultError`, which carries the partial result; with
``True`` the result says what is missing (``complete``, ``errors``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg

from wellwon_db.client._client import DatabaseClient
from wellwon_db.errors import PartialResultError
from wellwon_db.shards._set import PhysicalShard
from wellwon_db.telemetry._instruments import record_fan_out

__all__ = ["FanOut", "FanOutResult"]

logger = logging.getLogger("wellwon_db.shards")

_T = TypeVar("_T")
Record = asyncpg.Record

#: Tasks of shards given up on that are still finishing (kept so they are not collected).
_abandoned: set[asyncio.Task[Any]] = set()


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the shard was already reported as timed out


class ShardTimeoutError(TimeoutError):
    """A shard that had not answered when the fan-out's timeout ran out."""


@dataclass(frozen=True, slots=True)
class FanOutResult(Generic[_T]):
    """What a fan-out got: per physical shard database, its answer or its error.

    ``results`` maps each database that answered to its answer (rows for
    ``fetch``, a value for ``fetchval``, a status for ``execute``);
    ``errors`` each database that did not to its exception (a
    ``ShardTimeoutError``, a ``TimeoutError`` subclass, when it did not answer
    in time). ``shards`` gives the logical shards each database holds;
    ``elapsed`` is the fan-out's duration in seconds.
    """

    results: dict[str, _T]
    errors: dict[str, BaseException]
    shards: dict[str, tuple[int, ...]]
    elapsed: float = 0.0
    _order: tuple[str, ...] = field(default=(), repr=False)

    @property
    def complete(self) -> bool:
        """Whether every shard asked answered."""
        return not self.errors

    @property
    def asked(self) -> tuple[str, ...]:
        """The databases asked, in placement order."""
        return self._order

    @property
    def answered(self) -> tuple[str, ...]:
        """The databases that answered, in placement order."""
        return tuple(name for name in self._order if name in self.results)

    @property
    def failed(self) -> tuple[str, ...]:
        """The databases that failed or timed out, in placement order."""
        return tuple(name for name in self._order if name in self.errors)

    def concat(self) -> list[Any]:
        """Every shard's rows, one shard after another in placement order."""
        rows: list[Any] = []
        for name in self.answered:
            rows.extend(_rows(name, self.results[name]))
        return rows

    def merge(
        self, key: Callable[[Any], Any], *, reverse: bool = False, limit: int | None = None
    ) -> list[Any]:
        """Every shard's rows merged into one order by ``key`` (at most ``limit`` rows).

        Each shard's rows must already be in that order (an ``ORDER BY`` of
        the same key in the statement): the merge is a k-way merge, not a sort.
        With ``limit``, ask each shard for ``LIMIT limit`` rows too.
        """
        runs = [_rows(name, self.results[name]) for name in self.answered]
        merged = heapq.merge(*runs, key=key, reverse=reverse)
        return (
            [row for _, row in zip(range(limit), merged, strict=False)] if limit else list(merged)
        )

    def sum(self, column: int | str | None = None) -> Any:
        """The sum of the answers (``fetchval``), or of ``column`` over every row (``fetch``).

        ``None`` values count as nothing; a result with no value sums to 0.
        """
        total: Any = 0
        for name in self.answered:
            answer = self.results[name]
            if column is None:
                values: Iterable[Any] = [answer]
            else:
                values = (row[column] for row in _rows(name, answer))
            for value in values:
                if value is not None:
                    total = total + value
        return total

    def count(self) -> int:
        """The number of rows all shards returned (``fetch``)."""
        return sum(len(_rows(name, self.results[name])) for name in self.answered)

    def describe(self) -> dict[str, Any]:
        """Asked, answered and failed databases and each error's type and message (for logs)."""
        return {
            "complete": self.complete,
            "asked": list(self.asked),
            "answered": list(self.answered),
            "failed": {
                name: f"{type(error).__name__}: {error}" for name, error in self.errors.items()
            },
            "elapsed_ms": round(self.elapsed * 1000, 3),
        }


def _rows(name: str, answer: Any) -> Sequence[Any]:
    if not isinstance(answer, list):
        raise TypeError(
            f"the {name} shard's answer is a {type(answer).__name__}, not rows: combine rows of "
            "fan_out().fetch(), or use sum() for fetchval()"
        )
    return answer


class FanOut:
    """The statements of one fan-out configuration: ``fetch``, ``fetchrow``, ``fetchval``,
    ``execute`` and ``run``, each over the chosen physical shards.

    Made by ``ShardedClient.fan_out(...)``; ``timeout`` and ``concurrency``
    default to ``PG_SHARDS_FANOUT_TIMEOUT_SEC`` and ``PG_SHARDS_FANOUT_CONCURRENCY``.
    The statement timeout of each shard's call is the fan-out's timeout.
    """

    __slots__ = ("_allow_partial", "_before", "_concurrency", "_targets", "_timeout")

    def __init__(
        self,
        targets: Sequence[PhysicalShard],
        *,
        timeout: float,
        concurrency: int,
        allow_partial: bool,
        before: Callable[[str | None], None],
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"a fan-out timeout must be positive, got {timeout!r}")
        if concurrency < 1:
            raise ValueError(f"a fan-out concurrency must be at least 1, got {concurrency!r}")
        self._targets = tuple(targets)
        self._timeout = timeout
        self._concurrency = concurrency
        self._allow_partial = allow_partial
        #: Checks a statement against the task's routing rules before anything is sent.
        self._before = before

    def __repr__(self) -> str:
        names = ", ".join(str(target.database) for target in self._targets)
        return f"<FanOut {names} timeout={self._timeout:g}s concurrency={self._concurrency}>"

    async def fetch(self, query: str, *args: Any) -> FanOutResult[list[Record]]:
        """Run ``query`` on each shard; its rows per shard."""
        self._before(query)
        timeout = self._timeout
        return await self._gather(lambda client: client.fetch(query, *args, timeout=timeout))

    async def fetchrow(self, query: str, *args: Any) -> FanOutResult[Record | None]:
        """Run ``query`` on each shard; its first row (or ``None``) per shard."""
        self._before(query)
        timeout = self._timeout
        return await self._gather(lambda client: client.fetchrow(query, *args, timeout=timeout))

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> FanOutResult[Any]:
        """Run ``query`` on each shard; one value per shard (``result.sum()`` adds them up)."""
        self._before(query)
        timeout = self._timeout
        return await self._gather(
            lambda client: client.fetchval(query, *args, column=column, timeout=timeout)
        )

    async def execute(self, query: str, *args: Any) -> FanOutResult[str]:
        """Run ``query`` on each shard; its command status per shard.

        Each shard commits on its own: there is no transaction across shards,
        and a failed shard does not undo the others.
        """
        self._before(query)
        timeout = self._timeout
        return await self._gather(lambda client: client.execute(query, *args, timeout=timeout))

    async def run(self, fn: Callable[[DatabaseClient], Awaitable[_T]]) -> FanOutResult[_T]:
        """``await fn(client)`` with each shard's client (a transaction per shard, several
        statements): the routing rules of a write apply, since ``fn`` may write anything."""
        self._before(None)
        return await self._gather(fn)

    async def _gather(self, call: Callable[[DatabaseClient], Awaitable[_T]]) -> FanOutResult[_T]:
        started = time.monotonic()
        gate = asyncio.Semaphore(self._concurrency)

        async def one(target: PhysicalShard) -> _T:
            if target.down is not None:  # its pool never opened (a tolerant start)
                raise target.down
            async with gate:
                return await call(target.client)

        tasks = {
            asyncio.ensure_future(one(target)): str(target.database) for target in self._targets
        }
        try:
            done, pending = await asyncio.wait(tasks, timeout=self._timeout)
        except BaseException:
            _abandon(tasks)
            raise
        _abandon(pending)
        results: dict[str, _T] = {}
        errors: dict[str, BaseException] = {}
        outcomes = []
        for task, name in tasks.items():
            if task in done:
                error = asyncio.CancelledError() if task.cancelled() else task.exception()
                if error is None:
                    results[name] = task.result()
                    outcomes.append((name, "answered"))
                else:
                    errors[name] = error
                    outcomes.append((name, "failed"))
            else:
                errors[name] = ShardTimeoutError(
                    f"the {name} shard did not answer within the fan-out's {self._timeout:g}s"
                )
                outcomes.append((name, "timed_out"))
        elapsed = time.monotonic() - started
        record_fan_out(outcomes, elapsed, not errors)
        result = FanOutResult(
            results,
            errors,
            {str(target.database): target.shards for target in self._targets},
            elapsed,
            tuple(tasks.values()),
        )
        if errors:
            summary = "; ".join(
                f"{name}: {type(error).__name__}: {error}" for name, error in errors.items()
            )
            message = f"{len(results)} of {len(tasks)} shards answered; missing {summary}"
            if not self._allow_partial:
                raise PartialResultError(
                    f"{message} (pass allow_partial=True to get the partial result)",
                    result=result,
                )
            logger.warning("partial fan-out: %s", message)
        return result


def _abandon(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` without waiting: a cancelled query on a silent network can wait in
    asyncpg's clean-up for its cancel request, which must not hold the caller."""
    for task in tasks:
        if not task.done():
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget)
