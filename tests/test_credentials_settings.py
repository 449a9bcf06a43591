"""Credentials and TLS settings without a server: files, conflicts, sources, refusals.

What a refused connection becomes (``ConfigurationError`` naming the database,
the server and the variable; never retried, never a breaker failure) is checked
here on the errors asyncpg and ``ssl`` raise; tests/test_credentials.py shows
the same against a real server with TLS and scram-sha-256.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import asyncpg
import pytest

from wellwon_db import (
    BreakerConfig,
    CircuitBreaker,
    ConfigurationError,
    Database,
    PostgresConfig,
)
from wellwon_db.client._guarded import record_outcome
from wellwon_db.config._credentials import (
    ConnectParams,
    ConnectSources,
    PasswordFile,
    RecentlyRefused,
    refusal_of,
)
from wellwon_db.config._report import build_config_report
from wellwon_db.config._tls import merge_tls, tls_mode
from wellwon_db.pool._failures import is_availability_failure, translate_error
from wellwon_db.resilience._retry import is_retryable, is_transaction_retryable
from wellwon_db.testing import TlsFiles, make_certificates

DSN = "postgresql://app@db.internal:5432/app"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _secret(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


# -- the DSN from a file ---------------------------------------------------------------


def test_the_dsn_comes_from_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = "postgresql://app:hunter2@db.internal:5432/app"
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN_FILE", str(_secret(tmp_path, "dsn", dsn + "\n")))
    config = PostgresConfig.load()
    assert config.get_dsn(Database.REFERENCE) == dsn
    assert not config.has_dsn(Database.MAIN)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda tmp: tmp / "missing", "No such file or directory"),
        (lambda tmp: tmp, "Is a directory"),
        (lambda tmp: _secret(tmp, "empty", "\n"), "is empty"),
    ],
    ids=["missing", "directory", "empty"],
)
def test_an_unusable_dsn_file_names_the_variable_and_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: object, why: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    monkeypatch.setenv("POSTGRES_DSN_FILE", str(path))
    with pytest.raises(ConfigurationError) as info:
        PostgresConfig.load()
    assert info.value.env_var == "POSTGRES_DSN_FILE"
    assert f"POSTGRES_DSN_FILE={path}" in str(info.value)
    assert why in str(info.value)


def test_an_unreadable_file_is_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = _secret(tmp_path, "password", "hunter2")
    path.chmod(0)
    monkeypatch.setenv("PG_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigurationError, match="Permission denied") as info:
        PostgresConfig.load()
    assert info.value.env_var == "PG_PASSWORD_FILE"


def test_a_dsn_file_with_a_bad_dsn_never_shows_its_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "mysql://root:hunter2@db/app"
    monkeypatch.setenv("POSTGRES_DSN_FILE", str(_secret(tmp_path, "dsn", secret)))
    with pytest.raises(ConfigurationError) as info:
        PostgresConfig.load()
    assert info.value.env_var == "POSTGRES_DSN_FILE"
    assert "hunter2" not in str(info.value)
    assert "db/app" not in str(info.value)


def test_the_dsn_and_its_file_together_are_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", DSN)
    monkeypatch.setenv("POSTGRES_DSN_FILE", str(_secret(tmp_path, "dsn", DSN)))
    with pytest.raises(ConfigurationError, match="both POSTGRES_DSN and POSTGRES_DSN_FILE"):
        PostgresConfig.load()


def test_variables_of_an_undeclared_database_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_BILLING_DSN_FILE", str(_secret(tmp_path, "dsn", DSN)))
    monkeypatch.setenv("PG_BILLING_PASSWORD_FILE", str(_secret(tmp_path, "pw", "s3cret")))
    config = PostgresConfig.load()
    assert "billing" in config.databases
    assert config.get_dsn("billing") == DSN


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("PG_PASSWORD_FIEL", "PG_PASSWORD_FILE"),
        ("PG_REFERENCE_POOL_SSLMOD", "PG_REFERENCE_POOL_SSLMODE"),
        ("PG_POOL_READONLY", "PG_POOL_READ_ONLY"),
    ],
)
def test_typos_of_the_new_variables_are_caught(
    monkeypatch: pytest.MonkeyPatch, variable: str, hint: str
) -> None:
    monkeypatch.setenv(variable, "x")
    with pytest.raises(ConfigurationError, match=f"did you mean {hint}"):
        PostgresConfig.load()


# -- the password ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://app:hunter2@db:5432/app", "postgresql://app@db:5432/app?password=hunter2"],
)
def test_a_password_file_and_a_password_in_the_dsn_are_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", dsn)
    monkeypatch.setenv("PG_PASSWORD_FILE", str(_secret(tmp_path, "pw", "s3cret")))
    with pytest.raises(ConfigurationError) as info:
        PostgresConfig.load()
    assert info.value.env_var == "POSTGRES_DSN"
    assert "carries a password and PG_PASSWORD_FILE is set" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_a_password_file_and_a_provider_are_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_REFERENCE_PASSWORD_FILE", str(_secret(tmp_path, "pw", "s3cret")))
    monkeypatch.setenv("PG_REFERENCE_PASSWORD_PROVIDER", "os:getcwd")
    with pytest.raises(ConfigurationError, match="both PG_REFERENCE_PASSWORD_FILE and"):
        PostgresConfig.load()


def test_a_provider_comes_from_the_environment_or_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_PASSWORD_PROVIDER", "os:getcwd")
    assert PostgresConfig.load().main.password_provider is os.getcwd

    async def token() -> str:
        return "t"

    config = PostgresConfig(main={"dsn": DSN, "password_provider": token})
    assert config.main.password_provider is token
    assert config.to_dict()["main"]["password_provider"].endswith("token")
    monkeypatch.setenv("PG_PASSWORD_PROVIDER", "no_such_module:token")
    with pytest.raises(ConfigurationError, match="PG_PASSWORD_PROVIDER"):
        PostgresConfig.load()


def test_a_password_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    path = _secret(tmp_path, "pw", "first\n")
    password = PasswordFile(path, "PG_PASSWORD_FILE", "main")
    assert password() == "first"
    stamp = os.stat(path)
    path.write_text("other\n")  # same size, written in place: only the mtime tells
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert password() == "first"  # unchanged stat: not read
    assert password.generation == 1
    assert password.reload() is True
    assert password() == "other"
    assert password.reload() is False
    assert password.generation == 2  # what a connect refused with the old one compares
    path.write_text("second-password\n")
    assert password() == "second-password"
    assert "second" not in repr(password)


def test_a_password_file_mid_rotation_keeps_the_last_password(tmp_path: Path) -> None:
    path = _secret(tmp_path, "pw", "first")
    password = PasswordFile(path, "PG_PASSWORD_FILE", "main")
    assert password() == "first"
    path.write_text("")
    assert password() == "first"
    path.unlink()
    assert password() == "first"
    never_read = PasswordFile(tmp_path / "missing", "PG_PASSWORD_FILE", "main")
    with pytest.raises(ConfigurationError, match="PG_PASSWORD_FILE"):
        never_read()


# -- TLS settings -------------------------------------------------------------------------


def test_tls_settings_join_the_dsn(tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", DSN + "?application_name=x")
    monkeypatch.setenv("PG_POOL_SSLMODE", "verify-full")
    monkeypatch.setenv("PG_POOL_SSLROOTCERT", str(tls_files.ca))
    params = PostgresConfig.load().get_connect_params(Database.MAIN)
    assert params.dsn == f"{DSN}?application_name=x&sslmode=verify-full&sslrootcert={tls_files.ca}"
    assert params.sources is not None
    assert params.sources.tls.verification == "full"
    assert params.sources.tls.origin == "PG_POOL_SSLMODE"


def test_a_conflict_with_the_dsn_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", DSN + "?sslmode=require")
    monkeypatch.setenv("PG_POOL_SSLMODE", "verify-full")
    with pytest.raises(ConfigurationError) as info:
        PostgresConfig.load()
    assert "PG_POOL_SSLMODE=verify-full and the sslmode in POSTGRES_DSN disagree" in str(
        info.value
    )
    monkeypatch.setenv("PG_POOL_SSLMODE", "require")  # the same value twice is fine
    assert PostgresConfig.load().main.pool_sslmode == "require"


def test_certificate_files_are_checked_at_load(
    tls_files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", DSN)
    monkeypatch.setenv("PG_POOL_SSLROOTCERT", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match=r"PG_POOL_SSLROOTCERT=.*missing\.pem"):
        PostgresConfig.load()
    monkeypatch.setenv("PG_POOL_SSLROOTCERT", str(_secret(tmp_path, "ca.pem", "not a cert")))
    with pytest.raises(ConfigurationError, match="not a PEM file of CA certificates") as info:
        PostgresConfig.load()
    assert info.value.env_var == "PG_POOL_SSLROOTCERT"
    monkeypatch.setenv("PG_POOL_SSLROOTCERT", str(tls_files.ca))
    monkeypatch.setenv("PG_POOL_SSLCERT", str(tls_files.client_cert))
    monkeypatch.setenv("PG_POOL_SSLKEY", str(tls_files.server_key))  # not this certificate's
    with pytest.raises(ConfigurationError, match="client certificate") as info:
        PostgresConfig.load()
    assert info.value.env_var == "PG_POOL_SSLCERT"
    monkeypatch.delenv("PG_POOL_SSLCERT")
    with pytest.raises(ConfigurationError, match="PG_POOL_SSLKEY is set without"):
        PostgresConfig.load()


def test_a_bad_sslrootcert_in_the_dsn_fails_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", DSN + "?sslmode=verify-full&sslrootcert=/no/such/ca.pem")
    with pytest.raises(ConfigurationError, match="set by POSTGRES_DSN") as info:
        PostgresConfig.load()
    assert info.value.env_var == "POSTGRES_DSN"


def test_merge_quotes_paths_and_keeps_the_dsn_as_written() -> None:
    merged = merge_tls(
        "postgresql://a@h1:1,h2:2/db#x", "V", {"sslrootcert": ("/ca dir/c&a.pem", "W")}, "main"
    )
    assert merged == "postgresql://a@h1:1,h2:2/db?sslrootcert=/ca%20dir/c%26a.pem#x"


@pytest.mark.parametrize(
    ("dsn", "verification"),
    [
        ("postgresql://h/db", "none"),
        ("postgresql://h/db?sslmode=require", "none"),
        ("postgresql://h/db?sslmode=require&sslrootcert=/ca.pem", "ca"),
        ("postgresql://h/db?sslmode=verify-ca", "ca"),
        ("postgresql://h/db?sslmode=verify-full", "full"),
    ],
)
def test_what_a_mode_verifies(
    dsn: str, verification: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    assert tls_mode(dsn, "POSTGRES_DSN", None).verification == verification


def test_replica_sessions_are_read_only_by_default() -> None:
    config = PostgresConfig.load(env_file=None)
    assert config.settings_for(Database.MAIN_REPLICA).pool_read_only is True
    assert config.settings_for(Database.REFERENCE).pool_read_only is False
    params = PostgresConfig(main_replica={"dsn": DSN}).get_connect_params(Database.MAIN_REPLICA)
    assert params.server_settings == {"default_transaction_read_only": "on"}


# -- what wellwon-db config shows ---------------------------------------------------------


def test_the_config_report_shows_no_file_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = "postgresql://app@secret-host.internal:5432/app"
    monkeypatch.setenv("POSTGRES_DSN_FILE", str(_secret(tmp_path, "dsn", dsn)))
    monkeypatch.setenv("PG_PASSWORD_FILE", str(_secret(tmp_path, "pw", "hunter2")))
    config = PostgresConfig.load()
    report = json.dumps(build_config_report(config, None).to_dict())
    assert "secret-host" not in report
    assert "hunter2" not in report
    main = build_config_report(config, None).databases["main"]
    shown = {setting.field: setting for setting in main}
    assert (shown["dsn"].value, shown["dsn"].source) == ("(read from POSTGRES_DSN_FILE)", "file")
    assert shown["password_file"].value == str(tmp_path / "pw")


# -- refused connections are configuration errors, not outages ---------------------------


def _verification_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    error.verify_code = code
    error.verify_message = message
    return error


SOURCES = ConnectSources(
    database="main",
    dsn_variable="POSTGRES_DSN",
    password="PG_PASSWORD_FILE (/run/secrets/pg)",
    password_variable="PG_PASSWORD_FILE",
    sslmode_variable="PG_POOL_SSLMODE",
    sslrootcert="PG_POOL_SSLROOTCERT (/etc/ca.pem)",
    sslrootcert_variable="PG_POOL_SSLROOTCERT",
    read_only_variable="PG_POOL_READ_ONLY",
    pgbouncer_variable="PG_POOL_PGBOUNCER",
    tls=tls_mode("postgresql://h/db?sslmode=verify-full", "POSTGRES_DSN", "PG_POOL_SSLMODE"),
)

REFUSALS = [
    pytest.param(
        asyncpg.InvalidPasswordError('password authentication failed for user "app"'),
        "PG_PASSWORD_FILE",
        "the password comes from PG_PASSWORD_FILE (/run/secrets/pg)",
        id="password",
    ),
    pytest.param(
        asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry for host"),
        "PG_PASSWORD_FILE",
        "refused the login",
        id="pg_hba",
    ),
    pytest.param(
        _verification_error(19, "self-signed certificate in certificate chain"),
        "PG_POOL_SSLROOTCERT",
        "not signed by a CA the client trusts: the CA comes from PG_POOL_SSLROOTCERT",
        id="unknown CA",
    ),
    pytest.param(
        _verification_error(62, "Hostname mismatch, certificate is not valid for 'db'."),
        "POSTGRES_DSN",
        "not valid for the host name in POSTGRES_DSN",
        id="host name",
    ),
    pytest.param(
        _verification_error(10, "certificate has expired"),
        "POSTGRES_DSN",
        "it has expired",
        id="expired",
    ),
    pytest.param(
        ConnectionError('PostgreSQL server at "db:5432" rejected SSL upgrade'),
        "PG_POOL_SSLMODE",
        "refused TLS",
        id="no TLS",
    ),
    pytest.param(
        asyncpg.ProtocolViolationError(
            "unsupported startup parameter: default_transaction_read_only"
        ),
        "PG_POOL_READ_ONLY",
        "track_extra_parameters",
        id="PgBouncer",
    ),
]


@pytest.mark.parametrize(("error", "variable", "says"), REFUSALS)
def test_a_refusal_is_a_configuration_error(
    error: BaseException, variable: str, says: str
) -> None:
    translated = translate_error(
        error, "main", "connecting to db:5432", may_have_run=False, sources=SOURCES
    )
    assert isinstance(translated, ConfigurationError)
    assert translated.env_var == variable
    assert says in str(translated)
    assert "the main database (connecting to db:5432)" in str(translated)
    assert "Not retried" in str(translated)
    assert not is_availability_failure(error)
    assert not is_availability_failure(translated)
    assert not is_retryable(translated, idempotent=True)
    assert not is_transaction_retryable(translated)


def test_a_refusal_does_not_move_the_breaker() -> None:
    breaker = CircuitBreaker("main", BreakerConfig(min_calls=1, consecutive_failures=1))
    refused = translate_error(
        asyncpg.InvalidPasswordError("password authentication failed"), "main", "connecting"
    )
    for _ in range(20):
        breaker.allow()
        record_outcome(breaker, refused, 0.0)
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["calls"], snapshot["failures"]) == ("closed", 0, 0)


def test_without_sources_the_message_names_every_candidate() -> None:
    translated = translate_error(
        asyncpg.InvalidPasswordError("password authentication failed"), "reference", "connecting"
    )
    assert isinstance(translated, ConfigurationError)
    for name in (
        "POSTGRES_REFERENCE_DSN",
        "PG_REFERENCE_PASSWORD_FILE",
        "PG_REFERENCE_PASSWORD_PROVIDER",
    ):
        assert name in str(translated)


def test_an_outage_is_still_an_outage() -> None:
    assert refusal_of(ConnectionRefusedError(111, "Connection refused")) is None
    assert refusal_of(asyncpg.CannotConnectNowError("the database system is starting up")) is None
    assert is_availability_failure(ConnectionRefusedError(111, "Connection refused"))


async def test_after_a_refusal_connections_fail_at_once_until_the_holdoff_ends(
    tmp_path: Path,
) -> None:
    """The holdoff without a server: a port nobody listens on stands in for the refusal."""
    path = _secret(tmp_path, "pw", "first")
    params = ConnectParams(
        "postgresql://app@127.0.0.1:1/db", password=PasswordFile(path, "PG_PASSWORD_FILE", "main")
    )
    params._refuse(refusal_of(asyncpg.InvalidPasswordError("password authentication failed")))  # type: ignore[arg-type]
    with pytest.raises(RecentlyRefused) as info:
        await params.connect(connection_class=asyncpg.Connection, timeout=1)
    assert 0 < info.value.retry_in <= 0.5
    translated = translate_error(info.value, "main", "connecting", sources=SOURCES)
    assert isinstance(translated, ConfigurationError)
    assert "refused moments ago" in str(translated)
    path.write_text("second-password")  # a changed file ends the holdoff at once
    with pytest.raises(OSError, match=r"Connect call failed|Connection refused"):
        await params.connect(connection_class=asyncpg.Connection, timeout=1)
