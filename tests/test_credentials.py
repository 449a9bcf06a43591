"""Credentials and TLS against a real server: TLS on, scram-sha-256 for a non-superuser role.

The module starts one server with a throwaway CA and server certificate
(``openssl``), ``log_connections`` on (its log counts the logins and TLS
handshakes each scenario costs the server), and roles ``app`` (password) and
``certuser`` (client certificate). Each test sets its own password on ``app``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import wait_until
from wellwon_db import (
    ConfigurationError,
    DatabaseContainer,
    DatabasePool,
    DatabaseUnavailableError,
    check_health,
    database_lifespan,
    start_databases,
    stop_databases,
)
from wellwon_db.cli._cli import run_config, run_health
from wellwon_db.testing import PgBouncerServer, PostgresServer, TlsFiles, make_certificates

DB = "creds"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certificates(tmp_path_factory.mktemp("certs"), client="certuser")


@pytest.fixture(scope="module")
def server(tls: TlsFiles) -> Iterator[PostgresServer]:
    server = PostgresServer(
        "creds",
        tls=tls,
        password_auth=True,
        hba=[f"hostssl {DB} certuser 127.0.0.1/32 cert"],
        settings={"log_connections": "on"},
    ).start()
    server.execute("CREATE ROLE app LOGIN PASSWORD 'unset'")
    server.execute("CREATE ROLE certuser LOGIN")
    server.execute(f"CREATE DATABASE {DB} OWNER app")
    try:
        yield server
    finally:
        server.cleanup()


class Log:
    """The server's log from the moment it is made: count what happened since."""

    def __init__(self, server: PostgresServer) -> None:
        self.path = server.log_file
        self.start = self.path.stat().st_size

    def count(self, text: str) -> int:
        with self.path.open("rb") as log:
            log.seek(self.start)
            return log.read().decode(errors="replace").count(text)


@pytest.fixture
def password(server: PostgresServer, tmp_path: Path) -> Path:
    """``app``'s password, in the file PG_PASSWORD_FILE will name."""
    path = tmp_path / "password"
    path.write_text("first-password\n")
    server.execute("ALTER ROLE app PASSWORD 'first-password'")
    return path


@pytest.fixture
def env(
    server: PostgresServer, tls: TlsFiles, password: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The main database as production runs it: verify-full, the password from a file."""
    values = {
        "POSTGRES_DSN": f"postgresql://app@localhost:{server.port}/{DB}",
        "PG_PASSWORD_FILE": str(password),
        "PG_POOL_SSLMODE": "verify-full",
        "PG_POOL_SSLROOTCERT": str(tls.ca),
        "PG_POOL_MIN_SIZE": "1",
        "PG_POOL_MAX_SIZE": "4",
        # What could turn a refusal into a storm: generous retries and start-up waits.
        "PG_RETRY_ATTEMPTS": "5",
        "PG_STARTUP_WAIT_SEC": "5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
async def container(env: dict[str, str]) -> AsyncIterator[DatabaseContainer]:
    container = DatabaseContainer()
    async with database_lifespan(container):
        yield container


def _rewrite(path: Path, text: str) -> None:
    path.write_text(text)


def _pool(container: DatabaseContainer) -> DatabasePool:
    pool = container.main_slot().pool
    assert pool is not None
    return pool


async def _terminate(server: PostgresServer, user: str = "app") -> None:
    await server.aexecute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'"
    )


async def _backends(server: PostgresServer) -> set[int]:
    connection = await asyncpg.connect(server.dsn(), timeout=10)
    try:
        rows = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE usename = 'app'")
    finally:
        await connection.close()
    return {row["pid"] for row in rows}


# -- secrets from files -------------------------------------------------------------------


async def test_the_dsn_and_password_from_files(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(env["POSTGRES_DSN"] + "\n")
    monkeypatch.delenv("POSTGRES_DSN")
    monkeypatch.setenv("POSTGRES_DSN_FILE", str(dsn_file))
    container = DatabaseContainer()
    async with database_lifespan(container):
        assert await container.main_db().fetchval("SELECT current_user") == "app"
    shown: list[str] = []
    run_config(None, as_json=True, out=shown.append)
    assert "first-password" not in shown[0]
    assert f":{env['POSTGRES_DSN'].rpartition(':')[2]}" not in shown[0]  # port and database
    assert "(read from POSTGRES_DSN_FILE)" in shown[0]


async def test_a_rotated_password_file_needs_no_restart(
    container: DatabaseContainer, server: PostgresServer, password: Path
) -> None:
    """Change the role's password, write the new one, terminate the pool's backends: the
    replacements log in with the new password and traffic sees no error after them."""
    db = container.main_db()
    results: dict[str, list[BaseException | None]] = {"before": [], "after": []}
    phase = "before"
    running = True

    async def traffic() -> None:
        while running:
            try:
                await db.fetchval("SELECT 1")
                results[phase].append(None)
            except Exception as exc:
                results[phase].append(exc)
            await asyncio.sleep(0.001)

    workers = [asyncio.create_task(traffic()) for _ in range(4)]
    try:
        await wait_until(lambda: _true(len(results["before"]) >= 50))
        old = await _backends(server)
        await server.aexecute("ALTER ROLE app PASSWORD 'second-password'")
        _rewrite(password, "second-password\n")
        await _terminate(server)

        async def replaced() -> bool:
            now = await _backends(server)
            return bool(now) and not now & old

        await wait_until(replaced)
        phase = "after"
        await wait_until(lambda: _true(len(results["after"]) >= 200))
    finally:
        running = False
        await asyncio.gather(*workers)
    after = [error for error in results["after"] if error is not None]
    assert after == []
    before = [error for error in results["before"] if error is not None]
    # Terminated mid-query, a statement may fail as an outage: never as a refused login.
    assert all(isinstance(error, DatabaseUnavailableError) for error in before), before
    assert container.main_slot().breaker.snapshot()["state"] == "closed"


async def test_a_refused_login_reads_the_file_once_more(
    container: DatabaseContainer, server: PostgresServer, password: Path
) -> None:
    """A file rewritten in place with its old modification time and size: only a refusal
    makes the pool read it again, and the one retry then logs in."""
    stat = os.stat(password)
    await server.aexecute("ALTER ROLE app PASSWORD 'other-password'")
    _rewrite(password, "other-password\n")
    os.utime(password, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    now = os.stat(password)  # same modification time, size and inode: nothing tells
    assert (now.st_mtime_ns, now.st_size, now.st_ino) == (
        stat.st_mtime_ns,
        stat.st_size,
        stat.st_ino,
    )
    pool = _pool(container)
    opened = pool.get_stats()["connections_opened"]
    log = Log(server)
    await _terminate(server)
    # The pool refills its minimum: refused with the old password, then in with the new.
    await wait_until(lambda: _true(pool.get_stats()["connections_opened"] > opened))
    assert await container.main_db().fetchval("SELECT current_user") == "app"
    assert log.count('password authentication failed for user "app"') == 1


# -- refused logins -----------------------------------------------------------------------


async def test_a_wrong_password_is_a_configuration_error_at_start_up(
    env: dict[str, str], server: PostgresServer, password: Path
) -> None:
    _rewrite(password, "wrong-password\n")
    log = Log(server)
    container = DatabaseContainer()
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        await start_databases(container)
    assert time.monotonic() - started < 2  # neither the start-up wait nor retries
    message = str(info.value)
    assert info.value.env_var == "PG_PASSWORD_FILE"
    assert f"the main database (connecting to localhost:{server.port}) refused the login" in (
        message
    )
    assert f"PG_PASSWORD_FILE ({password})" in message
    assert "wrong-password" not in message
    assert log.count('password authentication failed for user "app"') == 1
    await stop_databases(container)


async def test_refused_logins_under_traffic_neither_trip_the_breaker_nor_storm(
    container: DatabaseContainer, server: PostgresServer
) -> None:
    """The role's password changes and the file does not follow: every call fails with the
    configuration error, the breaker stays closed, and the server sees a few logins only."""
    await server.aexecute("ALTER ROLE app PASSWORD 'changed-elsewhere'")
    pool = _pool(container)
    log = Log(server)
    await _terminate(server)
    await wait_until(lambda: _true(log.count("password authentication failed") == 1))
    assert pool.get_stats()["size"] == 0
    log = Log(server)
    db = container.main_db()
    started = time.monotonic()
    for _ in range(100):
        with pytest.raises(ConfigurationError) as info:
            await db.fetchval("SELECT 1")
        assert info.value.env_var == "PG_PASSWORD_FILE"
    elapsed = time.monotonic() - started
    snapshot = container.main_slot().breaker.snapshot()
    assert (snapshot["state"], snapshot["failures"]) == ("closed", 0)
    # One login, then one more per holdoff (0.5 s, doubling) at most.
    assert log.count('password authentication failed for user "app"') <= 2 + elapsed / 0.5


# -- TLS ---------------------------------------------------------------------------------


async def test_verify_full_with_the_right_ca_connects_encrypted(
    container: DatabaseContainer,
) -> None:
    row = await container.main_db().fetchrow(
        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    )
    assert row is not None
    assert row["ssl"] is True
    tls = (await check_health(container)).databases["main"].tls
    assert tls == {
        "sslmode": "verify-full",
        "sslmode_from": "PG_POOL_SSLMODE",
        "verification": "full",
        "encrypted": True,
        "protocol": row["version"],
    }


@pytest.mark.parametrize(
    ("change", "variable", "says"),
    [
        pytest.param(
            {"PG_POOL_SSLROOTCERT": "other_ca"},
            "PG_POOL_SSLROOTCERT",
            "it is not signed by a CA the client trusts",
            id="wrong CA",
        ),
        pytest.param(
            {"POSTGRES_DSN": "postgresql://app@127.0.0.1:{port}/" + DB},
            "POSTGRES_DSN",
            "it is not valid for the host name in POSTGRES_DSN",
            id="wrong host name",
        ),
    ],
)
async def test_a_certificate_that_does_not_verify_fails_once(
    env: dict[str, str],
    server: PostgresServer,
    tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, str],
    variable: str,
    says: str,
) -> None:
    for name, value in change.items():
        value = str(tls.other_ca) if value == "other_ca" else value.format(port=server.port)
        monkeypatch.setenv(name, value)
    log = Log(server)
    container = DatabaseContainer()
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        await start_databases(container)
    assert time.monotonic() - started < 2
    assert info.value.env_var == variable
    assert "presented a TLS certificate that did not verify (sslmode=verify-full)" in str(
        info.value
    )
    assert says in str(info.value)
    await wait_until(lambda: _true(log.count("could not accept SSL connection") >= 1))
    assert log.count("connection received") == 1  # one handshake: no retry
    await stop_databases(container)


async def test_a_client_certificate_logs_in(
    env: dict[str, str], server: PostgresServer, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", f"postgresql://certuser@localhost:{server.port}/{DB}")
    monkeypatch.delenv("PG_PASSWORD_FILE")
    container = DatabaseContainer()
    with pytest.raises(ConfigurationError, match="refused the login") as info:
        await start_databases(container)  # no certificate: pg_hba.conf's `cert` refuses
    assert "no password (PG_PASSWORD_FILE is unset" in str(info.value)
    await stop_databases(container)
    monkeypatch.setenv("PG_POOL_SSLCERT", str(tls.client_cert))
    monkeypatch.setenv("PG_POOL_SSLKEY", str(tls.client_key))
    async with database_lifespan(container):
        assert await container.main_db().fetchval("SELECT current_user") == "certuser"


async def test_health_shows_encryption_and_verification(env: dict[str, str]) -> None:
    shown: list[str] = []
    assert await run_health(None, as_json=False, out=shown.append) == 0
    main = next(line for line in shown[0].splitlines() if line.startswith("main "))
    assert "verified (CA, host name) (sslmode=verify-full)" in main
    assert "TLSv1." in main


# -- a password provider in code ----------------------------------------------------------


async def test_an_async_password_provider_is_asked_for_each_connection(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PG_PASSWORD_FILE")
    asked: list[float] = []

    async def token() -> str:
        asked.append(time.monotonic())
        return "first-password"

    container = DatabaseContainer()
    container.settings.from_dict({"main": {"password_provider": token, "pool_min_size": 2}})
    async with database_lifespan(container):
        assert await container.main_db().fetchval("SELECT current_user") == "app"
        assert len(asked) == 2


# -- read-only sessions -------------------------------------------------------------------


async def test_a_read_only_pool_refuses_writes_at_the_server(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_POOL_READ_ONLY", "true")
    container = DatabaseContainer()
    async with database_lifespan(container):
        db = container.main_db()
        assert await db.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await db.execute("CREATE TABLE stray (id int)")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            async with db.transaction() as scope:
                await scope.execute("CREATE TABLE stray (id int)")
        assert container.main_slot().breaker.snapshot()["state"] == "closed"


async def test_read_only_sessions_through_pgbouncer_say_what_to_configure(
    server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PgBouncer (before 1.20, or without track_extra_parameters) refuses the parameter:
    start-up says so, instead of running writable sessions."""
    with PgBouncerServer(server) as bouncer:
        monkeypatch.setenv("POSTGRES_DSN", bouncer.dsn(DB))
        monkeypatch.setenv("PG_POOL_PGBOUNCER", "true")
        monkeypatch.setenv("PG_POOL_MIN_SIZE", "1")
        monkeypatch.setenv("PG_POOL_READ_ONLY", "true")
        container = DatabaseContainer()
        with pytest.raises(ConfigurationError) as info:
            await start_databases(container)
        await stop_databases(container)
        assert info.value.env_var == "PG_POOL_READ_ONLY"
        assert "track_extra_parameters" in str(info.value)
        monkeypatch.setenv("PG_POOL_READ_ONLY", "false")
        async with database_lifespan(container):
            assert await container.main_db().fetchval("SELECT 1") == 1


async def _true(value: bool) -> bool:
    return value
