"""Settings: env naming per database, defaults, validation, secrets (pure logic, no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wellwon_db import (
    ConfigurationError,
    Database,
    PoolConfig,
    PostgresConfig,
    get_postgres_config,
)
from wellwon_db.config._dsn import redact_dsn
from wellwon_db.config._registry import declared_databases
from wellwon_db.config._settings import (
    MainDatabaseSettings,
    ReferenceDatabaseSettings,
    env_var_name,
    settings_class,
)

MAIN_DSN = "postgresql://app:hunter2@db-main:5432/app"
REF_DSN = "postgresql://ref:swordfish@db-ref:5433/ref"

# (field, main variable, reference variable, a valid non-default value)
PER_DATABASE = [
    ("dsn", "POSTGRES_DSN", "POSTGRES_REFERENCE_DSN", "postgresql://u@h:1/other"),
    # Files must exist, and a provider is a function: see tests/test_credentials_settings.py.
    ("dsn_file", "POSTGRES_DSN_FILE", "POSTGRES_REFERENCE_DSN_FILE", ""),
    ("password_file", "PG_PASSWORD_FILE", "PG_REFERENCE_PASSWORD_FILE", ""),
    ("password_provider", "PG_PASSWORD_PROVIDER", "PG_REFERENCE_PASSWORD_PROVIDER", ""),
    ("pool_min_size", "PG_POOL_MIN_SIZE", "PG_REFERENCE_POOL_MIN_SIZE", "3"),
    ("pool_max_size", "PG_POOL_MAX_SIZE", "PG_REFERENCE_POOL_MAX_SIZE", "17"),
    ("pool_timeout_sec", "PG_POOL_TIMEOUT_SEC", "PG_REFERENCE_POOL_TIMEOUT_SEC", "2.5"),
    (
        "pool_command_timeout_sec",
        "PG_COMMAND_TIMEOUT_SEC",
        "PG_REFERENCE_POOL_COMMAND_TIMEOUT_SEC",
        "7",
    ),
    (
        "pool_connect_timeout_sec",
        "PG_POOL_CONNECT_TIMEOUT_SEC",
        "PG_REFERENCE_POOL_CONNECT_TIMEOUT_SEC",
        "4",
    ),
    (
        "pool_max_inactive_lifetime_sec",
        "PG_POOL_MAX_INACTIVE_LIFETIME_SEC",
        "PG_REFERENCE_POOL_MAX_INACTIVE_LIFETIME_SEC",
        "12",
    ),
    (
        "pool_max_lifetime_sec",
        "PG_POOL_MAX_LIFETIME_SEC",
        "PG_REFERENCE_POOL_MAX_LIFETIME_SEC",
        "99",
    ),
    ("pool_max_queries", "PG_POOL_MAX_QUERIES", "PG_REFERENCE_POOL_MAX_QUERIES", "1000"),
    (
        "pool_validation_idle_sec",
        "PG_POOL_VALIDATION_IDLE_SEC",
        "PG_REFERENCE_POOL_VALIDATION_IDLE_SEC",
        "0",
    ),
    (
        "pool_statement_cache_size",
        "PG_POOL_STATEMENT_CACHE_SIZE",
        "PG_REFERENCE_POOL_STATEMENT_CACHE_SIZE",
        "0",
    ),
    (
        "pool_application_name",
        "PG_POOL_APPLICATION_NAME",
        "PG_REFERENCE_POOL_APPLICATION_NAME",
        "billing",
    ),
    ("pool_sslmode", "PG_POOL_SSLMODE", "PG_REFERENCE_POOL_SSLMODE", "verify-full"),
    ("pool_sslrootcert", "PG_POOL_SSLROOTCERT", "PG_REFERENCE_POOL_SSLROOTCERT", ""),
    ("pool_sslcert", "PG_POOL_SSLCERT", "PG_REFERENCE_POOL_SSLCERT", ""),
    ("pool_sslkey", "PG_POOL_SSLKEY", "PG_REFERENCE_POOL_SSLKEY", ""),
    ("pool_read_only", "PG_POOL_READ_ONLY", "PG_REFERENCE_POOL_READ_ONLY", "true"),
    ("pool_reset", "PG_POOL_RESET", "PG_REFERENCE_POOL_RESET", "always"),
    ("startup_wait_sec", "PG_STARTUP_WAIT_SEC", "PG_REFERENCE_STARTUP_WAIT_SEC", "15"),
    ("pool_budget", "PG_POOL_BUDGET", "PG_REFERENCE_POOL_BUDGET", "40"),
    ("pool_workers", "PG_POOL_WORKERS", "PG_REFERENCE_POOL_WORKERS", "4"),
    (
        "pool_capacity_check",
        "PG_POOL_CAPACITY_CHECK",
        "PG_REFERENCE_POOL_CAPACITY_CHECK",
        "refuse",
    ),
    (
        "pool_drain_timeout_sec",
        "PG_POOL_DRAIN_TIMEOUT_SEC",
        "PG_REFERENCE_POOL_DRAIN_TIMEOUT_SEC",
        "3",
    ),
    ("pool_pgbouncer", "PG_POOL_PGBOUNCER", "PG_REFERENCE_POOL_PGBOUNCER", "true"),
    ("pool_lease_metrics", "PG_POOL_LEASE_METRICS", "PG_REFERENCE_POOL_LEASE_METRICS", "true"),
    (
        "pool_exhaustion_warn_sec",
        "PG_POOL_EXHAUSTION_WARN_SEC",
        "PG_REFERENCE_POOL_EXHAUSTION_WARN_SEC",
        "0",
    ),
    (
        "pool_exhaustion_utilisation",
        "PG_POOL_EXHAUSTION_UTILISATION",
        "PG_REFERENCE_POOL_EXHAUSTION_UTILISATION",
        "75",
    ),
    ("log_slow_query_sec", "PG_LOG_SLOW_QUERY_SEC", "PG_REFERENCE_LOG_SLOW_QUERY_SEC", "0.5"),
    ("health_required", "PG_HEALTH_REQUIRED", "PG_REFERENCE_HEALTH_REQUIRED", "false"),
    ("health_timeout_sec", "PG_HEALTH_TIMEOUT_SEC", "PG_REFERENCE_HEALTH_TIMEOUT_SEC", "5"),
    ("startup_required", "PG_STARTUP_REQUIRED", "PG_REFERENCE_STARTUP_REQUIRED", "false"),
    (
        "startup_dsn_required",
        "PG_STARTUP_DSN_REQUIRED",
        "PG_REFERENCE_STARTUP_DSN_REQUIRED",
        "",  # a boolean whose default differs per database: see its own test
    ),
    ("breaker_enabled", "PG_BREAKER_ENABLED", "PG_REFERENCE_BREAKER_ENABLED", "false"),
    (
        "breaker_failure_rate",
        "PG_BREAKER_FAILURE_RATE",
        "PG_REFERENCE_BREAKER_FAILURE_RATE",
        "25",
    ),
    ("breaker_min_calls", "PG_BREAKER_MIN_CALLS", "PG_REFERENCE_BREAKER_MIN_CALLS", "3"),
    ("breaker_window_sec", "PG_BREAKER_WINDOW_SEC", "PG_REFERENCE_BREAKER_WINDOW_SEC", "30"),
    (
        "breaker_slow_call_sec",
        "PG_BREAKER_SLOW_CALL_SEC",
        "PG_REFERENCE_BREAKER_SLOW_CALL_SEC",
        "2",
    ),
    (
        "breaker_slow_call_rate",
        "PG_BREAKER_SLOW_CALL_RATE",
        "PG_REFERENCE_BREAKER_SLOW_CALL_RATE",
        "80",
    ),
    ("breaker_open_sec", "PG_BREAKER_OPEN_SEC", "PG_REFERENCE_BREAKER_OPEN_SEC", "2"),
    (
        "breaker_open_max_sec",
        "PG_BREAKER_OPEN_MAX_SEC",
        "PG_REFERENCE_BREAKER_OPEN_MAX_SEC",
        "120",
    ),
    (
        "breaker_half_open_calls",
        "PG_BREAKER_HALF_OPEN_CALLS",
        "PG_REFERENCE_BREAKER_HALF_OPEN_CALLS",
        "1",
    ),
    (
        "breaker_consecutive_failures",
        "PG_BREAKER_CONSECUTIVE_FAILURES",
        "PG_REFERENCE_BREAKER_CONSECUTIVE_FAILURES",
        "0",
    ),
    (
        "breaker_probe_interval_sec",
        "PG_BREAKER_PROBE_INTERVAL_SEC",
        "PG_REFERENCE_BREAKER_PROBE_INTERVAL_SEC",
        "0.25",
    ),
    ("pool_json_codec", "PG_POOL_JSON_CODEC", "PG_REFERENCE_POOL_JSON_CODEC", "python"),
    ("cache_enabled", "PG_CACHE_ENABLED", "PG_REFERENCE_CACHE_ENABLED", ""),  # per-db default
    ("cache_max_entries", "PG_CACHE_MAX_ENTRIES", "PG_REFERENCE_CACHE_MAX_ENTRIES", "500"),
    ("cache_ttl_sec", "PG_CACHE_TTL_SEC", "PG_REFERENCE_CACHE_TTL_SEC", "30"),
    (
        "cache_stale_if_error_sec",
        "PG_CACHE_STALE_IF_ERROR_SEC",
        "PG_REFERENCE_CACHE_STALE_IF_ERROR_SEC",
        "5",
    ),
    ("cache_channel", "PG_CACHE_CHANNEL", "PG_REFERENCE_CACHE_CHANNEL", "my_channel"),
    (
        "cache_listen_dsn",
        "PG_CACHE_LISTEN_DSN",
        "PG_REFERENCE_CACHE_LISTEN_DSN",
        "postgresql://u@direct:5432/db",
    ),
    ("retry_attempts", "PG_RETRY_ATTEMPTS", "PG_REFERENCE_RETRY_ATTEMPTS", "5"),
    ("retry_backoff_sec", "PG_RETRY_BACKOFF_SEC", "PG_REFERENCE_RETRY_BACKOFF_SEC", "0.2"),
    (
        "retry_backoff_max_sec",
        "PG_RETRY_BACKOFF_MAX_SEC",
        "PG_REFERENCE_RETRY_BACKOFF_MAX_SEC",
        "5",
    ),
    (
        "retry_deadline_sec",
        "PG_RETRY_DEADLINE_SEC",
        "PG_REFERENCE_RETRY_DEADLINE_SEC",
        "3",
    ),
]


def _value(config: PostgresConfig, database: Database | str, field: str) -> object:
    value = getattr(config.settings_for(database), field)
    return value.get_secret_value() if field == "dsn" and value is not None else value


def test_contract_env_names() -> None:
    assert [env_var_name(MainDatabaseSettings, f) for f, *_ in PER_DATABASE] == [
        main for _, main, *_ in PER_DATABASE
    ]
    assert [env_var_name(ReferenceDatabaseSettings, f) for f, *_ in PER_DATABASE] == [
        ref for _, _, ref, _ in PER_DATABASE
    ]


def test_every_field_is_covered_and_documented() -> None:
    fields = {field for field, *_ in PER_DATABASE}
    replica_only = {"max_lag_sec", "lag_check_sec"}
    for spec in declared_databases():
        settings = settings_class(spec)
        extra = replica_only if spec.replica_of is not None else set()
        assert set(settings.model_fields) == fields | extra
        for name, info in settings.model_fields.items():
            assert info.description, f"{settings.__name__}.{name} has no description"


def test_defaults() -> None:
    config = PostgresConfig.load()
    for database in Database:
        pool = config.get_pool_config(database)
        assert (pool.min_size, pool.max_size) == (10, 50)
        assert pool.application_name == f"wellwon_db:{database.value}"
        assert pool.reset == "smart"


@pytest.mark.parametrize(
    ("field", "main_var", "ref_var", "value"), [row for row in PER_DATABASE if row[3]]
)
def test_each_variable_changes_only_its_own_database(
    monkeypatch: pytest.MonkeyPatch, field: str, main_var: str, ref_var: str, value: str
) -> None:
    """Regression (bug 3): per-database overrides were ignored or applied to the wrong one."""
    baseline = PostgresConfig.load()
    for var, changed, untouched in (
        (main_var, Database.MAIN, Database.REFERENCE),
        (ref_var, Database.REFERENCE, Database.MAIN),
    ):
        monkeypatch.setenv(var, value)
        config = PostgresConfig.load()
        got = _value(config, changed, field)
        assert got != _value(baseline, changed, field)
        if isinstance(got, bool):
            assert got is (value == "true")
        elif field == "pool_workers":
            assert got == int(value)
        else:
            assert got == (value if isinstance(got, str) else type(got)(value))
        assert _value(config, untouched, field) == _value(baseline, untouched, field)
        monkeypatch.delenv(var)


def test_reference_pool_config_is_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (bug 2): the reference pool was built from the main pool's settings."""
    monkeypatch.setenv("PG_POOL_MIN_SIZE", "5")
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "40")
    monkeypatch.setenv("PG_COMMAND_TIMEOUT_SEC", "30")
    monkeypatch.setenv("PG_REFERENCE_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "4")
    monkeypatch.setenv("PG_REFERENCE_POOL_TIMEOUT_SEC", "3")
    reference = get_postgres_config().get_pool_config(Database.REFERENCE)
    main = get_postgres_config().get_pool_config(Database.MAIN)
    assert (reference.min_size, reference.max_size, reference.timeout) == (1, 4, 3.0)
    assert reference.command_timeout == 60.0
    assert (main.min_size, main.max_size, main.command_timeout) == (5, 40, 30.0)
    assert isinstance(reference, PoolConfig)
    assert reference.database is Database.REFERENCE


def test_dsn_per_database_never_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", MAIN_DSN)
    config = PostgresConfig.load()
    assert config.get_dsn(Database.MAIN) == MAIN_DSN
    with pytest.raises(ConfigurationError, match="POSTGRES_REFERENCE_DSN") as caught:
        config.get_dsn(Database.REFERENCE)
    assert caught.value.env_var == "POSTGRES_REFERENCE_DSN"
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", REF_DSN)
    assert PostgresConfig.load().get_dsn("reference") == REF_DSN


def test_main_command_timeout_pattern_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_POOL_COMMAND_TIMEOUT_SEC", "9")
    assert PostgresConfig.load().get_pool_config(Database.MAIN).command_timeout == 9.0
    monkeypatch.setenv("PG_COMMAND_TIMEOUT_SEC", "9")  # both names, one value: fine
    assert PostgresConfig.load().get_pool_config(Database.MAIN).command_timeout == 9.0
    monkeypatch.setenv("PG_COMMAND_TIMEOUT_SEC", "8")  # two values: which one was meant?
    with pytest.raises(ConfigurationError) as caught:
        PostgresConfig.load()
    assert "PG_COMMAND_TIMEOUT_SEC=8" in str(caught.value)
    assert "PG_POOL_COMMAND_TIMEOUT_SEC=9" in str(caught.value)


def test_dsn_required_defaults_per_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Main's DSN is required by default, every other database's is not; each one settable."""
    config = PostgresConfig.load()
    assert config.settings_for(Database.MAIN).startup_dsn_required is True
    assert config.settings_for(Database.REFERENCE).startup_dsn_required is False
    assert config.settings_for("audit").startup_dsn_required is False
    monkeypatch.setenv("PG_STARTUP_DSN_REQUIRED", "false")
    monkeypatch.setenv("PG_REFERENCE_STARTUP_DSN_REQUIRED", "true")
    config = PostgresConfig.load()
    assert config.settings_for(Database.MAIN).startup_dsn_required is False
    assert config.settings_for(Database.REFERENCE).startup_dsn_required is True


def test_max_alone_pulls_default_min_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "4")
    pool = PostgresConfig.load().get_pool_config(Database.REFERENCE)
    assert (pool.min_size, pool.max_size) == (4, 4)


def test_env_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text(
        f"POSTGRES_REFERENCE_DSN={REF_DSN}\nPG_REFERENCE_POOL_MAX_SIZE=6\nPG_POOL_MAX_SIZE=9\n"
    )
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "11")
    config = PostgresConfig.load(env_file=env_file)
    assert config.get_dsn(Database.REFERENCE) == REF_DSN
    assert config.get_pool_config(Database.REFERENCE).max_size == 6
    assert config.get_pool_config(Database.MAIN).max_size == 11


@pytest.mark.parametrize("name", ["missing.env", "nowhere/app.env"])
def test_explicit_env_file_must_exist(tmp_path: Path, name: str) -> None:
    missing = tmp_path / name
    with pytest.raises(ConfigurationError, match=f"env_file {missing}: no such file"):
        PostgresConfig.load(env_file=missing)
    with pytest.raises(RuntimeError, match="no such file"):
        PostgresConfig.load(env_file=str(missing))


def test_explicit_env_file_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such file"):
        PostgresConfig.load(env_file=tmp_path)


@pytest.mark.parametrize("env_file", [".env", "./.env", Path(".env")])
def test_default_dot_env_may_be_absent(env_file: str | Path, tmp_path: Path) -> None:
    assert not (tmp_path / ".env").exists()  # the working directory (clean_environment)
    assert PostgresConfig.load().get_pool_config(Database.MAIN).max_size == 50
    assert PostgresConfig.load(env_file=env_file).get_pool_config(Database.MAIN).max_size == 50


def test_dot_env_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PG_REFERENCE_POOL_MIN_SIZE=2\n")
    assert get_postgres_config().get_pool_config(Database.REFERENCE).min_size == 2
    assert get_postgres_config().get_pool_config(Database.MAIN).min_size == 10


def test_get_postgres_config_is_cached_and_reloadable(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_postgres_config()
    assert get_postgres_config() is first
    monkeypatch.setenv("PG_POOL_MAX_SIZE", "12")
    assert get_postgres_config().get_pool_config("main").max_size == 50
    get_postgres_config.cache_clear()
    assert get_postgres_config().get_pool_config("main").max_size == 12


BAD_SETTINGS = [
    ({"PG_POOL_MIN_SIZE": "20", "PG_POOL_MAX_SIZE": "10"}, "PG_POOL_MIN_SIZE"),
    (
        {"PG_REFERENCE_POOL_MIN_SIZE": "9", "PG_REFERENCE_POOL_MAX_SIZE": "3"},
        "PG_REFERENCE_POOL_MIN_SIZE",
    ),
    ({"PG_POOL_MAX_SIZE": "0"}, "PG_POOL_MAX_SIZE"),
    ({"PG_REFERENCE_POOL_MIN_SIZE": "-1"}, "PG_REFERENCE_POOL_MIN_SIZE"),
    ({"PG_POOL_MAX_SIZE": "lots"}, "PG_POOL_MAX_SIZE"),
    ({"PG_POOL_TIMEOUT_SEC": "0"}, "PG_POOL_TIMEOUT_SEC"),
    ({"PG_REFERENCE_POOL_TIMEOUT_SEC": "-3"}, "PG_REFERENCE_POOL_TIMEOUT_SEC"),
    ({"PG_COMMAND_TIMEOUT_SEC": "0"}, "PG_COMMAND_TIMEOUT_SEC"),
    ({"PG_REFERENCE_POOL_COMMAND_TIMEOUT_SEC": "1e9"}, "PG_REFERENCE_POOL_COMMAND_TIMEOUT_SEC"),
    ({"PG_POOL_CONNECT_TIMEOUT_SEC": "abc"}, "PG_POOL_CONNECT_TIMEOUT_SEC"),
    ({"PG_REFERENCE_POOL_RESET": "sometimes"}, "PG_REFERENCE_POOL_RESET"),
    ({"PG_POOL_APPLICATION_NAME": "x" * 64}, "PG_POOL_APPLICATION_NAME"),
    ({"POSTGRES_DSN": "mysql://app:hunter2@h/db"}, "POSTGRES_DSN"),
    ({"POSTGRES_REFERENCE_DSN": "db-ref:5432"}, "POSTGRES_REFERENCE_DSN"),
    ({"POSTGRES_REFERENCE_DSN": "postgresql://u:hunter2@h:70000/db"}, "POSTGRES_REFERENCE_DSN"),
    ({"PG_REFRENCE_POOL_MAX_SIZE": "5"}, "PG_REFRENCE_POOL_MAX_SIZE"),
    ({"POSTGRES_REFRENCE_DSN": REF_DSN}, "POSTGRES_REFRENCE_DSN"),
    ({"PG_POL_MAX_SIZE": "5"}, "PG_POOL_MAX_SIZE"),
    ({"PG_REFERENCE_POL_MAX_SIZE": "5"}, "PG_REFERENCE_POOL_MAX_SIZE"),
    ({"POSTGRES_MAIN_DSN": MAIN_DSN}, "POSTGRES_MAIN_DSN"),
    ({"PG_MAIN_POOL_MAX_SIZE": "5"}, "PG_POOL_MAX_SIZE"),
    ({"POSTGRES_AUDIT_DSN": MAIN_DSN, "PG_AUDIT_POOL_MAX_SZE": "5"}, "PG_AUDIT_POOL_MAX_SIZE"),
    ({"PG_AUDIT_BREAKER_ENABLE": "1"}, "PG_AUDIT_BREAKER_ENABLED"),
    ({"POSTGRES_DSN": "postgresql://app:p@ss@db-main:5432/app"}, "POSTGRES_DSN"),
    ({"PG_POOL_MAX_SZE": "5"}, "PG_POOL_MAX_SIZE"),
    ({"PG_REFERENCE_POOL_MINSIZE": "5"}, "PG_REFERENCE_POOL_MIN_SIZE"),
    ({"PG_BREAKER_FAILURE_RATE": "0"}, "PG_BREAKER_FAILURE_RATE"),
    ({"PG_REFERENCE_BREAKER_FAILURE_RATE": "150"}, "PG_REFERENCE_BREAKER_FAILURE_RATE"),
    ({"PG_BREAKER_MIN_CALLS": "0"}, "PG_BREAKER_MIN_CALLS"),
    ({"PG_REFERENCE_BREAKER_WINDOW_SEC": "0.5"}, "PG_REFERENCE_BREAKER_WINDOW_SEC"),
    (
        {"PG_BREAKER_OPEN_SEC": "30", "PG_BREAKER_OPEN_MAX_SEC": "10"},
        "PG_BREAKER_OPEN_SEC",
    ),
    ({"PG_REFERENCE_RETRY_ATTEMPTS": "0"}, "PG_REFERENCE_RETRY_ATTEMPTS"),
    (
        {"PG_RETRY_BACKOFF_SEC": "3", "PG_RETRY_BACKOFF_MAX_SEC": "1"},
        "PG_RETRY_BACKOFF_SEC",
    ),
    ({"PG_REFERENCE_STARTUP_REQUIRED": "maybe"}, "PG_REFERENCE_STARTUP_REQUIRED"),
    ({"PG_STARTUP_WAIT_SEC": "-1"}, "PG_STARTUP_WAIT_SEC"),
    ({"PG_REFERENCE_BREAKER_OPENSEC": "1"}, "PG_REFERENCE_BREAKER_OPEN_SEC"),
    ({"PG_RETRY_ATTEMPT": "1"}, "PG_RETRY_ATTEMPTS"),
]


@pytest.mark.parametrize(("env", "named"), BAD_SETTINGS)
def test_bad_settings_fail_at_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError) as caught:
        PostgresConfig.load()
    message = str(caught.value)
    assert named in message
    assert isinstance(caught.value, RuntimeError)
    for secret in ("hunter2", "swordfish"):
        assert secret not in message
        assert secret not in repr(caught.value)


def test_bad_setting_in_env_file_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PG_REFERENCE_POOL_MAX_SIZE=-2\n")
    with pytest.raises(ConfigurationError, match="PG_REFERENCE_POOL_MAX_SIZE"):
        get_postgres_config()


def test_any_database_name_gets_its_own_settings() -> None:
    config = PostgresConfig.load()
    billing = config.get_pool_config("billing")
    assert (billing.database, billing.application_name) == ("billing", "wellwon_db:billing")
    with pytest.raises(ConfigurationError, match="POSTGRES_BILLING_DSN"):
        config.get_dsn("billing")
    for bad in ("", "Bad-Name", "9lives", "pool", "x__y", "audit_pool"):
        with pytest.raises(ConfigurationError, match="not a valid database name"):
            config.get_dsn(bad)


def test_variables_of_an_undeclared_database_are_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``POSTGRES_<X>_DSN`` set for another tool must not take the service down."""
    monkeypatch.setenv("POSTGRES_AUDIT_DSN", "mysql://for-another-tool/x")  # not even ours
    monkeypatch.setenv("POSTGRES_REPLICA_DSN", MAIN_DSN)
    monkeypatch.setenv("PG_REPLICA_POOL_MAX_SIZE", "7")
    config = PostgresConfig.load()  # loads: undeclared databases are validated when used
    assert config.get_pool_config(Database.MAIN).max_size == 50
    assert "audit" in config.databases
    assert config.get_pool_config("replica").max_size == 7
    assert config.get_dsn("replica") == MAIN_DSN
    with pytest.raises(ConfigurationError, match="POSTGRES_AUDIT_DSN must be a postgresql://"):
        config.get_dsn("audit")


def test_unrelated_postgres_variables_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Docker images and libpq tools use these; they are not ours to reject.
    for name in ("POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "PG_COLOR", "PGHOST"):
        monkeypatch.setenv(name, "x")
    assert PostgresConfig.load().get_pool_config(Database.MAIN).max_size == 50


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", MAIN_DSN)
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", REF_DSN)
    config = PostgresConfig.load()
    for text in (repr(config), str(config), repr(config.main), json.dumps(config.to_dict())):
        assert "hunter2" not in text
        assert "swordfish" not in text
    assert redact_dsn(MAIN_DSN) == "postgresql://app:***@db-main:5432/app"
    assert redact_dsn("postgresql://h/db?password=hunter2&sslmode=require") == (
        "postgresql://h/db?password=***&sslmode=require"
    )
    assert redact_dsn("postgresql://app@h/db") == "postgresql://app@h/db"


def test_budget_shares_connections_between_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    monkeypatch.setenv("PG_POOL_BUDGET", "40")
    monkeypatch.setenv("PG_REFERENCE_POOL_BUDGET", "400")
    monkeypatch.setenv("PG_REFERENCE_POOL_MAX_SIZE", "20")
    config = PostgresConfig.load()
    main = config.get_pool_config(Database.MAIN)
    assert (main.workers, main.max_size, main.min_size) == (4, 10, 10)
    assert main.configured_max_size == 50
    reference = config.get_pool_config(Database.REFERENCE)
    # The budget would allow 100 each; the explicit max_size stays the bound.
    assert (reference.workers, reference.max_size) == (4, 20)
    monkeypatch.setenv("PG_POOL_WORKERS", "8")  # per-database workers beat WEB_CONCURRENCY
    assert PostgresConfig.load().get_pool_config(Database.MAIN).max_size == 5


def test_budget_smaller_than_workers_fails_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "8")
    monkeypatch.setenv("PG_REFERENCE_POOL_BUDGET", "4")
    with pytest.raises(ConfigurationError, match="PG_REFERENCE_POOL_BUDGET=4 gives each of 8"):
        PostgresConfig.load()


def test_bad_web_concurrency_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    with pytest.raises(ConfigurationError, match="WEB_CONCURRENCY") as caught:
        PostgresConfig.load()
    assert caught.value.env_var == "WEB_CONCURRENCY"


@pytest.mark.parametrize(
    ("field", "main_var", "ref_var", "value"), [row for row in PER_DATABASE if row[3]]
)
def test_each_variable_of_an_undeclared_database_is_its_own(
    monkeypatch: pytest.MonkeyPatch, field: str, main_var: str, ref_var: str, value: str
) -> None:
    """Regression (bug 3) for a third database: ``PG_AUDIT_*`` changes audit only."""
    audit_var = ref_var.replace("REFERENCE", "AUDIT")
    baseline = PostgresConfig.load()
    monkeypatch.setenv(audit_var, value)
    config = PostgresConfig.load()
    assert _value(config, "audit", field) != _value(baseline, "audit", field)
    for untouched in (Database.MAIN, Database.REFERENCE):
        assert _value(config, untouched, field) == _value(baseline, untouched, field)


def test_cache_is_on_for_reference_only_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    config = PostgresConfig.load()
    assert config.settings_for(Database.REFERENCE).cache_enabled is True
    for database in (Database.MAIN, Database.MAIN_REPLICA, "audit"):
        assert config.settings_for(database).cache_enabled is False
    monkeypatch.setenv("PG_CACHE_ENABLED", "true")
    monkeypatch.setenv("PG_REFERENCE_CACHE_ENABLED", "false")
    config = PostgresConfig.load()
    assert config.settings_for(Database.MAIN).cache_enabled is True
    assert config.settings_for(Database.REFERENCE).cache_enabled is False
