"""A long-lived LISTEN on a dedicated connection, outside the pool, that survives failures.

LISTEN needs a session of its own (it cannot go through a pool that hands
the connection to others, nor through PgBouncer in transaction mode). The
:class:`Listener` keeps one connection, listens on its channels, and when the
connection is lost (terminated, server restart, network cut) says so at once
(``on_lost``), reconnects with backoff (never a hot loop), listens again and
says so (``on_listening``): notifications sent in between are lost, so a
subscriber must treat the gap as "anything may have changed".

A silent network (no FIN, no RST) is noticed by a heartbeat: a ``SELECT 1``
every ``heartbeat_sec``, bounded by ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal, TypeAlias

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from wellwon_db.config._credentials import ConnectParams
from wellwon_db.pool import _fork

__all__ = ["Listener", "ListenerState", "quote_identifier"]

logger = logging.getLogger("wellwon_db.listener")

#: ``starting``, ``listening``, ``reconnecting`` (lost, trying again), ``stopped``.
ListenerState: TypeAlias = Literal["starting", "listening", "reconnecting", "stopped"]

_BACKOFF_MAX: Final = 5.0


def quote_identifier(name: str) -> str:
    """``name`` as a PostgreSQL identifier: double-quoted, inner quotes doubled.

    Raises ``ValueError`` for an empty name or one with a NUL character, which
    no identifier can hold.
    """
    if not name or "\x00" in name:
        raise ValueError(f"not a usable identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


class Listener:
    """LISTEN on ``channels`` over a connection of its own, reconnecting after failures.

    ``on_notify(channel, payload, pid)`` is called for every notification
    (``pid``: the sending backend's);
    ``on_lost()`` when the connection is found lost (before any reconnect);
    ``on_listening()`` each time the listener is (again) listening. All three
    are synchronous and run on the event loop. ``await on_connect(connection)``
    runs after LISTEN and before the listener counts as listening (to read
    what must be known before trusting notifications); if it fails, the
    connection is dropped and tried again.
    """

    def __init__(
        self,
        name: str,
        dsn: str | ConnectParams,
        channels: Sequence[str],
        *,
        on_notify: Callable[[str, str, int], None],
        on_lost: Callable[[], None] = lambda: None,
        on_listening: Callable[[], None] = lambda: None,
        on_connect: Callable[[asyncpg.Connection[Any]], Awaitable[None]] | None = None,
        connect_timeout: float = 10.0,
        heartbeat_sec: float = 2.0,
        application_name: str | None = None,
    ) -> None:
        self.name = name
        # The database's password, TLS and session settings apply here too.
        self._connect = dsn if isinstance(dsn, ConnectParams) else ConnectParams(dsn)
        self._channels = tuple(channels)
        self._on_notify = on_notify
        self._on_lost = on_lost
        self._on_listening = on_listening
        self._on_connect = on_connect
        self._listening = asyncio.Event()
        self._connect_timeout = connect_timeout
        self._heartbeat_sec = heartbeat_sec
        self._application_name = application_name or f"wellwon_db:{name}:listen"
        self._connection: asyncpg.Connection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._fork_generation = _fork.generation
        self._lost = asyncio.Event()
        self.state: ListenerState = "starting"
        #: Times the connection was re-established after a loss.
        self.reconnects = 0
        #: ``time.monotonic()`` of the last loss, ``None`` while listening since start.
        self.lost_at: float | None = None

    def __repr__(self) -> str:
        return f"<Listener {self.name} {self.state} channels={list(self._channels)}>"

    async def start(self, *, retry_in_background: bool = True) -> None:
        """Listen now, or (when the server cannot be reached) keep trying in the background.

        Returns once listening, or after the first failed attempt; with
        ``retry_in_background=False`` that attempt's error is raised instead
        (and the listener is stopped). Reconnects after a later loss happen
        in the background either way.
        """
        try:
            await self._listen()
        except Exception as exc:
            if not retry_in_background:
                self.state = "stopped"
                raise
            logger.warning("%s: cannot listen yet (%s); retrying", self.name, exc)
            self._mark_lost()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"wellwon_db-listen-{self.name}"
        )

    async def stop(self) -> None:
        """Stop listening and close the connection.

        In a process forked after it started, the connection and its task
        are the parent's: they are dropped without a word to the server.
        """
        self.state = "stopped"
        task, self._task = self._task, None
        if self._fork_generation != _fork.generation:
            self._connection = None
            return
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            connection.remove_termination_listener(self._terminated)
            try:
                await asyncio.wait_for(connection.close(), self._connect_timeout)
            except Exception:
                connection.terminate()

    async def _listen(self) -> None:
        connection: asyncpg.Connection[Any] = await self._connect.connect(
            connection_class=asyncpg.Connection,
            timeout=self._connect_timeout,
            server_settings={"application_name": self._application_name},
            statement_cache_size=0,
        )
        try:
            for channel in self._channels:
                await connection.add_listener(channel, self._notified)
            if self._on_connect is not None:
                await self._on_connect(connection)
        except BaseException:
            connection.terminate()
            raise
        connection.add_termination_listener(self._terminated)
        self._connection = connection
        self._lost.clear()
        self.state = "listening"
        self._listening.set()
        self._on_listening()

    async def wait_listening(self, timeout: float) -> None:
        """Return once listening; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            await self._listening.wait()

    def _notified(self, connection: object, pid: int, channel: str, payload: object) -> None:
        try:
            self._on_notify(channel, str(payload), pid)
        except Exception:
            logger.exception("%s: handling a notification failed", self.name)

    def _terminated(self, connection: object) -> None:
        # Only the current connection's end matters (a replaced one may report late).
        if self.state != "stopped" and connection is self._connection:
            self._mark_lost()

    def _mark_lost(self) -> None:
        if self.state == "reconnecting":
            return
        self.state = "reconnecting"
        self._listening.clear()
        self.lost_at = time.monotonic()
        self._connection = None
        self._lost.set()
        logger.warning("%s: the LISTEN connection was lost; reconnecting", self.name)
        try:
            self._on_lost()
        except Exception:
            logger.exception("%s: handling the loss failed", self.name)

    async def _run(self) -> None:
        while True:
            if self.state == "listening":
                await self._watch()
            retrying = AsyncRetrying(
                wait=wait_random_exponential(multiplier=0.1, max=_BACKOFF_MAX),
                retry=retry_if_exception_type(Exception),
            )
            await retrying(self._listen)
            self.reconnects += 1
            logger.info("%s: listening again", self.name)

    async def _watch(self) -> None:
        """Return when the connection is lost (termination, or a failed heartbeat)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._heartbeat_sec)
            if self._lost.is_set():
                return
            connection = self._connection
            if connection is None:
                self._mark_lost()
                return
            try:
                await connection.execute("SELECT 1", timeout=self._connect_timeout)
            except Exception as exc:
                logger.debug("%s: heartbeat failed: %r", self.name, exc)
                connection.terminate()
                self._mark_lost()
                return
