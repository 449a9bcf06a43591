"""``wellwon-db health`` and ``wellwon-db config``: the real command against real servers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import SECRET, Servers, run_cli
from wellwon_db.cli._cli import EXIT_CONFIG, EXIT_DEGRADED, EXIT_DOWN, EXIT_OK, main
from wellwon_db.testing import PostgresServer

ROW = re.compile(r"^(main|reference)\s+(ok|degraded|down)\s+(yes|no)\s+(\S+)\s+(.*)$", re.M)
SETTING = re.compile(r"^  (\S+)\s+(.*?)\s+(default|derived|env|\.env)$", re.M)


def rows(stdout: str) -> dict[str, tuple[str, ...]]:
    return {match[0]: match[1:] for match in ROW.findall(stdout)}


def settings_table(stdout: str, database: str) -> dict[str, tuple[str, str]]:
    section = stdout.split(f"\n{database} database\n", 1)[1].split("\n\n", 1)[0]
    return {name: (value, source) for name, value, source in SETTING.findall(section)}


# -- health ------------------------------------------------------------------------


@pytest.mark.slow
def test_health_prints_a_table_and_exits_0(servers: Servers, tmp_path: Path) -> None:
    result = run_cli(
        "health",
        cwd=tmp_path,
        POSTGRES_DSN=servers.main_dsn,
        POSTGRES_REFERENCE_DSN=servers.reference_dsn,
    )

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert result.stdout.startswith("overall: ok (checked at ")
    assert re.search(
        r"^database\s+status\s+required\s+latency ms\s+server version", result.stdout, re.M
    )
    table = rows(result.stdout)
    assert set(table) == {"main", "reference"}
    for status, required, latency, rest in table.values():
        assert (status, required) == ("ok", "yes")
        assert float(latency) > 0
        # server version, pool size/in use/waiting (one connection), breaker, tls
        assert re.match(r"\d+\.\d+.*\s1/0/0\s+closed\s+not encrypted \(sslmode=prefer\)$", rest), (
            rest
        )


@pytest.mark.slow
def test_health_json(servers: Servers, tmp_path: Path) -> None:
    result = run_cli(
        "health",
        "--json",
        cwd=tmp_path,
        POSTGRES_DSN=servers.main_dsn,
        POSTGRES_REFERENCE_DSN=servers.reference_dsn,
    )

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "ok"
    assert set(report["databases"]) == {"main", "reference"}
    for name, health in report["databases"].items():
        assert health["database"] == name
        assert health["status"] == "ok"
        assert health["error"] is None
        assert health["server_version"]
        assert health["pool"]["size"] == 1
        assert health["breaker"]["state"] == "closed"


@pytest.mark.slow
def test_health_reads_the_dotenv_file(servers: Servers, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"POSTGRES_DSN={servers.main_dsn}\nPOSTGRES_REFERENCE_DSN={servers.reference_dsn}\n"
    )
    assert run_cli("health", cwd=tmp_path).returncode == EXIT_OK


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.parametrize(
    ("required", "exit_code", "overall"),
    [("false", EXIT_DEGRADED, "degraded"), ("true", EXIT_DOWN, "down")],
)
def test_health_with_reference_stopped(
    required: str,
    exit_code: int,
    overall: str,
    servers: Servers,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    reference_dsn = postgres_server.dsn(password=SECRET)
    postgres_server.stop()

    result = run_cli(
        "health",
        cwd=tmp_path,
        POSTGRES_DSN=servers.main_dsn,
        POSTGRES_REFERENCE_DSN=reference_dsn,
        PG_REFERENCE_HEALTH_REQUIRED=required,
    )

    assert result.returncode == exit_code, result.stdout + result.stderr
    assert result.stdout.startswith(f"overall: {overall} ")
    table = rows(result.stdout)
    assert table["main"][:2] == ("ok", "yes")
    status, is_required, latency, rest = table["reference"]
    assert (status, is_required, latency) == ("down", "yes" if required == "true" else "no", "-")
    # The reason opening the pool failed, with the address and never the password.
    assert f"127.0.0.1:{postgres_server.port}" in rest
    assert "unavailable" in rest


@pytest.mark.slow
def test_health_without_a_dsn_names_the_variable(servers: Servers, tmp_path: Path) -> None:
    # An optional database without a DSN is off: listed, not checked, not failing.
    result = run_cli("health", cwd=tmp_path, POSTGRES_DSN=servers.main_dsn)
    assert result.returncode == EXIT_OK, result.stderr
    assert "reference: not configured (set POSTGRES_REFERENCE_DSN" in result.stdout

    # Required (the seed's behaviour, one setting away): a configuration error naming it.
    result = run_cli(
        "health",
        cwd=tmp_path,
        POSTGRES_DSN=servers.main_dsn,
        PG_REFERENCE_STARTUP_DSN_REQUIRED="true",
    )
    assert result.returncode == EXIT_CONFIG
    assert result.stdout == ""
    assert result.stderr.startswith("wellwon-db: configuration error: ")
    assert "set POSTGRES_REFERENCE_DSN" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["health", "config"])
def test_malformed_setting_exits_78_naming_the_variable(command: str, tmp_path: Path) -> None:
    result = run_cli(
        command,
        cwd=tmp_path,
        POSTGRES_DSN=f"postgresql://app:{SECRET}@db:5432/app",
        POSTGRES_REFERENCE_DSN=f"postgresql://ref:{SECRET}@db:5432/ref",
        PG_POOL_MAX_SIZE="abc",
    )

    assert result.returncode == EXIT_CONFIG
    assert result.stdout == ""
    assert result.stderr.startswith("wellwon-db: configuration error: ")
    assert "PG_POOL_MAX_SIZE" in result.stderr


@pytest.mark.slow
def test_missing_env_file_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_cli("config", "--env-file", "missing.env", cwd=tmp_path)

    assert result.returncode == EXIT_CONFIG
    assert (
        result.stderr == "wellwon-db: configuration error: --env-file missing.env: no such file\n"
    )


# -- config ------------------------------------------------------------------------


def _write_dotenv(path: Path) -> None:
    path.write_text(
        f"POSTGRES_REFERENCE_DSN=postgresql://ref:{SECRET}@ref-db:5433/reference\n"
        "PG_REFERENCE_POOL_MAX_SIZE=7\n"
        "PG_POOL_MAX_SIZE=99\n"  # the environment wins over .env
    )


@pytest.mark.slow
def test_config_shows_each_value_and_where_it_came_from(tmp_path: Path) -> None:
    _write_dotenv(tmp_path / ".env")

    result = run_cli(
        "config",
        cwd=tmp_path,
        POSTGRES_DSN=f"postgresql://app:{SECRET}@main-db:5432/app",
        PG_POOL_MAX_SIZE="9",
    )

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert result.stdout.startswith(f"env file: {tmp_path.resolve() / '.env'}\n")
    main, reference = (
        settings_table(result.stdout, "main"),
        settings_table(result.stdout, "reference"),
    )
    assert main["POSTGRES_DSN"] == ("postgresql://app:***@main-db:5432/app", "env")
    assert main["PG_POOL_MAX_SIZE"] == ("9", "env")
    assert main["PG_POOL_MIN_SIZE"] == ("9", "derived")  # the default follows a smaller maximum
    assert main["PG_POOL_TIMEOUT_SEC"] == ("10.0", "default")
    assert main["PG_COMMAND_TIMEOUT_SEC"] == ("60.0", "default")
    assert reference["POSTGRES_REFERENCE_DSN"] == (
        "postgresql://ref:***@ref-db:5433/reference",
        ".env",
    )
    assert reference["PG_REFERENCE_POOL_MAX_SIZE"] == ("7", ".env")
    assert reference["PG_REFERENCE_HEALTH_REQUIRED"] == ("true", "default")
    assert reference["PG_REFERENCE_POOL_APPLICATION_NAME"] == ("(unset)", "default")


@pytest.mark.slow
def test_config_json_with_an_explicit_env_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    _write_dotenv(elsewhere / "app.env")

    result = run_cli(
        "config",
        "--json",
        "--env-file",
        str(elsewhere / "app.env"),
        cwd=tmp_path,
        POSTGRES_DSN=f"postgresql://app:{SECRET}@main-db:5432/app",
        PG_COMMAND_TIMEOUT_SEC="5",
    )

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["env_file"] == str((elsewhere / "app.env").resolve())
    main, reference = report["databases"]["main"], report["databases"]["reference"]
    assert main["dsn"] == {
        "variable": "POSTGRES_DSN",
        "value": "postgresql://app:***@main-db:5432/app",
        "source": "env",
    }
    assert main["pool_command_timeout_sec"] == {
        "variable": "PG_COMMAND_TIMEOUT_SEC",
        "value": 5.0,
        "source": "env",
    }
    assert main["pool_max_size"] == {"variable": "PG_POOL_MAX_SIZE", "value": 99, "source": ".env"}
    assert reference["pool_max_size"]["source"] == ".env"
    assert reference["pool_min_size"] == {
        "variable": "PG_REFERENCE_POOL_MIN_SIZE",
        "value": 7,
        "source": "derived",
    }
    assert reference["breaker_enabled"] == {
        "variable": "PG_REFERENCE_BREAKER_ENABLED",
        "value": True,
        "source": "default",
    }


@pytest.mark.slow
def test_config_without_a_dsn_shows_the_rest_and_names_the_variable(tmp_path: Path) -> None:
    # Optional: shown unset, not an error.
    result = run_cli("config", cwd=tmp_path, POSTGRES_DSN="postgresql://app@main-db/app")
    assert result.returncode == EXIT_OK, result.stderr
    reference = settings_table(result.stdout, "reference")
    assert reference["POSTGRES_REFERENCE_DSN"] == ("(unset)", "default")

    # Main's DSN is required by default: shown, then the error naming it.
    result = run_cli("config", cwd=tmp_path, POSTGRES_REFERENCE_DSN="postgresql://r@ref-db/r")
    assert result.returncode == EXIT_CONFIG
    main_table = settings_table(result.stdout, "main")
    assert main_table["POSTGRES_DSN"] == ("(unset)", "default")
    assert "set POSTGRES_DSN" in result.stderr


def test_help_lists_the_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "health", "config"):
        assert command in out
    assert "2   health: down (a required database is down); also a usage error" in out
    assert "78  a setting is missing or malformed" in out
