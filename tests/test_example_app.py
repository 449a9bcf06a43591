"""``examples/fastapi_app``: the example service, for real, on two throwaway servers.

The first test runs it as it is deployed, ``uvicorn --workers 2`` in a
subprocess: every worker opens its own pools, the servers never see more
than workers x max size connections per database, and a SIGTERM closes them
all. The second runs the same application in-process to show what happens
while the reference database is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.helpers import count_connections, free_port, wait_until
from wellwon_db import get_postgres_config
from wellwon_db.testing import PostgresServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
MAX_SIZE = 3
#: Main is sized by a budget instead: 4 connections for all workers, 2 each.
MAIN_BUDGET = 4
MAIN_APP = "wellwon_db:main"
REFERENCE_APP = "wellwon_db:reference"
CUSTOMS = {"DE": "DE-ZOLL", "FR": "FR-DGDDI", "GB": "GB-HMRC", "US": "US-CBP"}


@pytest.fixture(scope="module")
def app_servers() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A main and a reference server of the example's own, with its databases."""
    with PostgresServer("app-main") as main, PostgresServer("app-reference") as reference:
        main.create_database("app_main")
        reference.create_database("app_reference")
        yield main, reference


def _environment(main: PostgresServer, reference: PostgresServer) -> dict[str, str]:
    return {
        "POSTGRES_DSN": main.dsn("app_main"),
        "POSTGRES_REFERENCE_DSN": reference.dsn("app_reference"),
        "PG_POOL_MIN_SIZE": "1",
        "PG_POOL_MAX_SIZE": "10",
        # No WEB_CONCURRENCY (uvicorn does not set it): the workers read
        # `--workers` off uvicorn's command line to divide the budget.
        "PG_POOL_BUDGET": str(MAIN_BUDGET),
        "PG_REFERENCE_POOL_MIN_SIZE": "1",
        "PG_REFERENCE_POOL_MAX_SIZE": str(MAX_SIZE),
    }


class Uvicorn:
    """``uvicorn examples.fastapi_app.app:app`` in a subprocess, its output in a file."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / "uvicorn.log"
        with self.log.open("wb") as log:
            # cwd is the test's own directory: no .env of the repository is read.
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "examples.fastapi_app.app:app",
                    "--app-dir",
                    str(ROOT),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(WORKERS),
                    "--no-access-log",
                ],
                cwd=cwd,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    async def wait_up(self, client: httpx.AsyncClient, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"uvicorn exited with {self.process.returncode}:\n{self.output()}")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        pytest.fail(f"uvicorn did not answer /healthz within {timeout}s:\n{self.output()}")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, as a process manager stops it; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"uvicorn still running {timeout}s after SIGTERM:\n{self.output()}")

    def kill(self) -> None:
        """Kill uvicorn and any worker left behind (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def uvicorn(
    app_servers: tuple[PostgresServer, PostgresServer], tmp_path: Path
) -> Iterator[Uvicorn]:
    server = Uvicorn(_environment(*app_servers), tmp_path)
    try:
        yield server
    finally:
        server.kill()


async def _count_rows(server: PostgresServer, database: str, table: str) -> int:
    connection = await asyncpg.connect(server.dsn(database), timeout=10)
    try:
        count: int = await connection.fetchval(f"SELECT count(*) FROM {table}")
        return count
    finally:
        await connection.close()


async def test_the_example_under_uvicorn_with_two_workers(
    uvicorn: Uvicorn, app_servers: tuple[PostgresServer, PostgresServer]
) -> None:
    main, reference = app_servers
    limit = WORKERS * MAX_SIZE  # reference: workers x max size
    main_limit = MAIN_BUDGET  # main: the budget, shared by the workers
    async with httpx.AsyncClient(base_url=uvicorn.url, timeout=10) as client:
        await uvicorn.wait_up(client)

        # Every worker opened both of its pools (at least min_size connections each).
        async def all_workers_connected() -> bool:
            return (
                await count_connections(main, MAIN_APP) >= WORKERS
                and await count_connections(reference, REFERENCE_APP) >= WORKERS
            )

        await wait_until(all_workers_connected, timeout=20)

        peaks = {MAIN_APP: 0, REFERENCE_APP: 0}
        loading = True

        async def sample() -> None:
            while loading:
                peaks[MAIN_APP] = max(peaks[MAIN_APP], await count_connections(main, MAIN_APP))
                peaks[REFERENCE_APP] = max(
                    peaks[REFERENCE_APP], await count_connections(reference, REFERENCE_APP)
                )
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            countries = [list(CUSTOMS)[i % len(CUSTOMS)] for i in range(40)]
            created = await asyncio.gather(
                *(
                    client.post("/users", json={"name": f"user {i}", "country": country.lower()})
                    for i, country in enumerate(countries)
                )
            )
            assert [response.status_code for response in created] == [201] * 40
            users = [response.json() for response in created]
            assert len({user["id"] for user in users}) == 40
            for i, (user, country) in enumerate(zip(users, countries, strict=True)):
                assert user["name"] == f"user {i}"
                assert user["country"] == country
                assert user["customs_code"] == CUSTOMS[country]

            fetched, customs = await asyncio.gather(
                asyncio.gather(*(client.get(f"/users/{user['id']}") for user in users)),
                asyncio.gather(*(client.get(f"/customs/{c}") for c in list(CUSTOMS) * 5)),
            )
            for user, response in zip(users, fetched, strict=True):
                assert response.status_code == 200
                body = response.json()
                assert (body["id"], body["name"], body["country"]) == (
                    user["id"],
                    user["name"],
                    user["country"],
                )
            for country, response in zip(list(CUSTOMS) * 5, customs, strict=True):
                assert response.status_code == 200
                assert response.json() == {"country": country, "customs_code": CUSTOMS[country]}
        finally:
            loading = False
            await sampler

        assert (await client.get("/users/0")).status_code == 404
        assert (await client.get("/customs/XX")).status_code == 404
        unknown = await client.post("/users", json={"name": "nobody", "country": "ZZ"})
        assert unknown.status_code == 422
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        report = ready.json()
        assert report["status"] == "ok"
        assert {name: db["status"] for name, db in report["databases"].items()} == {
            "main": "ok",
            "reference": "ok",
        }

    # Each POST wrote its user and its event in one transaction.
    assert await _count_rows(main, "app_main", "users") == 40
    assert await _count_rows(main, "app_main", "user_events") == 40

    # workers x max size per database, never more.
    assert 1 <= peaks[MAIN_APP] <= main_limit
    assert 1 <= peaks[REFERENCE_APP] <= limit
    assert await count_connections(main, MAIN_APP) <= main_limit
    assert await count_connections(reference, REFERENCE_APP) <= limit
    # Each pool went to its own server only.
    assert await count_connections(main, REFERENCE_APP) == 0
    assert await count_connections(reference, MAIN_APP) == 0

    assert uvicorn.terminate() == 0, uvicorn.output()
    # Every worker ran its lifespan's shutdown, which closed its pools...
    assert uvicorn.output().count("Application shutdown complete.") == WORKERS, uvicorn.output()

    # ...and the servers see none of the application's connections left.
    async def all_gone() -> bool:
        return (
            await count_connections(main, MAIN_APP) == 0
            and await count_connections(reference, REFERENCE_APP) == 0
        )

    await wait_until(all_gone, timeout=10)


async def test_the_example_while_the_reference_database_is_down(
    app_servers: tuple[PostgresServer, PostgresServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readiness says 503, reference endpoints answer 503, main endpoints keep working."""
    from examples.fastapi_app.app import create_app

    main, reference = app_servers
    for name, value in _environment(main, reference).items():
        monkeypatch.setenv(name, value)
    get_postgres_config.cache_clear()
    app = create_app()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        created = await client.post("/users", json={"name": "Ann", "country": "GB"})
        assert created.status_code == 201
        user_id = created.json()["id"]
        reference.stop()
        try:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            databases = ready.json()["databases"]
            assert (databases["main"]["status"], databases["reference"]["status"]) == (
                "ok",
                "down",
            )
            customs = await client.get("/customs/GB")
            assert customs.status_code == 503
            assert customs.headers["Retry-After"] == "1"
            assert customs.json() == {"detail": "the reference database is unavailable"}
            assert (await client.get(f"/users/{user_id}")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
        finally:
            reference.start()
