"""What the fakes answer for cursors, COPY and LISTEN (``_fake_clients.py`` uses them).

* A cursor yields the rows scripted for its query, as ``fetch`` would, each
  mapped to ``model`` when given; recorded as a ``cursor`` call.
* COPY is recorded (``copy_records_to_table`` with the records as its args;
  the others with their source or output) under the text of the ``COPY``
  statement it stands for (``COPY items (id, name) FROM STDIN``); it returns
  the status scripted for that text, else ``COPY <records>`` or ``COPY 0``.
  Nothing is read from a source or written to an output.
* ``listen()`` gives a real :class:`Notifications` fed by the test:
  ``fake.notify(channel, payload)`` delivers to every open ``listen`` block
  on that channel, ``fake.simulate_reconnect()`` puts a ``NotificationGap``
  in each. A ``NOTIFY`` run through ``fake.execute`` delivers nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg

from wellwon_db.client._copy import CopyCall
from wellwon_db.client._cursor import CursorBlock, RowStream
from wellwon_db.client._notifications import Notifications, check_channel
from wellwon_db.client._rows import check_row_options, map_rows
from wellwon_db.client._scope import TransactionScope
from wellwon_db.testing._scripting import FakeCall, Scripted, rows_of

__all__ = ["FakeCursorBlock", "FakeListeners", "FakeRowStream", "fake_copy", "fake_rows"]


def fake_rows(
    fake: Scripted,
    method: str,
    query: str,
    args: tuple[Any, ...],
    in_transaction: bool,
    model: type[Any] | None,
    record_class: type[asyncpg.Record] | None,
) -> list[Any]:
    """The scripted rows of ``query`` (``FakeRecord`` whatever ``record_class`` says), mapped."""
    check_row_options(model, record_class)
    rows = rows_of(fake._answer(method, query, args, in_transaction))
    return rows if model is None else map_rows(rows, model)


class FakeRowStream(RowStream[Any]):
    """A cursor over scripted rows (already read when made)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:  # no scope, no connection: nothing to call
        self._rows = rows
        self._state = "open"

    def __repr__(self) -> str:
        return f"<FakeRowStream {len(self._rows)} rows left>"

    async def __anext__(self) -> Any:
        if not self._rows:
            raise StopAsyncIteration
        return self._rows.pop(0)


class FakeCursorBlock(CursorBlock[Any]):
    """``client.cursor(...)`` of a fake: a recorded fake transaction around a scripted stream."""

    __slots__ = ("_block", "_stream")

    def __init__(
        self,
        transaction: AbstractAsyncContextManager[TransactionScope],
        stream: Callable[[TransactionScope], RowStream[Any]],
    ) -> None:
        self._block = transaction
        self._stream = stream

    def __repr__(self) -> str:
        return "<FakeCursorBlock>"

    async def __aenter__(self) -> RowStream[Any]:
        return self._stream(await self._block.__aenter__())

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self._block.__aexit__(exc_type, exc, tb)


async def fake_copy(fake: Scripted, call: CopyCall, in_transaction: bool) -> str:
    """Record ``call``; the status scripted for its statement, else ``COPY <n>``."""
    if call.method == "copy_records_to_table":
        records = call.options["records"]
        if hasattr(records, "__aiter__"):
            rows = tuple([tuple(record) async for record in records])
        else:
            rows = tuple(tuple(record) for record in records)
        status = f"COPY {len(rows)}"
    else:
        rows = (call.options.get("source", call.options.get("output")),)
        status = "COPY 0"
    answer = fake._answer(call.method, call.statement, rows, in_transaction)
    return answer if isinstance(answer, str) else status


class FakeListeners:
    """The open ``listen()`` blocks of a fake client, fed by the test."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: list[Notifications] = []

    def listen(
        self, fake: Scripted, channels: tuple[str, ...], max_queued: int
    ) -> AbstractAsyncContextManager[Notifications]:
        """A block listening on ``channels`` (recorded as a ``listen`` call)."""
        names = tuple(dict.fromkeys(check_channel(channel) for channel in channels))
        notifications = Notifications(names, max_queued)
        return self._block(fake, notifications)

    @asynccontextmanager
    async def _block(
        self, fake: Scripted, notifications: Notifications
    ) -> AsyncIterator[Notifications]:
        fake.calls.append(FakeCall("listen", args=notifications.channels))
        notifications.listening()
        self._open.append(notifications)
        try:
            yield notifications
        finally:
            self._open.remove(notifications)
            notifications.close()

    def notify(self, channel: str, payload: str = "", pid: int = 0) -> int:
        """Deliver a notification to every open block on ``channel``; how many got it."""
        reached = [n for n in self._open if channel in n.channels]
        for notifications in reached:
            notifications.push(channel, payload, pid)
        return len(reached)

    def reconnect(self) -> None:
        """Every open block gets a ``NotificationGap("reconnected")``, as after a lost link."""
        for notifications in self._open:
            notifications.lost()
            notifications.listening()
