"""The statement watchdog: the command timeout of single statements, without a timer each.

asyncpg arms an event-loop timer for every statement run with a timeout;
on uvloop that costs about as much as the rest of the pool's per-call work
(``docs/performance.md``). A single statement run by a client (no explicit
``timeout=``) is instead marked on its holder with :func:`watch`; the
pool's watchdog task looks every tenth of the command timeout and, for a
statement past it, cancels the task awaiting it (:func:`cancel_overdue`),
as ``asyncio.timeout`` would. asyncpg answers a cancelled statement with a
cancel request to the server, so the server stops it too. The caller's
``except CancelledError`` asks :func:`timed_out` whether the cancellation
was the watchdog's and then raises :func:`timeout_error` instead.

A statement is cancelled between ``command_timeout`` and ``1.1 x
command_timeout`` after it began (at least 10 ms, at most 1 s late).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from wellwon_db.pool._slots import Holder

__all__ = ["cancel_overdue", "timed_out", "timeout_error", "watch"]

_current_task = asyncio.current_task


def watch(holder: Holder[Any], since: float, task: Any = None) -> None:
    """Watch the single statement about to run on ``holder``'s connection.

    ``since`` (``time.monotonic()``) is when it began; ``task`` the task
    awaiting it (default: the one holding the lease). The watch ends when
    the connection is released.
    """
    if task is None:
        task = holder.owner
    else:
        holder.owner = task
    holder.watch_base = task.cancelling() if task is not None else 0
    holder.overdue = False
    holder.watch_since = since


def timed_out(holder: Holder[Any]) -> bool:
    """Whether the ``CancelledError`` just caught is the watchdog's (then it is uncancelled).

    Decided as ``asyncio.timeout`` decides: only when no other cancellation
    of the task is pending, counted from when the statement began.
    """
    if not holder.overdue:
        return False
    holder.overdue = False
    holder.watch_since = 0.0
    task = _current_task()
    return task is not None and task.uncancel() <= holder.watch_base


def timeout_error(database: str, seconds: float) -> TimeoutError:
    """The error of a statement the watchdog cancelled."""
    return TimeoutError(
        f"a statement on the {database} database ran past the command timeout of "
        f"{seconds:g}s; the server was asked to cancel it"
    )


def cancel_overdue(holders: Iterable[Holder[Any]], now: float, limit: float) -> int:
    """Cancel the awaits of watched statements older than ``limit`` seconds; how many."""
    cancelled = 0
    for holder in holders:
        since = holder.watch_since
        if since and not holder.overdue and now - since > limit:
            task = holder.owner
            if isinstance(task, asyncio.Task) and not task.done():
                holder.overdue = True
                task.cancel()
                cancelled += 1
    return cancelled
