"""``async with client.listen(channel) as notifications:``: LISTEN on a connection of its own.

Built on :class:`Listener` (the result cache's mechanism): a dedicated
connection outside the pool, reconnected with backoff after any failure,
checked by a heartbeat. :class:`Notifications` is what the block iterates:
each :class:`Notification` as it arrives, and a :class:`NotificationGap`
wherever notifications may have been missed:

* ``reconnected``: the connection was lost; notifications sent between the
  loss and the new ``LISTEN`` are gone (PostgreSQL keeps none for a session
  that is not listening). The gap comes once listening again, so the
  consumer can re-read what it watches and trust notifications from there on.
* ``overflow``: the consumer fell ``max_queued`` notifications behind; the
  ones after that were dropped until it caught up.

Channel names are identifiers: asyncpg sends ``LISTEN "name"`` with the
name quoted and inner quotes doubled, so any name is safe.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Literal

from wellwon_db.client._guarded import record_outcome
from wellwon_db.client._listener import Listener, ListenerState
from wellwon_db.client._slot import PoolSlot
from wellwon_db.errors import ConfigurationError, DatabaseUnavailableError
from wellwon_db.pool._failures import translate_error

__all__ = [
    "Notification",
    "NotificationGap",
    "Notifications",
    "check_channel",
    "listen_on",
]

#: PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes; a longer name would be cut.
_MAX_CHANNEL_BYTES: Final = 63


@dataclass(frozen=True, slots=True)
class Notification:
    """One ``NOTIFY``: its channel, its payload (``""`` when none) and the sender's backend pid."""

    channel: str
    payload: str
    pid: int


@dataclass(frozen=True, slots=True)
class NotificationGap:
    """Notifications may have been missed since ``since`` (``time.monotonic()``).

    ``reason``: ``reconnected`` (the LISTEN connection was lost and is back)
    or ``overflow`` (the consumer fell behind; ``dropped`` were discarded).
    """

    reason: Literal["reconnected", "overflow"]
    since: float
    dropped: int = 0


def check_channel(channel: str) -> str:
    """``channel`` if it can be listened on; ``ValueError`` (empty, NUL, over 63 bytes) if not."""
    if not isinstance(channel, str) or not channel or "\x00" in channel:
        raise ValueError(f"not a usable channel name: {channel!r}")
    if len(channel.encode()) > _MAX_CHANNEL_BYTES:
        raise ValueError(
            f"channel name {channel[:20]!r}... is longer than PostgreSQL's {_MAX_CHANNEL_BYTES}"
            "-byte identifier limit (the server would cut it, and pg_notify refuses it)"
        )
    return channel


class Notifications:
    """The notifications of a ``client.listen(...)`` block, in order, with gaps marked.

    ``async for item in notifications`` yields :class:`Notification` and
    :class:`NotificationGap` items and ends when the block ends. ``state``
    is the listener's (``listening``, ``reconnecting``, ``stopped``);
    ``dropped`` counts notifications discarded by overflow.
    """

    __slots__ = (
        "_closed",
        "_items",
        "_lost_at",
        "_max_queued",
        "_ready",
        "_started",
        "channels",
        "dropped",
        "listener",
    )

    def __init__(self, channels: tuple[str, ...], max_queued: int) -> None:
        if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 1:
            raise ValueError(f"max_queued must be a count of at least 1, got {max_queued!r}")
        self.channels = channels
        self._max_queued = max_queued
        self._items: collections.deque[Notification | NotificationGap] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._started = False
        self._lost_at: float | None = None
        self.dropped = 0
        #: The connection's keeper, when listening to a real server (``None`` in fakes).
        self.listener: Listener | None = None

    def __repr__(self) -> str:
        return f"<Notifications {list(self.channels)} {self.state} queued={len(self._items)}>"

    @property
    def state(self) -> ListenerState:
        """``listening``, ``reconnecting`` or ``stopped`` (``starting`` before the block)."""
        if self._closed:
            return "stopped"
        if self.listener is None:
            return "listening" if self._started else "starting"
        return self.listener.state

    def __aiter__(self) -> Notifications:
        return self

    async def __anext__(self) -> Notification | NotificationGap:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    # -- fed by the listener (on the event loop) -------------------------------

    def push(self, channel: str, payload: str, pid: int) -> None:
        """A notification arrived; dropped (and a gap marked once) when the queue is full."""
        if self._closed:
            return
        items = self._items
        if len(items) >= self._max_queued:
            self.dropped += 1
            last = items[-1]
            if isinstance(last, NotificationGap) and last.reason == "overflow":
                items[-1] = NotificationGap("overflow", last.since, last.dropped + 1)
            else:  # one marker per run of drops, after what was kept (may exceed the bound by 1)
                items.append(NotificationGap("overflow", time.monotonic(), 1))
            return
        items.append(Notification(channel, payload, pid))
        self._ready.set()

    def lost(self) -> None:
        """The connection was lost: remember since when."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    def listening(self) -> None:
        """Listening (again): after a loss, the consumer learns of the gap."""
        if not self._started:
            self._started = True
            return
        since = self._lost_at if self._lost_at is not None else time.monotonic()
        self._lost_at = None
        self._items.append(NotificationGap("reconnected", since))
        self._ready.set()

    def close(self) -> None:
        """The block ended: iteration stops once what is queued has been read."""
        self._closed = True
        self._ready.set()


@asynccontextmanager
async def listen_on(
    slot: PoolSlot, channels: tuple[str, ...], max_queued: int
) -> AsyncIterator[Notifications]:
    """LISTEN on ``channels`` for the block, on a connection of its own (see ``client.listen``)."""
    names = tuple(dict.fromkeys(check_channel(channel) for channel in channels))
    if not names:
        raise ValueError("listen() needs at least one channel")
    notifications = Notifications(names, max_queued)
    pool = slot.get()
    dsn = slot.listen_dsn
    if dsn is None:
        raise slot.listen_off or ConfigurationError(
            f"the {slot.database} client has no LISTEN address: listen() works on clients "
            "made by a container (its pool opened by start_databases)"
        )
    breaker = slot.breaker
    try:
        breaker.allow()
    except BaseException:
        pool.telemetry.refused("breaker_open")
        raise
    listener = notifications.listener = Listener(
        f"{slot.database}-listen",
        dsn,
        names,
        on_notify=notifications.push,
        on_lost=notifications.lost,
        on_listening=notifications.listening,
        connect_timeout=pool.config.connect_timeout,
        application_name=f"{pool.config.application_name}:listen"[:63],
    )
    started = time.monotonic()
    try:
        await listener.start(retry_in_background=False)
    except BaseException as exc:
        error = (
            DatabaseUnavailableError(
                f"the {slot.database} database did not answer within the connect timeout of "
                f"{pool.config.connect_timeout:g}s (starting to listen)",
                database=str(slot.database),
                may_have_run=False,
            )
            if isinstance(exc, TimeoutError)
            else translate_error(exc, slot.database, "starting to listen", may_have_run=False)
        )
        record_outcome(breaker, error, started)
        if error is exc:
            raise
        raise error from exc
    breaker.record_success(time.monotonic() - started)
    try:
        yield notifications
    finally:
        notifications.close()
        await listener.stop()
