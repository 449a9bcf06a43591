"""Settings per database, read from the environment, a ``.env`` file or code.

Naming pattern, one per database (``<DB>`` is the database's env infix, its
name upper-cased, empty for main)::

    POSTGRES_[<DB>_]DSN          the DSN (a secret)
    POSTGRES_[<DB>_]DSN_FILE     a file holding the DSN instead
    PG_[<DB>_]PASSWORD_FILE      a file holding the password, read again when it changes
    PG_[<DB>_]POOL_<KNOB>        every pool knob, e.g. PG_REFERENCE_POOL_MAX_SIZE

    PG_[<DB>_]STARTUP_<KNOB>     start-up behaviour
    PG_[<DB>_]BREAKER_<KNOB>     circuit breaker
    PG_[<DB>_]RETRY_<KNOB>       retry policy

The one exception is kept from the original ``pg_client``: main's command
timeout is ``PG_COMMAND_TIMEOUT_SEC`` (``PG_POOL_COMMAND_TIMEOUT_SEC``, the
pattern's name, is accepted too). Every field is validated when loaded and
documented by its ``description``; loading lives in ``_config.py``.

The settings class of a database is made from its :class:`DatabaseSpec` by
:func:`settings_class` (one class per spec, cached); fields can be given in
code by their names (``pool_max_size=5``) as well as through the variables.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BeforeValidator, Field, ImportString, SecretStr
from pydantic import model_validator as _model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from wellwon_db.config._dsn import dsn_has_password, validate_dsn
from wellwon_db.config._files import check_readable, read_secret
from wellwon_db.config._registry import MAIN, REFERENCE, Database, DatabaseSpec
from wellwon_db.config._tls import SslMode, check_tls_files, dsn_query, merge_tls
from wellwon_db.errors import ConfigurationError

__all__ = [
    "DEFAULT_ENV_FILE",
    "DatabaseSettings",
    "MainDatabaseSettings",
    "PasswordProvider",
    "ReferenceDatabaseSettings",
    "ReplicaSettings",
    "ResetPolicy",
    "env_var_name",
    "env_var_names",
    "from_code",
    "settings_class",
    "split_dsns",
]

ResetPolicy = Literal["smart", "always"]


def _not_empty(value: object) -> object:
    # An empty variable would otherwise become Path("."), the working directory.
    if isinstance(value, str) and not value.strip():
        raise ValueError("must be a file path (unset the variable rather than leave it empty)")
    return value


#: A password for each new connection, or an awaitable of one (IAM tokens), as asyncpg takes.
PasswordProvider = Callable[[], str] | Callable[[], Awaitable[str]]

#: A path setting: never empty.
FilePath = Annotated[Path, BeforeValidator(_not_empty)]

DEFAULT_ENV_FILE = ".env"

#: True while settings are built from code alone: no environment, no ``.env``.
_CODE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("code_only", default=False)


def from_code(settings: type[DatabaseSettings], values: dict[str, Any]) -> DatabaseSettings:
    """Validate ``settings`` from ``values`` (by field name) alone: no environment, no file."""
    token = _CODE_ONLY.set(True)
    try:
        return settings(**values)
    finally:
        _CODE_ONLY.reset(token)


class DatabaseSettings(BaseSettings):
    """Settings of one database. :func:`settings_class` makes the subclass of each database.

    Durations are seconds. A lifetime of 0 disables that limit.
    """

    model_config = SettingsConfigDict(
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        validate_default=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Values given in code win over the environment, which wins over ``.env``."""
        if _CODE_ONLY.get():
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)

    #: The database these settings belong to (set by subclasses).
    spec: ClassVar[DatabaseSpec]
    #: Its name (set by subclasses): a ``Database`` member for the built-in ones.
    database: ClassVar[Database | str]

    dsn: SecretStr | None = Field(
        default=None,
        description="postgresql://user:password@host:port/dbname of this database.",
    )
    dsn_file: FilePath | None = Field(
        default=None,
        description=(
            "A file holding the DSN instead (the _FILE convention of Docker images), read at "
            "start-up; its content is never shown."
        ),
    )
    password_file: FilePath | None = Field(
        default=None,
        description=(
            "A file holding the password (then not in the DSN), read again for new "
            "connections whenever it changes: rotation without a restart."
        ),
    )
    password_provider: ImportString[PasswordProvider] | None = Field(
        default=None,
        description=(
            "module:function returning the password (or an awaitable of it), called for every "
            "new connection, e.g. RDS or Cloud SQL IAM tokens; in code, any such callable."
        ),
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
            "A connection idle longer than this is checked with SELECT 1 before it is "
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
        pattern=r"\S",
        max_length=63,
        description="application_name reported to the server; default wellwon_db:<database>.",
    )
    pool_sslmode: SslMode | None = Field(
        default=None,
        description=(
            "TLS: disable, allow, prefer, require, verify-ca or verify-full (checks the CA and "
            "the host name: use it for anything off the host); unset: the DSN's, else prefer."
        ),
    )
    pool_sslrootcert: FilePath | None = Field(
        default=None,
        description="CA certificates (PEM) that verify the server's certificate.",
    )
    pool_sslcert: FilePath | None = Field(
        default=None,
        description="Client certificate (PEM) for certificate authentication.",
    )
    pool_sslkey: FilePath | None = Field(
        default=None,
        description="The client certificate's private key (PEM, unencrypted).",
    )
    pool_read_only: bool = Field(
        default=False,
        description=(
            "true: sessions open with default_transaction_read_only=on, so a write fails at "
            "the server; default true for replica databases."
        ),
    )
    pool_reset: ResetPolicy = Field(
        default="smart",
        description=(
            "How a released connection is cleaned: 'smart' resets only after statements "
            "that change session state; 'always' resets after every use."
        ),
    )

    pool_budget: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description=(
            "Connections all workers of the service together may hold on this database; "
            "each worker's max_size becomes at most budget // workers. 0: no budget."
        ),
    )
    pool_workers: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description=(
            "Worker processes sharing the budget; default WEB_CONCURRENCY, else the parent "
            "server's --workers, else 1."
        ),
    )
    pool_capacity_check: Literal["warn", "refuse", "off"] = Field(
        default="warn",
        description=(
            "At start-up, compare workers x max_size with the server's free connection slots: "
            "'warn' logs, 'refuse' fails start-up, 'off' skips the check."
        ),
    )
    pool_drain_timeout_sec: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description=(
            "On shutdown, seconds in-flight work may keep its connections before they are "
            "terminated (and their holders logged)."
        ),
    )
    pool_pgbouncer: bool = Field(
        default=False,
        description=(
            "true: the DSN points at PgBouncer in transaction mode; no prepared-statement "
            "cache and no reliance on session state."
        ),
    )
    pool_lease_metrics: bool = Field(
        default=False,
        description=(
            "true: record the db.client.connection.wait_time and use_time histograms on every "
            "lease (two more histogram records per call when an OpenTelemetry SDK is set)."
        ),
    )
    pool_exhaustion_warn_sec: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description=(
            "Warn once per episode when tasks wait for a connection, or utilisation stays at or "
            "above POOL_EXHAUSTION_UTILISATION, for this many seconds; 0: never."
        ),
    )
    pool_exhaustion_utilisation: float = Field(
        default=90.0,
        gt=0,
        le=100,
        description="Percent of max_size in use that counts as pool pressure.",
    )
    # -- connection set-up (the init hook and server settings are code: ConnectionSetup) --
    pool_json_codec: Literal["text", "python"] = Field(
        default="text",
        description=(
            "json and jsonb values: 'text' returns and takes them as str (asyncpg's default); "
            "'python' decodes them to dict/list/... with the stdlib json and encodes Python "
            "values given as arguments. Unset for a replica database: its primary's."
        ),
    )
    log_slow_query_sec: float = Field(
        default=1.0,
        ge=0,
        le=86_400,
        description="Log statements at least this slow (logger wellwon_db.slow); 0: off.",
    )
    health_required: bool = Field(
        default=True,
        description=(
            "false: this database being down makes the service degraded, not down "
            "(readiness can stay up)."
        ),
    )
    health_timeout_sec: float = Field(
        default=2.0, gt=0, le=60, description="Seconds one health check may take."
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
    startup_dsn_required: bool = Field(
        default=False,
        description=(
            "true: a container fails at start-up when this database's DSN is unset; false: "
            "the database is off and its client raises ConfigurationError naming the DSN "
            "variable. Default true for main, false for the others."
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
    breaker_consecutive_failures: int = Field(
        default=5,
        ge=0,
        le=100_000,
        description=(
            "This many availability failures in a row open the breaker at once, whatever "
            "the window holds (a crashed server); 0: only the rates open it."
        ),
    )
    breaker_probe_interval_sec: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description=(
            "While open, seconds between background connection attempts; the first that "
            "succeeds lets the half-open probes through at once. 0: no attempts."
        ),
    )
    cache_enabled: bool = Field(
        default=False,
        description=(
            "true: client.cached serves results from a per-process cache invalidated by "
            "LISTEN/NOTIFY (docs/caching.md); default true for reference, false for the others."
        ),
    )
    cache_max_entries: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Most results cached per process; the least recently used go first.",
    )
    cache_ttl_sec: float = Field(
        default=300.0,
        gt=0,
        le=86_400 * 7,
        description=(
            "Seconds a cached result is kept at most: a safety net, not the mechanism "
            "(invalidation is)."
        ),
    )
    cache_stale_if_error_sec: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description=(
            "While the database cannot be reached, seconds (from the start of the outage) "
            "cached results keep answering; 0: never."
        ),
    )
    cache_channel: str = Field(
        default="wellwon_db_invalidation",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z_][a-z0-9_$]*$",
        description="The NOTIFY channel the invalidation triggers and listeners use.",
    )
    cache_listen_dsn: SecretStr | None = Field(
        default=None,
        description=(
            "DSN of the dedicated LISTEN connection when it must differ from the database's "
            "(e.g. around PgBouncer in transaction mode); unset: the database's DSN."
        ),
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
                f"{self.pool_max_size} for the {self.database} database; "
                f"set {min_var} <= {max_var}",
                env_var=min_var,
            )
        self._check_credentials()
        for low, high in (
            ("breaker_open_sec", "breaker_open_max_sec"),
            ("retry_backoff_sec", "retry_backoff_max_sec"),
        ):
            if getattr(self, low) > getattr(self, high) and high not in self.model_fields_set:
                # Only the lower bound was set: the default cap follows it up.
                object.__setattr__(self, high, getattr(self, low))
            if getattr(self, low) > getattr(self, high):
                low_var, high_var = env_var_name(type(self), low), env_var_name(type(self), high)
                raise ConfigurationError(
                    f"{low_var}={getattr(self, low):g} is greater than {high_var}="
                    f"{getattr(self, high):g} for the {self.database} database; "
                    f"set {low_var} <= {high_var}",
                    env_var=low_var,
                )
        return self

    def _check_credentials(self) -> None:
        """The DSN (read from its file), password sources and TLS files, checked now."""
        kind = type(self)
        dsn_var = env_var_name(kind, "dsn")
        if self.dsn_file is not None:
            file_var = env_var_name(kind, "dsn_file")
            if self.dsn is not None:
                raise ConfigurationError(
                    f"both {dsn_var} and {file_var} are set for the {self.database} database; "
                    "set only one of them",
                    env_var=file_var,
                )
            dsn_var = file_var
            object.__setattr__(
                self, "dsn", SecretStr(read_secret(self.dsn_file, dsn_var, self.database))
            )
        dsns = split_dsns(self.dsn.get_secret_value()) if self.dsn is not None else []
        listen = self.cache_listen_dsn.get_secret_value() if self.cache_listen_dsn else None
        listen_var = env_var_name(kind, "cache_listen_dsn")
        for dsn in dsns:
            validate_dsn(dsn, dsn_var)
        if listen is not None:
            validate_dsn(listen, listen_var)
        password_vars = [
            env_var_name(kind, field)
            for field in ("password_file", "password_provider")
            if getattr(self, field) is not None
        ]
        if len(password_vars) > 1:
            raise ConfigurationError(
                f"both {password_vars[0]} and {password_vars[1]} are set for the "
                f"{self.database} database; set only one of them",
                env_var=password_vars[1],
            )
        for variable, values in ((dsn_var, dsns), (listen_var, [listen] if listen else [])):
            if password_vars and any(dsn_has_password(dsn) for dsn in values):
                raise ConfigurationError(
                    f"{variable} carries a password and {password_vars[0]} is set for the "
                    f"{self.database} database; take the password out of the DSN",
                    env_var=variable,
                )
        if self.password_file is not None:
            read_secret(self.password_file, env_var_name(kind, "password_file"), self.database)
        given: dict[str, tuple[str, str]] = {}
        for name in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            value = getattr(self, f"pool_{name}")
            if value is not None:
                given[name] = (str(value), env_var_name(kind, f"pool_{name}"))
                if name != "sslmode":
                    check_readable(Path(value), given[name][1], self.database)
        if "sslkey" in given and "sslcert" not in given:
            raise ConfigurationError(
                f"{given['sslkey'][1]} is set without {env_var_name(kind, 'pool_sslcert')} for "
                f"the {self.database} database; set the client certificate too",
                env_var=env_var_name(kind, "pool_sslcert"),
            )
        targets = [(dsn, dsn_var) for dsn in dsns]
        if listen is not None:
            targets.append((listen, listen_var))
        for dsn, variable in targets:
            query = dsn_query(merge_tls(dsn, variable, given, self.database))
            check_tls_files(
                {
                    name: (query[name], given[name][1] if name in given else variable)
                    for name in ("sslrootcert", "sslcert", "sslkey")
                    if query.get(name)
                },
                self.database,
            )

    @property
    def application_name(self) -> str:
        """The application_name the pool reports to the server."""
        return self.pool_application_name or f"wellwon_db:{self.database}"


class ReplicaSettings(DatabaseSettings):
    """Settings of a read-replica database: its DSNs (one per replica) and its lag limit."""

    startup_required: bool = Field(
        default=False,
        description=(
            "false (the default for replicas): start without a replica that is down; its "
            "reads go elsewhere until it answers. true: a replica down at start-up fails it."
        ),
    )
    health_required: bool = Field(
        default=False,
        description=(
            "true: this replica database failing its check (replicas and primary both "
            "unreachable) makes the service down; false (the default for replicas): degraded."
        ),
    )
    max_lag_sec: float = Field(
        default=5.0,
        gt=0,
        le=86_400,
        description=(
            "A replica further behind its primary than this many seconds (measured from WAL "
            "positions) is skipped: its reads go to another replica or to the primary."
        ),
    )
    pool_read_only: bool = Field(
        default=True,
        description=(
            "true (the default for replicas): sessions open with default_transaction_read_only"
            "=on, so a stray write fails at the server; false: the server's default."
        ),
    )
    lag_check_sec: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="Seconds between two background measurements of each replica's lag.",
    )


_DSN_DESCRIPTION = "postgresql://user:password@host:port/dbname of the {name} database."
_REPLICA_DSN_DESCRIPTION = (
    "postgresql://user:password@host:port/dbname of each replica of the {name} database, "
    "separated by spaces; unset: its reads go to the primary."
)
_COMMAND_TIMEOUT_DESCRIPTION = "Seconds a statement may run; the server cancels it after that."


@functools.cache
def settings_class(spec: DatabaseSpec) -> type[DatabaseSettings]:
    """The settings class of ``spec``'s database (one per spec, cached).

    Its variables are ``spec.dsn_variable`` and ``spec.env_prefix`` + the
    field name upper-cased; main keeps ``PG_COMMAND_TIMEOUT_SEC`` (with
    ``PG_POOL_COMMAND_TIMEOUT_SEC`` accepted too).
    """
    annotations: dict[str, Any] = {
        "dsn": "SecretStr | None",
        "dsn_file": "FilePath | None",
        "startup_dsn_required": "bool",
        "cache_enabled": "bool",
    }
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__doc__": (
            f"The {spec.name} database: ``{spec.dsn_variable}`` and ``{spec.env_prefix}*``."
        ),
        "__annotations__": annotations,
        "model_config": SettingsConfigDict(env_prefix=spec.env_prefix),
        "spec": spec,
        "database": spec.name,
        "dsn": Field(
            default=None,
            validation_alias=spec.dsn_variable,
            description=(
                _DSN_DESCRIPTION if spec.replica_of is None else _REPLICA_DSN_DESCRIPTION
            ).format(name=spec.name if spec.replica_of is None else spec.replica_of),
        ),
        "dsn_file": Field(
            default=None,
            validation_alias=f"{spec.dsn_variable}_FILE",
            description=DatabaseSettings.model_fields["dsn_file"].description,
        ),
        "startup_dsn_required": Field(
            default=spec.required,
            description=DatabaseSettings.model_fields["startup_dsn_required"].description,
        ),
        "cache_enabled": Field(
            default=spec.name == Database.REFERENCE,
            description=DatabaseSettings.model_fields["cache_enabled"].description,
        ),
    }
    if spec is MAIN:
        annotations["pool_command_timeout_sec"] = "float"
        namespace["pool_command_timeout_sec"] = Field(
            default=60.0,
            gt=0,
            le=86_400,
            validation_alias=AliasChoices("PG_COMMAND_TIMEOUT_SEC", "PG_POOL_COMMAND_TIMEOUT_SEC"),
            description=_COMMAND_TIMEOUT_DESCRIPTION,
        )
    name = "".join(part.capitalize() for part in str(spec.name).split("_"))
    base = DatabaseSettings if spec.replica_of is None else ReplicaSettings
    return type(f"{name}DatabaseSettings", (base,), namespace)


def split_dsns(value: str) -> list[str]:
    """The DSNs in ``value``: one, or several separated by whitespace (replicas)."""
    return value.split()


#: The main database: ``POSTGRES_DSN`` and ``PG_POOL_*``.
MainDatabaseSettings = settings_class(MAIN)
#: The reference database: ``POSTGRES_REFERENCE_DSN`` and ``PG_REFERENCE_POOL_*``.
ReferenceDatabaseSettings = settings_class(REFERENCE)


@functools.cache
def env_var_names(settings: type[DatabaseSettings], field: str) -> tuple[str, ...]:
    """Every environment variable that sets ``field``, the preferred one first."""
    info = settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice).upper() for choice in alias.choices)
    if isinstance(alias, str):
        return (alias.upper(),)
    prefix = str(settings.model_config.get("env_prefix", ""))
    return (f"{prefix}{field}".upper(),)


def env_var_name(settings: type[DatabaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``settings``."""
    return env_var_names(settings, field)[0]
