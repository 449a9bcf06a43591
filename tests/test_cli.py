"""The ``wellwon-db`` command: the demo end to end, usage errors, exit codes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wellwon_db import ConfigurationError, DatabaseUnavailableError
from wellwon_db.cli._cli import EXIT_CONFIG, EXIT_UNAVAILABLE, main


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wellwon_db", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_demo_routes_each_database_to_its_own_server() -> None:
    result = _run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout

    started = dict(re.findall(r"^  (main|reference)\s+on 127\.0\.0\.1:(\d+)$", out, re.M))
    assert set(started) == {"main", "reference"}, out
    routes = {
        client: (database, port)
        for client, database, port in re.findall(
            r"^  (MainDB|ReferenceDB)\s+-> database (\S+) on port (\d+)$", out, re.M
        )
    }
    assert routes == {
        "MainDB": ("wellwon_main", started["main"]),
        "ReferenceDB": ("wellwon_reference", started["reference"]),
    }
    assert started["main"] != started["reference"]

    # Each pool is built from its own database's settings.
    assert re.search(
        r"^  main\s+min_size=4 max_size=8 .*application_name=wellwon_db:main$", out, re.M
    )
    assert re.search(
        r"^  reference\s+min_size=2 max_size=3 .*command_timeout=5s "
        r"application_name=wellwon_db:reference$",
        out,
        re.M,
    )
    # ... and each server sees exactly its own pool's min_size connections.
    assert re.search(r"^  wellwon_db:main\s+4 connections open \(min_size 4\)$", out, re.M)
    assert re.search(r"^  wellwon_db:reference\s+2 connections open \(min_size 2\)$", out, re.M)

    # The committed transfer stands, the failed one left no trace.
    assert "  rolled back: ada cannot pay 1000" in out
    assert re.search(r"^  ada\s+balance 75\.00$", out, re.M)
    assert re.search(r"^  linus\s+balance 75\.00$", out, re.M)
    assert re.search(r"^  linus\s+ships from FI \(customs FI-TULLI\)$", out, re.M)

    # The replica answers reads; after this task's own write, main does, until replayed.
    replica_port = re.search(r"^  main replica on 127\.0\.0\.1:(\d+)$", out, re.M)
    assert replica_port is not None
    rows = re.findall(r"^    ada balance (\S+), answered by (.+) on port (\d+)$", out, re.M)
    assert rows == [
        ("75.00", "the replica", replica_port[1]),
        ("999.00", "main (the primary)", started["main"]),
        ("75.00", "the replica", replica_port[1]),
    ]

    # The cache: a miss, then hits; after the update, the new value.
    assert re.findall(r"^  GB customs (\S+) \(hits (\d+), misses (\d+)\)$", out, re.M) == [
        ("GB-HMRC", "0", "1"),
        ("GB-HMRC", "1", "1"),
        ("GB-HMRC", "2", "1"),
        ("GB-HMRC-2", "2", "2"),
    ]
    assert re.search(r"^  updated GB; the invalidation arrived after [\d.]+ ms$", out, re.M)

    # Sharding: writes routed by key, a misrouted row refused, a fan-out read merged.
    routed = re.findall(
        r"^  user (\d+)\s+\w+\s+-> logical shard (\d+)\s+on (shard_\w)$", out, re.M
    )
    assert len(routed) == 5
    assert {database for _, _, database in routed} == {"shard_a", "shard_b"}
    assert re.search(
        r"^  user 99 sent to shard_\w instead of shard_\w: refused \(no partition", out, re.M
    )
    assert "  merged, the three largest balances: alan 120.00, ada 100.00, edsger 90.00" in out
    assert "  sum over 2 of 2 shards: 435.00" in out

    assert out.splitlines()[-1] == "done: every pool closed, every server stopped and deleted."


def test_no_command_is_a_usage_error() -> None:
    result = _run(timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: wellwon-db")
    assert "COMMAND" in result.stderr
    assert result.stdout == ""


def test_unknown_command_is_a_usage_error() -> None:
    result = _run("bogus", timeout=60)
    assert result.returncode == 2
    assert "usage: wellwon-db" in result.stderr
    assert "invalid choice: 'bogus'" in result.stderr


def test_console_script_without_arguments_prints_usage() -> None:
    script = shutil.which("wellwon-db", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the wellwon-db console script is not installed in this environment")
    result = subprocess.run([script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: wellwon-db")


def test_help_lists_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: wellwon-db")
    assert "demo" in out


def test_library_errors_exit_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken_demo() -> None:
        raise ConfigurationError("set POSTGRES_DSN", env_var="POSTGRES_DSN")

    monkeypatch.setattr("wellwon_db.cli._demo.run_demo", broken_demo)
    assert main(["demo"]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.err == "wellwon-db: configuration error: set POSTGRES_DSN\n"
    assert captured.out == ""


def test_unreachable_database_has_its_own_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken_demo() -> None:
        raise DatabaseUnavailableError("the main database is down", database="main")

    monkeypatch.setattr("wellwon_db.cli._demo.run_demo", broken_demo)
    assert main(["demo"]) == EXIT_UNAVAILABLE
    assert "the main database is down" in capsys.readouterr().err


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    async def interrupted_demo() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("wellwon_db.cli._demo.run_demo", interrupted_demo)
    assert main(["demo"]) == 130
