"""``client.listen()``: delivery, any channel name, reconnection with a visible gap, overflow."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import Servers, count_connections, wait_until
from wellwon_db import (
    CircuitOpenError,
    ConfigurationError,
    DatabaseContainer,
    MainDB,
    Notification,
    NotificationGap,
    Notifications,
    get_postgres_config,
    start_databases,
    stop_databases,
)

LISTEN_APP = "wellwon_db:main:listen"


@pytest.fixture
async def main(container: DatabaseContainer) -> MainDB:
    client: MainDB = container.main_db()
    return client


async def next_item(notifications: Notifications) -> Notification | NotificationGap:
    return await asyncio.wait_for(anext(notifications), 10)


async def test_notifications_arrive_in_order(main: MainDB) -> None:
    async with main.listen("orders", "stock") as notifications:
        assert notifications.state == "listening"
        await main.execute("SELECT pg_notify('orders', 'o1'), pg_notify('other', 'x')")
        async with main.transaction() as tx:
            await tx.execute("NOTIFY stock, 's1'")
            await tx.execute("NOTIFY orders")
        first = await next_item(notifications)
        assert isinstance(first, Notification)
        assert (first.channel, first.payload) == ("orders", "o1")
        assert first.pid > 0
        rest = [await next_item(notifications) for _ in range(2)]
        assert [(n.channel, n.payload) for n in rest if isinstance(n, Notification)] == [
            ("stock", "s1"),
            ("orders", ""),
        ]
    assert notifications.state == "stopped"
    with pytest.raises(StopAsyncIteration):
        await anext(notifications)


@pytest.mark.parametrize(
    "channel",
    ['we"ird; LISTEN x; --', "UPPER case", "crème brûlée", "x" * 63],
    ids=["quotes", "case-and-space", "unicode", "longest"],
)
async def test_any_channel_name_is_listened_to_safely(main: MainDB, channel: str) -> None:
    async with main.listen(channel) as notifications:
        await main.execute("SELECT pg_notify($1, 'hello')", channel)
        item = await next_item(notifications)
        assert isinstance(item, Notification)
        assert (item.channel, item.payload) == (channel, "hello")


async def test_bad_channel_names_are_refused(main: MainDB) -> None:
    for channel in ("", "nul\x00byte", "é" * 32):
        with pytest.raises(ValueError, match="channel"):
            async with main.listen(channel):
                pass
    with pytest.raises(ValueError, match="max_queued"):
        async with main.listen("ok", max_queued=0):
            pass


async def test_listening_survives_a_terminated_connection(main: MainDB, db_env: Servers) -> None:
    async with main.listen("jobs") as notifications:
        assert await count_connections(db_env.main, LISTEN_APP) == 1
        await main.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            LISTEN_APP,
        )
        listener = notifications.listener
        assert listener is not None

        async def back() -> bool:
            return listener.reconnects == 1 and notifications.state == "listening"

        await wait_until(back)
        await main.execute("SELECT pg_notify('jobs', 'after')")
        gap = await next_item(notifications)
        assert isinstance(gap, NotificationGap)
        assert gap.reason == "reconnected"
        assert listener.lost_at is not None
        assert gap.since == pytest.approx(listener.lost_at, abs=1.0)
        item = await next_item(notifications)
        assert isinstance(item, Notification)
        assert item.payload == "after"
    assert await count_connections(db_env.main, LISTEN_APP) == 0


async def test_a_slow_consumer_sees_where_notifications_were_dropped(main: MainDB) -> None:
    async with main.listen("burst", max_queued=3) as notifications:
        await main.execute(
            "SELECT pg_notify('burst', g::text) FROM generate_series(1, 7) g; "
            "SELECT pg_notify('burst', 'late')"
        )

        async def all_arrived() -> bool:
            return notifications.dropped == 5

        await wait_until(all_arrived)
        items = [await next_item(notifications) for _ in range(4)]
        assert [n.payload for n in items[:3] if isinstance(n, Notification)] == ["1", "2", "3"]
        gap = items[3]
        assert isinstance(gap, NotificationGap)
        assert (gap.reason, gap.dropped) == ("overflow", 5)
        await main.execute("SELECT pg_notify('burst', 'again')")
        item = await next_item(notifications)
        assert isinstance(item, Notification)
        assert item.payload == "again"


async def test_an_open_breaker_refuses_listen(main: MainDB, db_env: Servers) -> None:
    main.breaker.force_open()
    try:
        with pytest.raises(CircuitOpenError):
            async with main.listen("anything"):
                pytest.fail("entered")
    finally:
        main.breaker.reset()
    assert await count_connections(db_env.main, LISTEN_APP) == 0


async def test_listen_behind_pgbouncer_needs_a_direct_dsn(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_POOL_PGBOUNCER", "true")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    await start_databases(container)
    try:
        main = container.main_db()
        with pytest.raises(ConfigurationError, match="PG_CACHE_LISTEN_DSN") as caught:
            async with main.listen("x"):
                pass
        assert caught.value.env_var == "PG_CACHE_LISTEN_DSN"
    finally:
        await stop_databases(container)
    monkeypatch.setenv("PG_CACHE_LISTEN_DSN", db_env.main_dsn)
    container = DatabaseContainer()
    await start_databases(container)
    try:
        main = container.main_db()
        async with main.listen("direct") as notifications:
            await main.execute("SELECT pg_notify('direct', '1')")
            assert isinstance(await next_item(notifications), Notification)
    finally:
        await stop_databases(container)
