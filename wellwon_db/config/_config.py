"""The settings of every database together: loading, validation, derived configs.

:class:`PostgresConfig` reads each database's settings class (see
``_settings.py``) from the environment and ``.env``, rejects unknown
variables in our namespace (typos, unknown databases), and turns pydantic's
errors into ``ConfigurationError`` naming the variables to fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, ValidationError

from wellwon_db.config._database import Database
from wellwon_db.config._policies import BreakerConfig, RetryConfig
from wellwon_db.config._settings import (
    DEFAULT_ENV_FILE,
    SETTINGS_CLASSES,
    DatabaseSettings,
    MainDatabaseSettings,
    ReferenceDatabaseSettings,
    ResetPolicy,
    env_var_name,
    env_var_names,
)
from wellwon_db.errors import ConfigurationError

__all__ = [
    "HealthConfig",
    "PoolConfig",
    "PostgresConfig",
    "TelemetryConfig",
    "get_postgres_config",
]


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The effective pool settings of one database (of this worker). Durations in seconds.

    ``max_inactive_lifetime`` and ``max_lifetime`` of 0 mean no limit. With a
    connection ``budget``, ``min_size``/``max_size`` are this worker's share
    (``budget // workers``), never above the explicit settings, which stay
    in ``configured_min_size``/``configured_max_size``.
    """

    database: Database
    min_size: int
    max_size: int
    timeout: float
    command_timeout: float
    connect_timeout: float
    max_inactive_lifetime: float
    max_lifetime: float
    validation_idle: float
    max_queries: int
    statement_cache_size: int
    application_name: str
    reset: ResetPolicy
    startup_wait: float = 0.0
    startup_required: bool = True
    exhaustion_warn: float = 5.0
    exhaustion_utilisation: float = 90.0
    workers: int = 1
    budget: int = 0
    capacity_check: Literal["warn", "refuse", "off"] = "warn"
    drain_timeout: float = 10.0
    pgbouncer: bool = False
    lease_metrics: bool = False
    configured_min_size: int | None = None
    configured_max_size: int | None = None
    #: Longest wait (s) between background connect attempts while the server is down.
    reconnect_backoff_max: float = 2.0
    #: How messages name the setting behind a field (``pool_max_size`` -> its env variable).
    setting_names: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> PoolConfig:
        """Build from one database's settings (and ``WEB_CONCURRENCY`` for the workers)."""
        workers = settings.pool_workers or _web_concurrency()
        max_size, min_size = settings.pool_max_size, settings.pool_min_size
        if settings.pool_budget:
            share = settings.pool_budget // workers
            if share < 1:
                budget_var = env_var_name(type(settings), "pool_budget")
                raise ConfigurationError(
                    f"{budget_var}={settings.pool_budget} gives each of {workers} workers no "
                    f"connection to the {settings.database.value} database; raise "
                    f"{budget_var} to at least {workers} or run fewer workers",
                    env_var=budget_var,
                )
            max_size = min(max_size, share)
            min_size = min(min_size, max_size)
        return cls(
            database=settings.database,
            min_size=min_size,
            max_size=max_size,
            timeout=settings.pool_timeout_sec,
            command_timeout=settings.pool_command_timeout_sec,
            connect_timeout=settings.pool_connect_timeout_sec,
            max_inactive_lifetime=settings.pool_max_inactive_lifetime_sec,
            max_lifetime=settings.pool_max_lifetime_sec,
            validation_idle=settings.pool_validation_idle_sec,
            max_queries=settings.pool_max_queries,
            statement_cache_size=settings.pool_statement_cache_size,
            application_name=settings.application_name,
            reset=settings.pool_reset,
            startup_wait=settings.startup_wait_sec,
            startup_required=settings.startup_required,
            exhaustion_warn=settings.pool_exhaustion_warn_sec,
            exhaustion_utilisation=settings.pool_exhaustion_utilisation,
            workers=workers,
            budget=settings.pool_budget,
            capacity_check=settings.pool_capacity_check,
            drain_timeout=settings.pool_drain_timeout_sec,
            pgbouncer=settings.pool_pgbouncer,
            lease_metrics=settings.pool_lease_metrics,
            configured_min_size=settings.pool_min_size,
            configured_max_size=settings.pool_max_size,
            setting_names={
                name: env_var_name(type(settings), name)
                for name in ("pool_max_size", "pool_timeout_sec", "pool_budget")
            },
        )


def _web_concurrency() -> int:
    """Workers per ``WEB_CONCURRENCY`` (uvicorn/gunicorn's convention), else 1."""
    raw = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return 1
    try:
        workers = int(raw)
    except ValueError:
        workers = 0
    if workers < 1:
        raise ConfigurationError(
            f"WEB_CONCURRENCY={raw!r} is not a positive number of workers; fix it or set "
            "PG_POOL_WORKERS / PG_REFERENCE_POOL_WORKERS",
            env_var="WEB_CONCURRENCY",
        )
    return workers


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Readiness of one database: whether it is required, and the check's timeout (s)."""

    required: bool = True
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Logging thresholds of one database: statements slower than ``slow_query`` s (0: off)."""

    slow_query: float = 1.0


class PostgresConfig(BaseModel):
    """The settings of every database, validated together.

    Build with :meth:`load` (environment and ``.env``) or with
    :func:`get_postgres_config` (the same, cached).
    """

    model_config = ConfigDict(frozen=True)

    main: MainDatabaseSettings
    reference: ReferenceDatabaseSettings

    @classmethod
    def load(cls, *, env_file: str | Path | None = DEFAULT_ENV_FILE) -> PostgresConfig:
        """Read and validate every database's settings.

        A variable in the environment wins over the same one in ``env_file``
        (which may be absent; ``None`` reads no file). Raises
        ``ConfigurationError`` naming each variable to fix.
        """
        _check_unknown_variables({**_read_env_file(env_file), **os.environ})
        sections = {
            database.value: _load_section(settings_class, env_file)
            for database, settings_class in SETTINGS_CLASSES.items()
        }
        config = cls.model_validate(sections)
        for database in SETTINGS_CLASSES:
            config.get_pool_config(database)  # budget and WEB_CONCURRENCY, checked now
        return config

    def settings_for(self, database: Database | str) -> DatabaseSettings:
        """The settings of ``database``; ``ConfigurationError`` if unknown."""
        section: DatabaseSettings = getattr(self, Database.parse(database).value)
        return section

    def get_dsn(self, database: Database | str) -> str:
        """The DSN of ``database``.

        Raises ``ConfigurationError`` naming the variable to set when it is
        unset; never falls back to another database's DSN.
        """
        settings = self.settings_for(database)
        if settings.dsn is None:
            var = env_var_name(type(settings), "dsn")
            raise ConfigurationError(
                f"no DSN for the {settings.database.value} database: set {var} "
                f"(postgresql://user:password@host:port/dbname)",
                env_var=var,
            )
        return settings.dsn.get_secret_value()

    def get_pool_config(self, database: Database | str) -> PoolConfig:
        """The pool settings of ``database`` (its own, never another database's)."""
        return PoolConfig.from_settings(self.settings_for(database))

    def get_breaker_config(self, database: Database | str) -> BreakerConfig:
        """The circuit-breaker thresholds of ``database``."""
        s = self.settings_for(database)
        return BreakerConfig(
            enabled=s.breaker_enabled,
            failure_rate=s.breaker_failure_rate,
            min_calls=s.breaker_min_calls,
            window_sec=s.breaker_window_sec,
            slow_call_sec=s.breaker_slow_call_sec,
            slow_call_rate=s.breaker_slow_call_rate,
            open_sec=s.breaker_open_sec,
            open_max_sec=s.breaker_open_max_sec,
            half_open_calls=s.breaker_half_open_calls,
        )

    def get_health_config(self, database: Database | str) -> HealthConfig:
        """Readiness settings of ``database``."""
        s = self.settings_for(database)
        return HealthConfig(required=s.health_required, timeout=s.health_timeout_sec)

    def get_telemetry_config(self, database: Database | str) -> TelemetryConfig:
        """Logging thresholds of ``database``."""
        return TelemetryConfig(slow_query=self.settings_for(database).log_slow_query_sec)

    def get_retry_config(self, database: Database | str) -> RetryConfig:
        """The retry policy settings of ``database``."""
        s = self.settings_for(database)
        return RetryConfig(
            attempts=s.retry_attempts,
            backoff=s.retry_backoff_sec,
            backoff_max=s.retry_backoff_max_sec,
            deadline=s.retry_deadline_sec,
        )


@functools.cache
def get_postgres_config() -> PostgresConfig:
    """The settings read from the environment and ``./.env``, cached.

    Call ``get_postgres_config.cache_clear()`` to read them again (tests).
    """
    return PostgresConfig.load()


def _read_env_file(env_file: str | Path | None) -> dict[str, str]:
    if env_file is None or not Path(env_file).is_file():
        return {}
    return {key.upper(): value for key, value in dotenv_values(env_file).items() if value}


def _load_section(
    settings_class: type[DatabaseSettings], env_file: str | Path | None
) -> DatabaseSettings:
    try:
        return settings_class(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise _translate(settings_class, exc) from None


def _translate(settings_class: type[DatabaseSettings], exc: ValidationError) -> ConfigurationError:
    lines = []
    first_var: str | None = None
    for error in exc.errors(include_input=False, include_url=False):
        field = _field_for_loc(settings_class, str(error["loc"][0]) if error["loc"] else "")
        var = env_var_name(settings_class, field) if field else "?"
        first_var = first_var or var
        lines.append(f"  {var}: {error['msg']}")
    detail = "\n".join(lines)
    return ConfigurationError(
        f"invalid settings for the {settings_class.database.value} database:\n{detail}",
        env_var=first_var,
    )


def _field_for_loc(settings_class: type[DatabaseSettings], loc: str) -> str | None:
    for field in settings_class.model_fields:
        if loc == field or loc.upper() in env_var_names(settings_class, field):
            return field
    return None


_GROUPS = "POOL|BREAKER|RETRY|STARTUP|HEALTH|LOG"
_POOL_VAR = re.compile(rf"^PG_(?:(?P<db>[A-Z0-9]+)_)?(?:{_GROUPS})_(?P<knob>[A-Z0-9_]+)$")
_DSN_VAR = re.compile(r"^POSTGRES_(?:(?P<db>[A-Z0-9]+)_)?DSN$")


def _check_unknown_variables(environ: Mapping[str, str]) -> None:
    """Reject variables in our namespace that no database reads.

    Caught: unknown databases (``PG_REPLICA_POOL_MAX_SIZE``), unknown knobs
    (``PG_POOL_MAX_SZE``), main spelled as a database (``POSTGRES_MAIN_DSN``),
    anything under another database's prefix (``PG_REFERENCE_...``), and
    near misses of a real name. Unrelated variables (``POSTGRES_PASSWORD``,
    ``PG_COLOR``) are left alone.
    """
    known = {
        name
        for settings_class in SETTINGS_CLASSES.values()
        for field in settings_class.model_fields
        for name in env_var_names(settings_class, field)
    }
    prefixes = tuple(
        str(settings_class.model_config.get("env_prefix", "")).upper()
        for database, settings_class in SETTINGS_CLASSES.items()
        if database is not Database.MAIN
    )
    db_names = {database.value.upper() for database in Database if database is not Database.MAIN}
    known_list = ", ".join(database.value for database in Database)
    problems: list[tuple[str, str]] = []
    for raw_name in environ:
        name = raw_name.upper()
        if name in known:
            continue
        match = _POOL_VAR.match(name) or _DSN_VAR.match(name)
        db = match.group("db") if match else None
        hint = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        suggestion = f"; did you mean {hint[0]}?" if hint else ""
        if db == "MAIN":
            problems.append(
                (name, f"the main database has no infix (POSTGRES_DSN, PG_POOL_...){suggestion}")
            )
        elif db is not None and db not in db_names:
            problems.append(
                (name, f"unknown database {db.lower()!r} (known: {known_list}){suggestion}")
            )
        elif match or name.startswith(prefixes) or (hint and name.startswith("PG_")):
            problems.append((name, f"not a wellwon_db setting{suggestion}"))
    if problems:
        problems.sort()
        detail = "\n".join(f"  {name}: {why}" for name, why in problems)
        raise ConfigurationError(
            "unknown database settings in the environment or .env:\n"
            f"{detail}\nsee docs/configuration.md for every setting",
            env_var=problems[0][0],
        )
