"""pytest fixtures: throwaway PostgreSQL servers, a fresh database per test, containers, fakes.

Installed with the package and registered through the ``pytest11`` entry
point: no ``pytest_plugins`` line is needed (one that names this module is
harmless). ``-p no:wellwon_db.testing.pytest_plugin`` turns it off.

Servers:

* ``postgres_server_factory`` (session): ``make(name)`` returns a started
  server; all are deleted at the end of the session.
* ``postgres_server``: a started server of the test's own (safe to stop or kill).

A fresh database per test, copied from templates set up once per session
(see docs/testing.md for why copies rather than rolled-back transactions):

* ``wellwon_schema`` (session; override it): database name -> what its
  template starts with (SQL, a ``.sql`` path, a function given the DSN, or
  ``None``). Default: empty ``main`` and ``reference``.
* ``wellwon_server`` (session): the server holding the templates and copies.
* ``wellwon_dsns``: this test's own databases, ``{"main": dsn, ...}``.
* ``postgres_dsn``: this test's main database.
* ``wellwon_env``: ``POSTGRES_[<DB>_]DSN`` set to this test's databases,
  ``PG_[<DB>_]POOL_MIN_SIZE=1`` unless set, ``get_postgres_config`` cleared.

Containers:

* ``wellwon_app_container`` (override it): the container under test, not
  started; default a ``DatabaseContainer()``.
* ``wellwon_container`` (async): that container with its pools open on this
  test's databases; stopped afterwards. Needs pytest-asyncio.
* ``wellwon_fakes``: that container's clients replaced by fakes (no pool opens).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from wellwon_db.testing._fakes import FakeDatabases
    from wellwon_db.testing._server import PostgresServer
    from wellwon_db.testing._templates import DatabaseSetup, TemplateDatabases

_F = TypeVar("_F", bound=Callable[..., Any])

# The library is imported inside the fixtures: this module loads in every
# pytest run of an environment that has wellwon_db, used or not.

__all__ = [
    "postgres_dsn",
    "postgres_server",
    "postgres_server_factory",
    "wellwon_app_container",
    "wellwon_container",
    "wellwon_dsns",
    "wellwon_env",
    "wellwon_fakes",
    "wellwon_schema",
    "wellwon_server",
    "wellwon_templates",
]


@pytest.fixture(scope="session")
def postgres_server_factory() -> Iterator[Callable[[str], PostgresServer]]:
    """Call with a name to get a started server; all are deleted at the end of the session."""
    from wellwon_db.testing._server import PostgresServer

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
    from wellwon_db.testing._server import PostgresServer

    server = PostgresServer("test")
    yield server.start()
    server.cleanup()


# -- a fresh database per test ---------------------------------------------------


@pytest.fixture(scope="session")
def wellwon_schema() -> Mapping[str, DatabaseSetup]:
    """What each test's databases start with: override it in your ``conftest.py``.

    Maps database names to SQL text, a ``.sql`` file (``pathlib.Path``), a
    function called once with the template's DSN (sync or async: run your
    migrations there), or ``None`` for an empty database.
    """
    return {"main": None, "reference": None}


@pytest.fixture(scope="session")
def wellwon_server(
    postgres_server_factory: Callable[[str], PostgresServer],
) -> PostgresServer:
    """The throwaway server that holds the templates and every test's databases."""
    return postgres_server_factory("wellwon-tests")


@pytest.fixture(scope="session")
def wellwon_templates(
    wellwon_server: PostgresServer, wellwon_schema: Mapping[str, DatabaseSetup]
) -> Iterator[TemplateDatabases]:
    """The templates of ``wellwon_schema``, set up at the first test that needs them."""
    from wellwon_db.testing._templates import TemplateDatabases, ram_directory

    # On a RAM file system when there is one: copies cost a fraction (docs/testing.md).
    templates = TemplateDatabases(wellwon_server, wellwon_schema, tablespace_dir=ram_directory())
    yield templates
    templates.close()


@pytest.fixture
def wellwon_dsns(wellwon_templates: TemplateDatabases) -> Iterator[dict[str, str]]:
    """This test's own databases, fresh copies of the templates: name -> DSN. Dropped after."""
    dsns = wellwon_templates.clone()
    yield dsns
    wellwon_templates.drop(dsns)


@pytest.fixture
def postgres_dsn(wellwon_dsns: dict[str, str]) -> str:
    """The DSN of this test's own main database."""
    if "main" not in wellwon_dsns:
        raise pytest.UsageError("postgres_dsn needs a 'main' entry in wellwon_schema")
    return wellwon_dsns["main"]


@pytest.fixture
def wellwon_env(
    wellwon_dsns: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment pointing at this test's databases; returns their DSNs.

    Sets each database's DSN variable (``POSTGRES_DSN``,
    ``POSTGRES_REFERENCE_DSN``, ``POSTGRES_<NAME>_DSN``) and, unless already
    set, its pool's minimum size to 1 (pools open per test). Clears
    ``get_postgres_config()`` before and after; everything is restored after.
    """
    from wellwon_db.config._config import get_postgres_config
    from wellwon_db.config._registry import spec_for
    from wellwon_db.config._settings import env_var_name, settings_class

    for name, dsn in wellwon_dsns.items():
        spec = spec_for(name)
        monkeypatch.setenv(spec.dsn_variable, dsn)
        min_size = env_var_name(settings_class(spec), "pool_min_size")
        if min_size not in os.environ:
            monkeypatch.setenv(min_size, "1")
    get_postgres_config.cache_clear()
    yield wellwon_dsns
    get_postgres_config.cache_clear()


# -- containers and fakes ----------------------------------------------------------


@pytest.fixture
def wellwon_app_container() -> Any:
    """The container under test, not started: override it to return your application's.

    Default: a new ``DatabaseContainer()``. An application container that
    embeds one (``db = providers.Container(DatabaseContainer)``) works as it is.
    """
    from wellwon_db.di._container import DatabaseContainer

    return DatabaseContainer()


def _async_fixture(function: _F) -> _F:
    """pytest-asyncio's fixture decorator; without it, pytest says the fixture needs a plugin."""
    try:
        import pytest_asyncio
    except ImportError:  # it is in the "testing" extra; the rest of the plugin works without
        return cast(_F, pytest.fixture(function))
    return cast(_F, pytest_asyncio.fixture(function))


@_async_fixture
async def wellwon_container(
    wellwon_app_container: Any, wellwon_env: dict[str, str]
) -> AsyncIterator[Any]:
    """``wellwon_app_container``, its pools open on this test's databases; stopped after.

    Needs pytest-asyncio (``pip install 'wellwon-db[testing]'``).
    """
    from wellwon_db.di._container import start_databases, stop_databases

    await start_databases(wellwon_app_container)
    try:
        yield wellwon_app_container
    finally:
        await stop_databases(wellwon_app_container)


@pytest.fixture
def wellwon_fakes(wellwon_app_container: Any) -> Iterator[FakeDatabases]:
    """``wellwon_app_container``'s clients replaced by fakes; no pool opens. Restored after."""
    from wellwon_db.testing._fakes import override_with_fakes

    with override_with_fakes(wellwon_app_container) as fakes:
        yield fakes
