"""How many workers share a connection budget when no setting says (config/_workers.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from wellwon_db.config._workers import WorkerCount, parse_worker_option, worker_count


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["python", "-m", "uvicorn", "app:app", "--workers", "4"],
            WorkerCount(4, "uvicorn --workers"),
        ),
        (["/venv/bin/uvicorn", "app:app", "--workers=3"], WorkerCount(3, "uvicorn --workers")),
        (["/venv/bin/gunicorn", "-w5", "app:app"], WorkerCount(5, "gunicorn --workers")),
        (
            ["gunicorn", "-w", "2", "-k", "uvicorn.workers.UvicornWorker", "app:app"],
            WorkerCount(2, "gunicorn --workers"),
        ),
        (["hypercorn", "--workers", "6", "app:app"], WorkerCount(6, "hypercorn --workers")),
        # A server whose count is not on its command line: known server, unknown count.
        (["gunicorn: master [app]"], WorkerCount(1, "assumed", server="gunicorn")),
        (
            ["/venv/bin/gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            WorkerCount(1, "assumed", server="gunicorn"),
        ),
        # Not a server: one process.
        (["python", "manage.py", "--workers", "9"], WorkerCount(1, "assumed")),
        ([], WorkerCount(1, "assumed")),
    ],
)
def test_the_parent_command_line_gives_the_worker_count(
    argv: list[str], expected: WorkerCount, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert worker_count(argv) == expected


def test_web_concurrency_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "7")
    assert worker_count(["uvicorn", "--workers", "2"]) == WorkerCount(7, "WEB_CONCURRENCY")


def test_parse_worker_option_ignores_what_is_no_count() -> None:
    assert parse_worker_option(["--workers", "many"]) is None
    assert parse_worker_option(["--workers"]) is None
    assert parse_worker_option(["-w0"]) == 1


def test_a_budget_under_a_server_of_unknown_size_warns(tmp_path: object) -> None:
    """A worker whose parent is titled ``gunicorn: master`` warns, naming what to set."""
    child = textwrap.dedent(
        """
        import logging, os, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
        from wellwon_db import PostgresConfig
        config = PostgresConfig.load(values={})
        pool = config.get_pool_config("main")
        pool = config.get_pool_config("main")  # warned once, not per look-up
        print("workers", pool.workers, pool.workers_source)
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "POSTGRES_DSN": "postgresql://app@127.0.0.1:1/app",
        "PG_POOL_BUDGET": "20",
    }
    # The parent's argv[0] is a process title, as gunicorn's master sets it.
    parent = (
        "import subprocess, sys; "
        f"sys.exit(subprocess.run([{sys.executable!r}, '-c', {child!r}]).returncode)"
    )
    result = subprocess.run(
        ["bash", "-c", 'exec -a "gunicorn: master [app]" "$0" -c "$1"', sys.executable, parent],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    warnings = [line for line in lines if "PG_POOL_BUDGET is set" in line]
    assert len(warnings) == 1, result.stdout
    assert "gunicorn worker" in warnings[0]
    assert "WEB_CONCURRENCY or PG_POOL_WORKERS" in warnings[0]
    assert "workers 1 assumed" in lines
