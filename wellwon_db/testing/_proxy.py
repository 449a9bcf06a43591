"""An asyncio TCP proxy that injects network faults between a client and a real server.

:class:`TcpProxy` listens on a loopback port and forwards every connection to
a target (a :class:`~wellwon_db.testing.PostgresServer`, say). A test points
its client at :meth:`TcpProxy.dsn`, then breaks the network on demand:

* :meth:`TcpProxy.cut` -- every connection is reset, new ones are refused;
* :meth:`TcpProxy.go_deaf` -- connections stay open but nothing gets through,
  so queries and connection attempts hang until the client's timeout;
* :meth:`TcpProxy.restore` -- forwarding again.

The proxy runs in the caller's event loop; ``close()`` (or leaving
``async with``) stops it and waits for every task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Literal
from urllib.parse import quote

__all__ = ["ProxyMode", "TcpProxy"]

ProxyMode = Literal["forwarding", "cut", "deaf"]

_CHUNK = 64 * 1024
# SO_LINGER on with a zero timeout: close() sends RST instead of FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the writer's transport so that the peer sees a connection reset."""
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # The close waiter carries the error the connection was lost with, if any:
    # expected here, the connection is ending anyway.
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class _Link:
    """One client connection and, once it is made, its connection to the target."""

    def __init__(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self.client_reader = client_reader
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        """Reset both sides and stop serving (the serving task ends on its own)."""
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)
        if self.task is not None:
            self.task.cancel()

    async def close(self) -> None:
        """Close both sides gracefully (buffered data is still sent) and wait until closed."""
        writers = [self.client] if self.upstream is None else [self.client, self.upstream]
        await asyncio.gather(*(_wait_closed(writer) for writer in writers))


class TcpProxy:
    """Forwards 127.0.0.1:<listen port> to (target_host, target_port); faults on demand.

    Modes (see :attr:`mode`):

    ``"forwarding"``
        Bytes flow both ways; each accepted connection opens its own connection
        to the target. If the target refuses, the client connection is closed.
    ``"cut"`` (:meth:`cut`)
        Open connections were reset on both sides; new connections are
        accepted and reset at once, so clients fail fast.
    ``"deaf"`` (:meth:`go_deaf`)
        A silent network: connections stay open and new ones are accepted,
        but nothing is forwarded in either direction. Bytes (and end-of-stream)
        are held, not dropped, and new connections do not reach the target
        yet. Queries and handshakes hang until the client gives up.

    :meth:`restore` returns to forwarding. Connections that were cut stay
    cut. Connections that survived deafness, including those accepted while
    deaf, resume: held bytes are delivered in order and held connections are
    now made to the target, as when a real network heals. A client that gave
    up meanwhile has closed its side, so its connection just ends.

    No I/O happens before :meth:`start`. Use one event loop per proxy.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        #: The listening port; with ``listen_port=0``, the one chosen by :meth:`start`.
        self.port = listen_port
        self._mode: ProxyMode = "forwarding"
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._mode
        target = f"{self.target_host}:{self.target_port}"
        return f"<TcpProxy {self.host}:{self.port} -> {target} {state}>"

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> TcpProxy:
        """Start listening; return ``self``.

        Raises :class:`RuntimeError` if already started or closed, and
        :class:`OSError` if the address cannot be bound.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new proxy")
        if self._server is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, reset every connection and wait for every task. Idempotent."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        self._reset_all()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- addresses and state --------------------------------------------------

    def dsn(self, database: str, *, user: str = "postgres", password: str = "") -> str:
        """``postgresql://user[:password]@host:port/database`` through the proxy.

        User and password are percent-encoded. Raises :class:`RuntimeError`
        before :meth:`start` when the port is still to be chosen.
        """
        if not self.port:
            raise RuntimeError(f"{self!r} has no port yet; start it first")
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    @property
    def mode(self) -> ProxyMode:
        """``"forwarding"``, ``"cut"`` or ``"deaf"``."""
        return self._mode

    @property
    def connection_count(self) -> int:
        """Client connections currently open through the proxy (0 right after a cut).

        Includes connections held while deaf whose client has already given up:
        they end when forwarding resumes (or on :meth:`cut`/:meth:`close`).
        """
        return len(self._links)

    # -- faults ---------------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection (both sides) now; refuse new ones until :meth:`restore`.

        The client sees a connection reset on its next read or write; a new
        connection is accepted and reset at once.
        """
        self._mode = "cut"
        self._forwarding.clear()
        self._reset_all()

    def go_deaf(self) -> None:
        """Forward nothing either way until :meth:`restore`; keep and accept connections.

        Data and end-of-stream are held, not dropped: they are delivered
        after :meth:`restore`.
        """
        self._mode = "deaf"
        self._forwarding.clear()

    def restore(self) -> None:
        """Forward again: held connections and bytes resume; cut connections stay cut."""
        self._mode = "forwarding"
        self._forwarding.set()

    # -- internals ------------------------------------------------------------

    def _reset_all(self) -> None:
        links, self._links = self._links, set()
        for link in links:
            link.reset()

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the serving task is ours to track.
        if self._closed or self._mode == "cut":
            _reset(writer)
            return
        link = _Link(reader, writer)
        self._links.add(link)
        link.task = self._track(asyncio.get_running_loop().create_task(self._serve(link)))

    async def _serve(self, link: _Link) -> None:
        pumps: list[asyncio.Task[None]] = []
        try:
            # While deaf, the target must not see the connection either.
            await self._forwarding.wait()
            try:
                upstream_reader, link.upstream = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            loop = asyncio.get_running_loop()
            pumps = [
                self._track(loop.create_task(self._pump(link.client_reader, link.upstream))),
                self._track(loop.create_task(self._pump(upstream_reader, link.client))),
            ]
            # Either side ending (or failing) ends the connection.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            if pumps:
                await asyncio.wait(pumps)
            await link.close()
            self._links.discard(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer`` until end-of-stream; hold everything while deaf."""
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                data = b""
            # Waiting after the read holds the bytes (and the end-of-stream)
            # rather than dropping them; not reading while deaf would not
            # help, the transport buffers them anyway.
            await self._forwarding.wait()
            if not data:
                return
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                return
