"""``TcpProxy``: forwarding, cut, deaf and restore against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from tests.helpers import wait_until
from wellwon_db.testing import PostgresServer
from wellwon_db.testing._proxy import TcpProxy

pytestmark = pytest.mark.fault

# What a client sees on a connection the proxy reset: asyncpg's own error for
# a connection lost mid-operation, or the socket error itself.
CONNECTION_ERRORS = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)

Connect = Callable[..., Awaitable[asyncpg.Connection]]


@pytest.fixture
async def proxy(postgres_server: PostgresServer) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(postgres_server.host, postgres_server.port) as proxy:
        yield proxy


@pytest.fixture
async def connect(proxy: TcpProxy) -> AsyncIterator[Connect]:
    """Connect through the proxy; every connection is terminated before the proxy closes."""
    connections: list[asyncpg.Connection] = []

    async def connect(timeout: float = 10.0) -> asyncpg.Connection:
        connection = await asyncpg.connect(proxy.dsn("postgres"), timeout=timeout)
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        # terminate(), not close(): close() would wait on a deaf or cut network.
        connection.terminate()


async def _no_connections(proxy: TcpProxy) -> None:
    async def check() -> bool:
        return proxy.connection_count == 0

    await wait_until(check, timeout=5)


async def test_forwards_queries_and_counts_connections(proxy: TcpProxy, connect: Connect) -> None:
    assert proxy.mode == "forwarding"
    assert proxy.connection_count == 0
    first = await connect()
    second = await connect()
    assert proxy.connection_count == 2
    assert await first.fetchval("SELECT 1") == 1
    # Large enough to take several reads each way.
    payload = "x" * 1_000_000
    assert await second.fetchval("SELECT $1::text", payload) == payload
    await first.close()
    await second.close()
    await _no_connections(proxy)


async def test_dsn_points_at_the_proxy(proxy: TcpProxy, postgres_server: PostgresServer) -> None:
    assert proxy.port not in (0, postgres_server.port)
    assert proxy.dsn("db") == f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
    assert (
        proxy.dsn("db", user="u@x", password="p:w/d")
        == f"postgresql://u%40x:p%3Aw%2Fd@127.0.0.1:{proxy.port}/db"
    )
    assert TcpProxy("127.0.0.1", 5432, listen_port=6543).dsn("db").endswith(":6543/db")
    with pytest.raises(RuntimeError, match="start it first"):
        TcpProxy("127.0.0.1", 5432).dsn("db")


async def test_cut_resets_open_connections_and_refuses_new_ones(
    proxy: TcpProxy, connect: Connect
) -> None:
    connection = await connect()
    assert await connection.fetchval("SELECT 1") == 1
    proxy.cut()
    assert proxy.mode == "cut"
    assert proxy.connection_count == 0
    with pytest.raises(CONNECTION_ERRORS):
        await connection.fetchval("SELECT 1")

    started = time.monotonic()
    with pytest.raises(CONNECTION_ERRORS):
        await connect(timeout=5)
    assert time.monotonic() - started < 1.0
    assert proxy.connection_count == 0


async def test_restore_after_cut_accepts_new_connections(
    proxy: TcpProxy, connect: Connect
) -> None:
    cut_connection = await connect()
    proxy.cut()
    proxy.restore()
    assert proxy.mode == "forwarding"
    # A cut connection stays cut.
    with pytest.raises(CONNECTION_ERRORS):
        await cut_connection.fetchval("SELECT 1")
    connection = await connect()
    assert await connection.fetchval("SELECT 2") == 2
    assert proxy.connection_count == 1


async def test_deaf_hangs_queries_and_connects(proxy: TcpProxy, connect: Connect) -> None:
    connection = await connect()
    proxy.go_deaf()
    assert proxy.mode == "deaf"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connection.fetchval("SELECT 1"), 0.5)
    with pytest.raises(TimeoutError):
        await connect(timeout=0.5)
    # The network is silent, not down: nothing was closed.
    assert proxy.connection_count >= 2

    proxy.restore()
    fresh = await connect()
    assert await fresh.fetchval("SELECT 3") == 3


async def test_restore_delivers_what_deafness_held(proxy: TcpProxy, connect: Connect) -> None:
    connection = await connect()
    proxy.go_deaf()
    query = asyncio.ensure_future(connection.fetchval("SELECT 42"))
    pending_connect = asyncio.ensure_future(connect())

    async def connect_accepted() -> bool:
        return proxy.connection_count == 2

    await wait_until(connect_accepted, timeout=5)
    done, _ = await asyncio.wait({query, pending_connect}, timeout=0.3)
    assert not done

    proxy.restore()
    assert await asyncio.wait_for(query, 10) == 42
    late = await asyncio.wait_for(pending_connect, 10)
    assert await late.fetchval("SELECT 43") == 43


async def test_cut_while_deaf_resets_held_connections(proxy: TcpProxy, connect: Connect) -> None:
    connection = await connect()
    proxy.go_deaf()
    query = asyncio.ensure_future(connection.fetchval("SELECT 1"))
    done, _ = await asyncio.wait({query}, timeout=0.2)
    assert not done
    proxy.cut()
    with pytest.raises(CONNECTION_ERRORS):
        await asyncio.wait_for(query, 5)
    assert proxy.connection_count == 0


async def test_target_refusing_closes_the_client() -> None:
    # A bound socket that does not listen: connecting to it is refused.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        async with TcpProxy("127.0.0.1", closed_port.getsockname()[1]) as proxy:
            started = time.monotonic()
            with pytest.raises(CONNECTION_ERRORS):
                await asyncpg.connect(proxy.dsn("postgres"), timeout=5)
            assert time.monotonic() - started < 1.0
            await _no_connections(proxy)


async def test_close_is_idempotent_and_leaves_no_connections(
    postgres_server: PostgresServer,
) -> None:
    proxy = await TcpProxy(postgres_server.host, postgres_server.port).start()
    connection = await asyncpg.connect(proxy.dsn("postgres"), timeout=10)
    try:
        await proxy.close()
        assert proxy.connection_count == 0
        await proxy.close()
        with pytest.raises(CONNECTION_ERRORS):
            await connection.fetchval("SELECT 1")
        # Nothing listens any more.
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(proxy.dsn("postgres"), timeout=5)
        with pytest.raises(RuntimeError, match="closed"):
            await proxy.start()
    finally:
        connection.terminate()


async def test_close_while_deaf_ends_held_connections(postgres_server: PostgresServer) -> None:
    proxy = await TcpProxy(postgres_server.host, postgres_server.port).start()
    connection = await asyncpg.connect(proxy.dsn("postgres"), timeout=10)
    try:
        proxy.go_deaf()
        pending_connect = asyncio.ensure_future(asyncpg.connect(proxy.dsn("postgres"), timeout=10))

        async def connect_accepted() -> bool:
            return proxy.connection_count == 2

        await wait_until(connect_accepted, timeout=5)
        await asyncio.wait_for(proxy.close(), 5)
        assert proxy.connection_count == 0
        with pytest.raises(CONNECTION_ERRORS):
            await asyncio.wait_for(pending_connect, 5)
    finally:
        connection.terminate()


def test_no_io_before_start() -> None:
    proxy = TcpProxy("192.0.2.1", 1, listen_port=0)
    assert proxy.port == 0
    assert proxy.connection_count == 0
    modes = [proxy.mode]
    proxy.go_deaf()
    modes.append(proxy.mode)
    proxy.cut()
    modes.append(proxy.mode)
    assert modes == ["forwarding", "deaf", "cut"]
