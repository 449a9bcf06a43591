"""``wellwon_db.testing.PgBouncerServer``, and what raw asyncpg can and cannot do behind it.

PgBouncer in transaction mode hands a server connection to a client for one
transaction (or one statement outside a transaction), then to another
client. asyncpg works through it with ``statement_cache_size=0``; its
default named prepared statements do not.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from wellwon_db.testing import (
    PgBouncerNotFoundError,
    PgBouncerServer,
    PostgresServer,
    _pgbouncer,
    find_pgbouncer,
)

BOUNCED_DB = "bounced"
LEDGER_DB = "ledger"
POOL_SIZE = 5


def _why_no_pgbouncer() -> str | None:
    try:
        find_pgbouncer()
    except PgBouncerNotFoundError as exc:
        return f"{exc} (.ci/run installs it)"
    return None


_NO_PGBOUNCER = _why_no_pgbouncer()
needs_pgbouncer = pytest.mark.skipif(_NO_PGBOUNCER is not None, reason=_NO_PGBOUNCER or "")


@pytest.fixture(scope="module")
def target() -> Iterator[PostgresServer]:
    """The real server behind every PgBouncer of this module (one start for all tests)."""
    with PostgresServer("bounced") as server:
        server.create_database(BOUNCED_DB)
        yield server


@pytest.fixture
def bouncer(target: PostgresServer) -> Iterator[PgBouncerServer]:
    """PgBouncer in transaction mode, ``POOL_SIZE`` server connections per database."""
    with PgBouncerServer(target, default_pool_size=POOL_SIZE) as server:
        yield server


@pytest.fixture
async def ledger(bouncer: PgBouncerServer) -> PgBouncerServer:
    """``bouncer``, with database ``LEDGER_DB``: a one-row ``counter`` and an empty ``entries``.

    A database of its own, so that the server connections to it are this test's only.
    """
    await bouncer.target.aexecute(f"CREATE DATABASE {LEDGER_DB}")
    await bouncer.target.aexecute(
        "CREATE TABLE counter (id int PRIMARY KEY, total bigint NOT NULL);"
        "INSERT INTO counter VALUES (1, 0);"
        "CREATE TABLE entries (id serial PRIMARY KEY, amount int NOT NULL, backend int NOT NULL)",
        database=LEDGER_DB,
    )
    return bouncer


async def _backends(server: PostgresServer) -> int:
    """Client backends connected to ``LEDGER_DB``, as the server itself sees them."""
    connection = await asyncpg.connect(server.dsn(), timeout=10)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = $1 AND backend_type = 'client backend'",
            LEDGER_DB,
        )
        return count
    finally:
        await connection.close()


# -- the server object ---------------------------------------------------------


def test_the_constructor_does_no_io() -> None:
    server = PgBouncerServer(PostgresServer("unstarted"), default_pool_size=3)
    assert not server.is_running()
    assert server.port == 0
    assert repr(server) == "<PgBouncerServer transaction 127.0.0.1:0 stopped>"
    with pytest.raises(RuntimeError, match="never started"):
        _ = server.config_file
    server.stop()  # harmless before any start
    server.kill()
    server.cleanup()


def test_dsn_format() -> None:
    server = PgBouncerServer(PostgresServer("dsn"))
    server.port = 6543
    assert server.dsn() == "postgresql://postgres@127.0.0.1:6543/postgres"
    assert server.dsn("app", user="a b") == "postgresql://a%20b@127.0.0.1:6543/app"


def test_a_missing_binary_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WELLWON_PGBOUNCER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_pgbouncer, "_SYSTEM_BINARY", tmp_path / "absent")
    with pytest.raises(PgBouncerNotFoundError, match="apt-get install pgbouncer"):
        find_pgbouncer()


def test_wellwon_pgbouncer_must_name_an_executable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WELLWON_PGBOUNCER", str(tmp_path / "nope"))
    with pytest.raises(PgBouncerNotFoundError, match="WELLWON_PGBOUNCER="):
        find_pgbouncer()
    binary = tmp_path / "pgbouncer"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("WELLWON_PGBOUNCER", str(binary))
    assert find_pgbouncer() == binary


# Stands in for PgBouncer 1.23+: the first SIGTERM only starts a shutdown that
# waits for clients; a second one exits at once.
_SAFE_SHUTDOWN = """
import signal, sys, time
terms = []
def on_term(*_):
    terms.append(1)
    if len(terms) == 2:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


def test_stop_sends_a_second_sigterm_when_the_first_waits_for_clients() -> None:
    server = PgBouncerServer(PostgresServer("unstarted"))
    process = subprocess.Popen(
        [sys.executable, "-c", _SAFE_SHUTDOWN], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    server._process = process
    started = time.monotonic()
    server.stop(timeout=10)
    process.stdout.close()
    assert process.returncode == 0  # exited on the second SIGTERM, not killed
    assert time.monotonic() - started < 5


def test_the_target_must_be_started_first() -> None:
    with pytest.raises(RuntimeError, match="must be started before PgBouncer"):
        PgBouncerServer(PostgresServer("unstarted")).start()


@needs_pgbouncer
def test_a_bad_configuration_fails_with_the_log(target: PostgresServer) -> None:
    server = PgBouncerServer(target, settings={"pool_mode": "bogus"})
    try:
        with pytest.raises(RuntimeError, match=r"pgbouncer exited(.|\n)*pool_mode"):
            server.start()
    finally:
        server.cleanup()


@needs_pgbouncer
async def test_stop_and_start_again_on_the_same_port(bouncer: PgBouncerServer) -> None:
    port = bouncer.port
    assert bouncer.is_running()
    assert repr(bouncer) == f"<PgBouncerServer transaction 127.0.0.1:{port} running>"
    config = bouncer.config_file.read_text()
    assert "pool_mode = transaction" in config
    assert f"default_pool_size = {POOL_SIZE}" in config
    bouncer.stop()
    assert not bouncer.is_running()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(bouncer.dsn(BOUNCED_DB), statement_cache_size=0, timeout=5)
    bouncer.start()
    assert bouncer.port == port
    connection = await asyncpg.connect(bouncer.dsn(BOUNCED_DB), statement_cache_size=0, timeout=5)
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()
    base = bouncer.config_file.parent
    bouncer.cleanup()
    assert not bouncer.is_running()
    assert not base.exists()


# -- raw asyncpg through PgBouncer ---------------------------------------------


@needs_pgbouncer
async def test_asyncpg_connects_through_it_without_a_statement_cache(
    bouncer: PgBouncerServer,
) -> None:
    connection = await asyncpg.connect(bouncer.dsn(BOUNCED_DB), statement_cache_size=0, timeout=5)
    try:
        assert bouncer.port != bouncer.target.port
        # The answer comes from the real server, behind PgBouncer.
        assert await connection.fetchval("SELECT inet_server_port()") == bouncer.target.port
        assert await connection.fetchval("SELECT current_database()") == BOUNCED_DB
        assert await connection.fetchval("SELECT $1::int + $2", 40, 2) == 42
        async with connection.transaction():
            pid = await connection.fetchval("SELECT pg_backend_pid()")
            assert await connection.fetchval("SELECT pg_backend_pid()") == pid
    finally:
        await connection.close()


@needs_pgbouncer
async def test_startup_parameters_pgbouncer_refuses(bouncer: PgBouncerServer) -> None:
    """application_name is tracked and extra_float_digits ignored; most other settings refused.

    asyncpg itself sends only ``client_encoding`` (tracked by PgBouncer), so
    its defaults connect; ``server_settings`` beyond the tracked ones do not.
    """
    connection = await asyncpg.connect(
        bouncer.dsn(BOUNCED_DB),
        statement_cache_size=0,
        server_settings={"application_name": "bounced-app", "extra_float_digits": "3"},
        timeout=5,
    )
    try:
        assert await connection.fetchval("SHOW application_name") == "bounced-app"
    finally:
        await connection.close()
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter"):
        await asyncpg.connect(
            bouncer.dsn(BOUNCED_DB),
            statement_cache_size=0,
            server_settings={"statement_timeout": "1000"},
            timeout=5,
        )


@needs_pgbouncer
async def test_concurrent_transactions_through_a_small_pgbouncer_pool(
    ledger: PgBouncerServer,
) -> None:
    """50 tasks, 10 asyncpg connections, 5 server connections: every transaction counts once."""
    pool = await asyncpg.create_pool(
        ledger.dsn(LEDGER_DB), min_size=10, max_size=10, statement_cache_size=0
    )
    peak = 0
    running = True

    async def sample_backends() -> None:
        nonlocal peak
        while running:
            peak = max(peak, await _backends(ledger.target))
            await asyncio.sleep(0.005)

    async def transfer(amount: int) -> int:
        async with pool.acquire() as connection, connection.transaction():
            backend: int = await connection.fetchval("SELECT pg_backend_pid()")
            await connection.execute(
                "INSERT INTO entries (amount, backend) VALUES ($1, pg_backend_pid())", amount
            )
            await connection.execute("SELECT pg_sleep(0.01)")  # hold the server connection
            await connection.execute("UPDATE counter SET total = total + $1 WHERE id = 1", amount)
            # One transaction stays on one server connection from BEGIN to COMMIT.
            assert await connection.fetchval("SELECT pg_backend_pid()") == backend
            return backend

    sampler = asyncio.create_task(sample_backends())
    try:
        backends = await asyncio.gather(*(transfer(amount) for amount in range(1, 51)))
    finally:
        running = False
        await sampler
        await pool.close()

    expected = sum(range(1, 51))
    check = await asyncpg.connect(ledger.target.dsn(LEDGER_DB), timeout=10)
    try:
        assert await check.fetchval("SELECT total FROM counter WHERE id = 1") == expected
        assert await check.fetchval("SELECT count(*) FROM entries") == 50
        assert await check.fetchval("SELECT sum(amount) FROM entries") == expected
        used = await check.fetchval("SELECT count(DISTINCT backend) FROM entries")
    finally:
        await check.close()
    # 10 client connections shared at most 5 server connections...
    assert 1 <= len(set(backends)) <= POOL_SIZE
    assert used == len(set(backends))
    # ...and the server never saw more than that from PgBouncer.
    assert 1 <= peak <= POOL_SIZE


@needs_pgbouncer
async def test_named_prepared_statements_break_behind_transaction_pooling(
    bouncer: PgBouncerServer,
) -> None:
    """A demonstration: a statement prepared on one server connection is run on another.

    ``first`` runs a query with arguments: asyncpg prepares it as a named
    statement on some server connection X, caches it, and X goes back to
    PgBouncer. Other clients then open transactions, one at a time, until one
    of them holds X (it sees the statement in ``pg_prepared_statements``).
    ``first`` runs the query again: asyncpg binds its cached statement on the
    server connection it gets now, where the statement does not exist.
    """
    dsn = bouncer.dsn(BOUNCED_DB)
    first = await asyncpg.connect(dsn, timeout=5)  # asyncpg's default statement cache
    holders: list[asyncpg.Connection] = []
    try:
        assert await first.fetchval("SELECT $1::int", 1) == 1
        for _ in range(POOL_SIZE - 1):
            holder = await asyncpg.connect(dsn, statement_cache_size=0, timeout=5)
            holders.append(holder)
            await holder.execute("BEGIN")
            if await holder.fetchval("SELECT count(*) FROM pg_prepared_statements"):
                break
        else:
            pytest.fail("no server connection held the prepared statement")
        with pytest.raises(asyncpg.InvalidSQLStatementNameError, match="does not exist"):
            await first.fetchval("SELECT $1::int", 2)
    finally:
        for holder in holders:
            await holder.close()
        await first.close()


@needs_pgbouncer
async def test_asyncpgs_default_statement_cache_fails_under_concurrency(
    bouncer: PgBouncerServer,
) -> None:
    """A demonstration: the same workload as above with asyncpg's default cache fails.

    asyncpg prepares a named statement in one round trip and binds it in the
    next; in between PgBouncer may move the client to another server
    connection. asyncpg adds a hint that names PgBouncer.
    """
    pool = await asyncpg.create_pool(
        bouncer.dsn(BOUNCED_DB), min_size=10, max_size=10, statement_cache_size=100
    )

    async def query(value: int) -> int:
        async with pool.acquire() as connection:
            result: int = await connection.fetchval("SELECT $1::int", value)
            return result

    try:
        results = await asyncio.gather(
            *(query(value) for value in range(50)), return_exceptions=True
        )
    finally:
        await pool.close()
    failures = [result for result in results if isinstance(result, BaseException)]
    assert failures, "every query succeeded: PgBouncer kept prepared statements?"
    for failure in failures:
        assert isinstance(
            failure, asyncpg.InvalidSQLStatementNameError | asyncpg.DuplicatePreparedStatementError
        ), failure
    assert "pgbouncer" in (getattr(failures[0], "hint", "") or "")
