"""Settings per database, read from the environment and a ``.env`` file.

Naming pattern, one per database (``<DB>`` is the database name upper-cased,
empty for main)::

    POSTGRES_[<DB>_]DSN          the DSN (a secret)
    PG_[<DB>_]POOL_<KNOB>        every pool knob, e.g. PG_REFERENCE_POOL_MAX_SIZE

The one exception is kept from the original ``pg_client``: main's command
timeout is ``PG_COMMAND_TIMEOUT_SEC`` (``PG_POOL_COMMAND_TIMEOUT_SEC``, the
pattern's name, is accepted too). Everything is validated when loaded; every
error names the environment variable to fix and never echoes a DSN.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic import model_validator as _model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wellwon_db._breaker import BreakerConfig
from wellwon_db._database import Database
from wellwon_db._retry import RetryConfig
from wellwon_db.errors import ConfigurationError

__all__ = [
    "DatabaseSettings",
    "MainDatabaseSettings",
    "PoolConfig",
    "PostgresConfig",
    "ReferenceDatabaseSettings",
    "ResetPolicy",
    "env_var_name",
    "get_postgres_config",
    "redact_dsn",
]

ResetPolicy = Literal["smart", "always"]

_DSN_SCHEMES = ("postgres", "postgresql")
_DEFAULT_ENV_FILE = ".env"


class DatabaseSettings(BaseSettings):
    """Settings of one database. Subclasses fix the environment prefix.

    Durations are seconds. A lifetime of 0 disables that limit.
    """

    model_config = SettingsConfigDict(
        env_file=_DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        validate_default=True,
    )

    #: The logical database these settings belong to (set by subclasses).
    database: ClassVar[Database]

    dsn: SecretStr | None = Field(
        default=None,
        description="postgresql://user:password@host:port/dbname of this database.",
    )
    pool_min_size: int = Field(
        default=10, ge=0, le=10_000, description="Connections opened at start-up and kept."
    )
    pool_max_size: int = Field(
        default=50, ge=1, le=10_000, description="Most connections the pool holds at once."
    )
    pool_timeout_sec: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds to wait for a free connection before PoolTimeoutError.",
    )
    pool_command_timeout_sec: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Seconds a statement may run; the server cancels it after that.",
    )
    pool_connect_timeout_sec: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds to establish one connection (TCP, TLS, authentication).",
    )
    pool_max_inactive_lifetime_sec: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="Idle seconds after which a connection above min_size is closed; 0: never.",
    )
    pool_max_lifetime_sec: float = Field(
        default=1800.0,
        ge=0,
        le=86_400 * 7,
        description="Age in seconds after which a connection is replaced when released; 0: never.",
    )
    pool_validation_idle_sec: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description=(
            "A connection idle longer than this is checked with an empty query before it is "
            "handed out (a dead one is replaced); 0: never checked."
        ),
    )
    pool_max_queries: int = Field(
        default=50_000,
        ge=1,
        description="Queries after which a connection is replaced when released.",
    )
    pool_statement_cache_size: int = Field(
        default=100,
        ge=0,
        le=100_000,
        description="Prepared statements cached per connection; 0 disables the cache.",
    )
    pool_application_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="application_name reported to the server; default wellwon_db:<database>.",
    )
    pool_reset: ResetPolicy = Field(
        default="smart",
        description=(
            "How a released connection is cleaned: 'smart' resets only after statements "
            "that change session state; 'always' resets after every use."
        ),
    )

    startup_wait_sec: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Seconds start-up keeps retrying (with backoff) a database that is down.",
    )
    startup_required: bool = Field(
        default=True,
        description=(
            "false: start without this database if it is down and connect in the "
            "background; its calls fail fast until it answers."
        ),
    )
    breaker_enabled: bool = Field(
        default=True, description="false: no circuit breaker for this database."
    )
    breaker_failure_rate: float = Field(
        default=50.0,
        gt=0,
        le=100,
        description="Percent of failed calls in the window that opens the breaker.",
    )
    breaker_min_calls: int = Field(
        default=10,
        ge=1,
        le=100_000,
        description="Calls the window must hold before a rate can open the breaker.",
    )
    breaker_window_sec: float = Field(
        default=10.0, ge=1, le=3600, description="Seconds of recent calls the rates cover."
    )
    breaker_slow_call_sec: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        description="A call at least this slow counts as slow; 0: slow calls never count.",
    )
    breaker_slow_call_rate: float = Field(
        default=100.0,
        gt=0,
        le=100,
        description="Percent of slow calls in the window that opens the breaker.",
    )
    breaker_open_sec: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds the breaker stays open before letting probes through.",
    )
    breaker_open_max_sec: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Cap of the open time, which doubles with each trip in a row.",
    )
    breaker_half_open_calls: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Probe calls let through when half-open; all must succeed to close.",
    )
    retry_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Attempts for a retryable failure, the first included; 1: no retries.",
    )
    retry_backoff_sec: float = Field(
        default=0.05,
        gt=0,
        le=60,
        description="First retry delay; doubles per attempt, with full jitter.",
    )
    retry_backoff_max_sec: float = Field(
        default=2.0, gt=0, le=600, description="Largest delay between two attempts."
    )
    retry_deadline_sec: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="No new attempt starts this many seconds after the first began.",
    )

    @_model_validator(mode="after")
    def _check(self) -> DatabaseSettings:
        if (
            self.pool_min_size > self.pool_max_size
            and "pool_min_size" not in self.model_fields_set
        ):
            # Only the maximum was set: the default minimum follows it down.
            object.__setattr__(self, "pool_min_size", self.pool_max_size)
        if self.pool_min_size > self.pool_max_size:
            min_var = env_var_name(type(self), "pool_min_size")
            max_var = env_var_name(type(self), "pool_max_size")
            raise ConfigurationError(
                f"{min_var}={self.pool_min_size} is greater than {max_var}="
                f"{self.pool_max_size} for the {self.database.value} database; "
                f"set {min_var} <= {max_var}",
                env_var=min_var,
            )
        if self.dsn is not None:
            _validate_dsn(self.dsn.get_secret_value(), env_var_name(type(self), "dsn"))
        for low, high in (
            ("breaker_open_sec", "breaker_open_max_sec"),
            ("retry_backoff_sec", "retry_backoff_max_sec"),
        ):
            if getattr(self, low) > getattr(self, high):
                low_var, high_var = env_var_name(type(self), low), env_var_name(type(self), high)
                raise ConfigurationError(
                    f"{low_var}={getattr(self, low):g} is greater than {high_var}="
                    f"{getattr(self, high):g}; set {low_var} <= {high_var}",
                    env_var=low_var,
                )
        return self

    @property
    def application_name(self) -> str:
        """The application_name the pool reports to the server."""
        return self.pool_application_name or f"wellwon_db:{self.database.value}"


class MainDatabaseSettings(DatabaseSettings):
    """The main database: ``POSTGRES_DSN`` and ``PG_POOL_*``."""

    model_config = SettingsConfigDict(env_prefix="PG_")
    database: ClassVar[Database] = Database.MAIN

    dsn: SecretStr | None = Field(
        default=None,
        validation_alias="POSTGRES_DSN",
        description="postgresql://user:password@host:port/dbname of the main database.",
    )
    pool_command_timeout_sec: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        validation_alias=AliasChoices("PG_COMMAND_TIMEOUT_SEC", "PG_POOL_COMMAND_TIMEOUT_SEC"),
        description="Seconds a statement may run; the server cancels it after that.",
    )


class ReferenceDatabaseSettings(DatabaseSettings):
    """The reference database: ``POSTGRES_REFERENCE_DSN`` and ``PG_REFERENCE_POOL_*``."""

    model_config = SettingsConfigDict(env_prefix="PG_REFERENCE_")
    database: ClassVar[Database] = Database.REFERENCE

    dsn: SecretStr | None = Field(
        default=None,
        validation_alias="POSTGRES_REFERENCE_DSN",
        description="postgresql://user:password@host:port/dbname of the reference database.",
    )


#: The settings class of every database. A new database adds one line here.
SETTINGS_CLASSES: Mapping[Database, type[DatabaseSettings]] = {
    Database.MAIN: MainDatabaseSettings,
    Database.REFERENCE: ReferenceDatabaseSettings,
}


def env_var_names(settings_class: type[DatabaseSettings], field: str) -> tuple[str, ...]:
    """Every environment variable that sets ``field``, the preferred one first."""
    info = settings_class.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, str):
        return (alias.upper(),)
    if isinstance(alias, AliasChoices):
        return tuple(str(choice).upper() for choice in alias.choices)
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    return (f"{prefix}{field}".upper(),)


def env_var_name(settings_class: type[DatabaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``settings_class``."""
    return env_var_names(settings_class, field)[0]


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The effective pool settings of one database. Durations in seconds.

    ``max_inactive_lifetime`` and ``max_lifetime`` of 0 mean no limit.
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

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> PoolConfig:
        """Build from one database's settings."""
        return cls(
            database=settings.database,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
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
        )


class PostgresConfig(BaseModel):
    """The settings of every database, validated together.

    Build with :meth:`load` (environment and ``.env``) or with
    :func:`get_postgres_config` (the same, cached).
    """

    model_config = ConfigDict(frozen=True)

    main: MainDatabaseSettings
    reference: ReferenceDatabaseSettings

    @classmethod
    def load(cls, *, env_file: str | Path | None = _DEFAULT_ENV_FILE) -> PostgresConfig:
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
        return cls.model_validate(sections)

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


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for logs and errors."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


def _validate_dsn(dsn: str, env_var: str) -> None:
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _DSN_SCHEMES:
        scheme = parts.scheme if parts is not None and parts.scheme else "none"
        raise ConfigurationError(
            f"{env_var} must be a postgresql:// or postgres:// URL (got scheme {scheme!r}); "
            f"set {env_var}=postgresql://user:password@host:port/dbname",
            env_var=env_var,
        )
    if "," not in parts.netloc:
        try:
            parts.port  # noqa: B018 (parsing validates the port)
        except ValueError:
            raise ConfigurationError(
                f"{env_var} has an invalid port (0-65535 expected); "
                f"set {env_var}=postgresql://user:password@host:port/dbname",
                env_var=env_var,
            ) from None


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


_GROUPS = "POOL|BREAKER|RETRY|STARTUP"
_POOL_VAR = re.compile(rf"^PG_(?:(?P<db>[A-Z0-9]+)_)?(?:{_GROUPS})_(?P<knob>[A-Z0-9_]+)$")
_DSN_VAR = re.compile(r"^POSTGRES_(?:(?P<db>[A-Z0-9]+)_)?DSN$")


def _check_unknown_variables(environ: Mapping[str, str]) -> None:
    """Reject variables in our namespace that no database reads (typos, unknown databases)."""
    known = {
        name
        for settings_class in SETTINGS_CLASSES.values()
        for field in settings_class.model_fields
        for name in env_var_names(settings_class, field)
    }
    db_names = {database.value.upper() for database in Database}
    problems = []
    for raw_name in environ:
        name = raw_name.upper()
        if name in known:
            continue
        pool_match = _POOL_VAR.match(name)
        match = pool_match or _DSN_VAR.match(name)
        db = match.group("db") if match else None
        if db is not None and db not in db_names:
            known_list = ", ".join(sorted(d.value for d in Database))
            problems.append(
                f"  {name}: unknown database {db.lower()!r} (known databases: {known_list})"
            )
        elif pool_match or name.startswith("PG_REFERENCE_"):
            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f"; did you mean {hint[0]}?" if hint else ""
            problems.append(f"  {name}: not a wellwon_db setting{suggestion}")
    if problems:
        detail = "\n".join(sorted(problems))
        raise ConfigurationError(
            "unknown database settings in the environment or .env:\n"
            f"{detail}\nsee docs/configuration.md for every setting"
        )
