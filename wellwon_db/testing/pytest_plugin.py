"""pytest fixtures: throwaway PostgreSQL servers.

Enable with ``pytest_plugins = ["wellwon_db.testing.pytest_plugin"]`` in a
``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from wellwon_db.testing._server import PostgresServer

__all__ = ["postgres_server", "postgres_server_factory"]


@pytest.fixture(scope="session")
def postgres_server_factory() -> Iterator[Callable[[str], PostgresServer]]:
    """Call with a name to get a started server; all are deleted at the end of the session."""
    servers: list[PostgresServer] = []

    def make(name: str = "wellwon") -> PostgresServer:
        server = PostgresServer(name)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A started server of this test's own, deleted afterwards (safe to stop or kill)."""
    server = PostgresServer("test")
    yield server.start()
    server.cleanup()
