"""A pool belongs to the event loop it was opened on: misuse gets errors that say so."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.helpers import Servers
from wellwon_db import (
    DatabaseContainer,
    PoolClosedError,
    WrongEventLoopError,
    start_databases,
    stop_databases,
)


def _container(servers: Servers) -> DatabaseContainer:
    container = DatabaseContainer()
    container.settings.from_dict({"main": {"dsn": servers.main_dsn, "pool_min_size": 1}})
    return container


def test_a_pool_whose_loop_ended_says_so(servers: Servers) -> None:
    container = _container(servers)
    asyncio.run(start_databases(container))  # this loop ends: asyncio closes the pool
    main = container.main_db()
    with pytest.raises(PoolClosedError) as caught:
        asyncio.run(main.fetchval("SELECT 1"))
    message = str(caught.value)
    assert "closed when the event loop it was opened on ended" in message
    assert "asyncio.run(main())" in message
    assert caught.value.database == "main"

    async def in_one_loop() -> int:
        await start_databases(container)  # started again, in the loop that uses it
        try:
            return int(await main.fetchval("SELECT 1"))
        finally:
            await stop_databases(container)

    assert asyncio.run(in_one_loop()) == 1
    with pytest.raises(PoolClosedError) as stopped:
        asyncio.run(main.fetchval("SELECT 1"))
    assert "start it with" in str(stopped.value)  # a plain stop: the usual advice


def test_a_client_used_from_another_loop_says_so(servers: Servers) -> None:
    container = _container(servers)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(start_databases(container))
        main = container.main_db()
        outcome: list[BaseException | int] = []

        def elsewhere() -> None:
            try:
                outcome.append(asyncio.run(main.fetchval("SELECT 1")))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(timeout=30)
        (error,) = outcome
        assert isinstance(error, WrongEventLoopError), error
        assert error.database == "main"
        assert "another event loop" in str(error)
        assert isinstance(error, RuntimeError)  # as asyncio's own error was
        # The pool serves on in its own loop, and its breaker saw no failure.
        assert loop.run_until_complete(main.fetchval("SELECT 1")) == 1
        assert main.breaker.snapshot()["failures"] == 0
    finally:
        loop.run_until_complete(stop_databases(container))
        loop.close()
