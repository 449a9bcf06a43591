"""The pytest plugin as users get it: loaded by its entry point, in a pytest of its own.

Each test writes a small project and runs ``pytest`` on it in a subprocess
(``pytester.runpytest_subprocess``), so the plugin is found the way an
installed package's is, with no ``pytest_plugins`` line.
"""

from __future__ import annotations

import importlib.metadata

import pytest

pytestmark = pytest.mark.slow

PYPROJECT = """
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
"""


def _project(pytester: pytest.Pytester, conftest: str, **tests: str) -> None:
    pytester.makefile(".toml", pyproject=PYPROJECT)
    pytester.makeconftest(conftest)
    pytester.makepyfile(**tests)


def test_the_entry_point_names_the_plugin_module() -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    ours = [entry for entry in entry_points if entry.value.startswith("wellwon_db")]
    assert [(entry.name, entry.value) for entry in ours] == [
        ("wellwon_db.testing.pytest_plugin", "wellwon_db.testing.pytest_plugin")
    ]


def test_each_test_gets_fresh_databases_from_the_schema(pytester: pytest.Pytester) -> None:
    _project(
        pytester,
        """
import pytest


@pytest.fixture(scope="session")
def wellwon_schema():
    return {
        "main": "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)",
        "reference": "CREATE TABLE codes (code text PRIMARY KEY); INSERT INTO codes VALUES ('GB')",
    }
""",
        test_fresh="""
import os

import asyncpg
import pytest

SEEN = []


@pytest.mark.parametrize("round", [1, 2, 3])
async def test_writes_stay_in_the_test(wellwon_container, wellwon_dsns, round):
    main = wellwon_container.main_db()
    assert await main.fetchval("SELECT count(*) FROM items") == 1
    await main.execute("INSERT INTO items VALUES ($1)", 100 + round)
    assert await main.fetchval("SELECT count(*) FROM items") == 2
    name = wellwon_dsns["main"].rsplit("/", 1)[1]
    assert await main.fetchval("SELECT current_database()") == name
    SEEN.append(wellwon_dsns["main"])


async def test_reference_is_its_own_database(wellwon_container):
    reference = wellwon_container.reference_db()
    assert await reference.fetchval("SELECT code FROM codes") == "GB"
    assert await reference.fetchval("SELECT to_regclass('items')") is None


def test_environment_points_at_the_copies(wellwon_env, postgres_dsn):
    assert os.environ["POSTGRES_DSN"] == postgres_dsn == wellwon_env["main"]
    assert os.environ["POSTGRES_REFERENCE_DSN"] == wellwon_env["reference"]
    assert os.environ["PG_POOL_MIN_SIZE"] == "1"
    assert os.environ["PG_REFERENCE_POOL_MIN_SIZE"] == "1"


async def test_postgres_dsn_alone(postgres_dsn):
    connection = await asyncpg.connect(postgres_dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM items") == 1
    finally:
        await connection.close()


def test_every_test_had_its_own_copy():
    assert len(SEEN) == 3
    assert len(set(SEEN)) == 3


async def test_a_failure_is_reported(wellwon_container):
    assert await wellwon_container.main_db().fetchval("SELECT count(*) FROM items") == 2
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, failed=1)
    result.stdout.fnmatch_lines(["*test_a_failure_is_reported*", "*assert 1 == 2*"])


def test_a_pytest_plugins_line_naming_the_module_is_harmless(pytester: pytest.Pytester) -> None:
    _project(
        pytester,
        'pytest_plugins = ["wellwon_db.testing.pytest_plugin"]\n',
        test_dsn="""
import asyncpg


async def test_connects(postgres_dsn):
    connection = await asyncpg.connect(postgres_dsn)
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    _project(pytester, "", test_off="def test_needs_it(postgres_dsn):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:wellwon_db.testing.pytest_plugin"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'postgres_dsn' not found*"])


def test_an_application_container_started_or_faked(pytester: pytest.Pytester) -> None:
    _project(
        pytester,
        """
import pytest
from dependency_injector import containers, providers

from wellwon_db import DatabaseContainer, MainDB


class Greeter:
    def __init__(self, main: MainDB) -> None:
        self.main = main

    async def greeting(self) -> str:
        return await self.main.fetchval("SELECT greeting FROM greetings")


class AppContainer(containers.DeclarativeContainer):
    db = providers.Container(DatabaseContainer)
    greeter = providers.Factory(Greeter, main=db.main_db)


@pytest.fixture(scope="session")
def wellwon_schema():
    return {
        "main": "CREATE TABLE greetings (greeting text); INSERT INTO greetings VALUES ('hello')",
        "reference": None,
    }


@pytest.fixture
def wellwon_app_container():
    return AppContainer()
""",
        test_app="""
async def test_real(wellwon_container):
    assert await wellwon_container.greeter().greeting() == "hello"
    assert wellwon_container.db.main_pool.initialized


async def test_faked(wellwon_app_container, wellwon_fakes):
    wellwon_fakes.main.script("SELECT greeting FROM greetings", "hi")
    assert await wellwon_app_container.greeter().greeting() == "hi"
    assert wellwon_fakes.main.queries == ["SELECT greeting FROM greetings"]
    assert not wellwon_app_container.db.main_pool.initialized
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_a_broken_schema_names_the_database(pytester: pytest.Pytester) -> None:
    _project(
        pytester,
        """
import pytest


@pytest.fixture(scope="session")
def wellwon_schema():
    return {"main": None, "reference": "CREATE TABLE broken ("}
""",
        test_broken="""
def test_one(postgres_dsn):
    pass


def test_two(postgres_dsn):
    pass
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*setting up the reference database's template wellwon_template_reference*"]
    )
