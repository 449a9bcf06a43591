"""Health checks: statuses, readiness per database, bounds, concurrency, no secrets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from dependency_injector import containers, providers

from tests.helpers import MAIN_DB, REFERENCE_DB, SECRET, Servers, wait_until
from wellwon_db import (
    DatabaseContainer,
    DatabaseHealth,
    HealthChecker,
    HealthReport,
    check_health,
    get_postgres_config,
    start_databases,
    stop_databases,
)
from wellwon_db.health._health import database_status, overall_status, redact_secrets, secrets_of
from wellwon_db.testing import PostgresServer, TcpProxy, override_with_fakes

POOL_KEYS = {"size", "idle", "in_use", "waiting", "acquired", "state", "max_size"}


@asynccontextmanager
async def started(container: Any) -> AsyncIterator[None]:
    await start_databases(container)
    try:
        yield
    finally:
        await stop_databases(container)


def assert_no_secret(report: HealthReport) -> None:
    text = json.dumps(report.to_dict())
    assert SECRET not in text
    assert SECRET not in repr(report)


def small_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PG_POOL_MIN_SIZE", "PG_REFERENCE_POOL_MIN_SIZE"):
        monkeypatch.setenv(name, "1")
    for name in ("PG_POOL_MAX_SIZE", "PG_REFERENCE_POOL_MAX_SIZE"):
        monkeypatch.setenv(name, "3")


# -- the rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answered", "breaker", "waiting", "expected"),
    [
        (True, "closed", 0, "ok"),
        (True, "disabled", 0, "ok"),
        (True, "half_open", 0, "degraded"),
        (True, "open", 0, "degraded"),
        (True, "closed", 2, "degraded"),
        (False, "closed", 0, "down"),
        (False, "forced_open", 0, "down"),
    ],
)
def test_database_status_rules(answered: bool, breaker: str, waiting: int, expected: str) -> None:
    assert database_status(answered, breaker, {"waiting": waiting}) == expected


def _health(status: Any, required: bool) -> DatabaseHealth:
    return DatabaseHealth("x", status, required, None, None, None, {}, {})


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([("ok", True), ("ok", False)], "ok"),
        ([("ok", True), ("down", False)], "degraded"),
        ([("degraded", True), ("ok", True)], "degraded"),
        ([("ok", True), ("down", True)], "down"),
        ([("down", False), ("down", True)], "down"),
        ([], "ok"),
    ],
)
def test_overall_status_rules(statuses: list[tuple[str, bool]], expected: str) -> None:
    assert overall_status(_health(status, required) for status, required in statuses) == expected


def test_secrets_are_redacted_in_every_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://app:p%40ss%2Fw0rd@db:5432/app")
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", "postgresql://ref@db:5432/ref?password=qu3ry-pw")
    secrets = secrets_of(get_postgres_config())
    for leaked in ("p@ss/w0rd", "p%40ss%2Fw0rd", "qu3ry-pw"):
        assert redact_secrets(f"failed: {leaked}!", secrets) == "failed: ***!"


# -- against real servers -------------------------------------------------------------


async def test_both_databases_ok(container: DatabaseContainer, servers: Servers) -> None:
    report = await check_health(container)

    assert report.status == "ok"
    assert list(report.databases) == ["main", "reference"]
    for name, client in (("main", container.main_db()), ("reference", container.reference_db())):
        health = report.databases[name]
        assert health.database == name
        assert health.status == "ok"
        assert health.required is True
        assert health.error is None
        assert health.latency_ms is not None
        assert 0 < health.latency_ms < 2000
        assert health.server_version == await client.fetchval("SHOW server_version")
        assert set(health.pool) >= POOL_KEYS
        assert health.pool["database"] == name
        assert health.pool["state"] == "open"
        assert health.breaker["state"] == "closed"
        assert health.breaker["database"] == name
    checked_at = datetime.fromisoformat(report.checked_at)
    assert checked_at.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - checked_at).total_seconds()) < 60

    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["status"] == "ok"
    assert set(as_json["databases"]) == {"main", "reference"}
    assert as_json["databases"]["main"]["pool"]["state"] == "open"
    assert_no_secret(report)


@pytest.mark.fault
@pytest.mark.parametrize(("reference_required", "overall"), [(False, "degraded"), (True, "down")])
async def test_reference_down(
    reference_required: bool,
    overall: str,
    servers: Servers,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Main required, reference down: degraded when reference is optional, down when required."""
    small_pools(monkeypatch)
    monkeypatch.setenv("POSTGRES_DSN", servers.main_dsn)
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", postgres_server.dsn(password=SECRET))
    monkeypatch.setenv("PG_REFERENCE_HEALTH_REQUIRED", str(reference_required).lower())
    container = DatabaseContainer()
    async with started(container):
        assert (await check_health(container)).status == "ok"
        postgres_server.stop()

        report = await check_health(container)

        assert report.status == overall
        assert report.databases["main"].status == "ok"
        reference = report.databases["reference"]
        assert reference.status == "down"
        assert reference.required is reference_required
        assert reference.latency_ms is None
        assert reference.server_version is None
        assert reference.error
        assert "reference" in reference.error
        assert_no_secret(report)


@pytest.mark.fault
async def test_open_breaker_is_down_without_touching_the_network(
    container: DatabaseContainer,
) -> None:
    reference = container.reference_db()
    await check_health(container)  # warm: the counters below must not move
    acquired = reference.pool.get_stats()["acquired"]
    reference.breaker.force_open()
    try:
        report = await check_health(container)
    finally:
        reference.breaker.reset()

    health = report.databases["reference"]
    assert health.status == "down"
    assert health.breaker["state"] == "forced_open"
    assert health.error is not None
    assert "breaker forced open" in health.error
    assert health.pool["acquired"] == acquired
    assert report.databases["main"].status == "ok"
    assert report.status == "down"


@pytest.mark.fault
async def test_half_open_breaker_is_degraded(
    db_env: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_REFERENCE_BREAKER_MIN_CALLS", "1")
    monkeypatch.setenv("PG_REFERENCE_BREAKER_OPEN_SEC", "0.2")
    get_postgres_config.cache_clear()
    container = DatabaseContainer()
    async with started(container):
        reference = container.reference_db()
        # A command timeout is a failure; with one call in the window the breaker opens.
        with pytest.raises(TimeoutError):
            await reference.fetchval("SELECT pg_sleep(5)", timeout=0.05)
        retry_at = reference.breaker.retry_at
        assert retry_at is not None

        async def open_time_elapsed() -> bool:
            return time.monotonic() >= retry_at

        await wait_until(open_time_elapsed)

        # The check is let through as a half-open probe; more probes are needed to close.
        report = await check_health(container)

        health = report.databases["reference"]
        assert health.status == "degraded"
        assert health.breaker["state"] == "half_open"
        assert health.server_version is not None
        assert report.status == "degraded"


async def test_pools_not_started_are_down(db_env: Servers) -> None:
    report = await check_health(DatabaseContainer())

    assert report.status == "down"
    for health in report.databases.values():
        assert health.status == "down"
        assert health.pool == {}
        assert health.error is not None
        assert "not open" in health.error
    assert_no_secret(report)


@pytest.mark.fault
async def test_a_silent_database_is_down_within_its_timeout(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reference behind a deaf proxy answers nothing: down after its 0.5 s, main still ok."""
    async with TcpProxy(servers.reference.host, servers.reference.port) as proxy:
        small_pools(monkeypatch)
        monkeypatch.setenv("POSTGRES_DSN", servers.main_dsn)
        monkeypatch.setenv("POSTGRES_REFERENCE_DSN", proxy.dsn(REFERENCE_DB, password=SECRET))
        monkeypatch.setenv("PG_REFERENCE_HEALTH_TIMEOUT_SEC", "0.5")
        container = DatabaseContainer()
        async with started(container):
            proxy.go_deaf()
            try:
                began = time.monotonic()
                report = await check_health(container)
                elapsed = time.monotonic() - began
            finally:
                proxy.restore()

    assert elapsed < 2.0
    assert report.status == "down"
    assert report.databases["main"].status == "ok"
    reference = report.databases["reference"]
    assert reference.status == "down"
    assert reference.error == "no answer within 0.5s (PG_REFERENCE_HEALTH_TIMEOUT_SEC)"
    assert_no_secret(report)


@pytest.mark.fault
async def test_cancelling_a_check_returns_at_once(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled check does not wait for its probes' clean-up on a silent network."""
    async with TcpProxy(servers.reference.host, servers.reference.port) as proxy:
        small_pools(monkeypatch)
        monkeypatch.setenv("POSTGRES_DSN", servers.main_dsn)
        monkeypatch.setenv("POSTGRES_REFERENCE_DSN", proxy.dsn(REFERENCE_DB, password=SECRET))
        container = DatabaseContainer()
        async with started(container):
            proxy.go_deaf()
            try:
                check = asyncio.create_task(check_health(container))

                async def probing() -> bool:
                    return container.reference_db().pool.get_stats()["in_use"] == 1

                await wait_until(probing)
                began = time.monotonic()
                check.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await check
                assert time.monotonic() - began < 0.5
            finally:
                proxy.restore()


@pytest.mark.fault
async def test_checks_run_concurrently(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both databases silent for their 0.5 s each: one check takes 0.5 s, not 1 s."""
    async with (
        TcpProxy(servers.main.host, servers.main.port) as main_proxy,
        TcpProxy(servers.reference.host, servers.reference.port) as reference_proxy,
    ):
        small_pools(monkeypatch)
        monkeypatch.setenv("POSTGRES_DSN", main_proxy.dsn(MAIN_DB, password=SECRET))
        monkeypatch.setenv(
            "POSTGRES_REFERENCE_DSN", reference_proxy.dsn(REFERENCE_DB, password=SECRET)
        )
        monkeypatch.setenv("PG_HEALTH_TIMEOUT_SEC", "0.5")
        monkeypatch.setenv("PG_REFERENCE_HEALTH_TIMEOUT_SEC", "0.5")
        container = DatabaseContainer()
        async with started(container):
            main_proxy.go_deaf()
            reference_proxy.go_deaf()
            try:
                began = time.monotonic()
                report = await check_health(container)
                elapsed = time.monotonic() - began
            finally:
                main_proxy.restore()
                reference_proxy.restore()

    assert 0.5 <= elapsed < 0.9, elapsed
    assert [health.status for health in report.databases.values()] == ["down", "down"]


async def test_an_embedded_container_is_checked(db_env: Servers) -> None:
    class App(containers.DeclarativeContainer):
        db = providers.Container(DatabaseContainer)

    app = App()
    async with started(app.db):
        report = await check_health(app.db)
    assert report.status == "ok"
    assert [health.status for health in report.databases.values()] == ["ok", "ok"]


async def test_health_checker_as_a_container_provider(db_env: Servers) -> None:
    """The container's ``health`` provider checks the same databases, embedded too."""

    class App(containers.DeclarativeContainer):
        db = providers.Container(DatabaseContainer)

    app = App()
    async with started(app.db):
        checker = app.db.health()
        assert isinstance(checker, HealthChecker)
        report = await checker.check()
    assert report.status == "ok"
    assert report.databases["main"].pool["acquired"] >= 1
    assert set(report.databases) == {"main", "reference"}


async def test_faked_clients_are_probed_as_they_are(db_env: Servers) -> None:
    """Under ``override_with_fakes`` no pool opens; a scripted fake answers the probe."""
    container = DatabaseContainer()
    with override_with_fakes(container) as fakes:
        fakes.main.script("SHOW server_version", "16.0 (fake)")
        fakes.reference.strict = True  # unscripted queries raise
        report = await check_health(container)
    main, reference = report.databases["main"], report.databases["reference"]
    assert (main.status, main.server_version, main.pool) == ("ok", "16.0 (fake)", {})
    assert reference.status == "down"
    assert reference.error is not None
    assert reference.error.startswith("UnscriptedQueryError")


def test_checker_needs_a_client_for_every_slot() -> None:
    container = DatabaseContainer()
    with pytest.raises(ValueError, match="a slot and a client for each database"):
        HealthChecker(
            get_postgres_config(),
            slots={"main": container.main_slot(), "reference": container.reference_slot()},
            clients={"main": container.main_db()},
        )
    with pytest.raises(ValueError, match="the reference slot was given for the main database"):
        HealthChecker(
            get_postgres_config(),
            slots={"main": container.reference_slot()},
            clients={"main": container.main_db()},
        )
