"""The settings of every database together: from the environment, a ``.env`` file or code.

:class:`PostgresConfig` holds one validated settings object per database
(``_settings.py``). Built from the environment (:meth:`PostgresConfig.load`),
it first rejects typos in our namespace (``_environment.py``); built from
code (a mapping, keyword arguments, dependency-injector's
``providers.Configuration``) it rejects unknown keys. Either way pydantic's
errors become ``ConfigurationError`` naming each variable (and key) to fix,
in the same words.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from wellwon_db.config._credentials import ConnectParams, connect_params
from wellwon_db.config._environment import check_variables, read_environment
from wellwon_db.config._policies import (
    BreakerConfig,
    HealthConfig,
    PoolConfig,
    RetryConfig,
    TelemetryConfig,
)
from wellwon_db.config._registry import (
    Database,
    DatabaseName,
    DatabaseSpec,
    database_name,
    declared_databases,
    spec_for,
)
from wellwon_db.config._settings import (
    DEFAULT_ENV_FILE,
    DatabaseSettings,
    env_var_name,
    env_var_names,
    from_code,
    settings_class,
)
from wellwon_db.errors import ConfigurationError

__all__ = ["PostgresConfig", "get_postgres_config"]


class _ConfigurationLike(Protocol):
    """What :meth:`PostgresConfig.from_configuration` needs: ``providers.Configuration``."""

    def __call__(self) -> Any: ...


class PostgresConfig:
    """The validated settings of every database, and what each layer derives from them.

    Build it with :meth:`load` (the environment and ``.env``, optionally
    with values from code over them), or from code alone:
    ``PostgresConfig({"main": {"dsn": ..., "pool_max_size": 5}})``,
    ``PostgresConfig(main={"dsn": ...})``, :meth:`from_mapping` or
    :meth:`from_configuration`. Keys are database names, values map field
    names (``dsn``, ``pool_max_size``, ...: the variable's name after its
    prefix, lower-cased) to values.

    Every declared database has settings, configured or not; any other
    database name gets its settings on first use (from the same sources).
    Immutable.
    """

    __slots__ = (
        "_env_file",
        "_environ",
        "_from_env",
        "_loading",
        "_lock",
        "_named",
        "_sections",
        "_values",
    )

    def __init__(
        self,
        databases: Mapping[str, Mapping[str, Any] | DatabaseSettings] | None = None,
        /,
        **sections: Mapping[str, Any] | DatabaseSettings,
    ) -> None:
        values = {**(databases or {}), **sections}
        self._from_env = False
        self._env_file: str | Path | None = None
        self._environ: Mapping[str, str] = {}
        self._loading = False
        self._named: tuple[DatabaseName, ...] = ()
        self._lock = threading.Lock()
        self._values: dict[str, Mapping[str, Any]] = {}
        self._sections: dict[str, DatabaseSettings] = {}
        for key, value in values.items():
            name = database_name(key)
            if isinstance(value, DatabaseSettings):
                self._sections[str(name)] = value
            elif isinstance(value, Mapping):
                self._values[str(name)] = value
            else:
                raise ConfigurationError(
                    f"the settings of the {name} database must be a mapping of setting names "
                    f"to values, got {type(value).__name__}"
                )
        self._load_declared()

    @classmethod
    def load(
        cls,
        *,
        env_file: str | Path | None = DEFAULT_ENV_FILE,
        values: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> PostgresConfig:
        """Read and validate every database's settings from the environment and ``env_file``.

        A variable in the environment wins over the same one in ``env_file``
        (the default ``./.env`` may be absent, any other file must exist;
        ``None`` reads no file); ``values`` (per database, by field name) win
        over both. Raises ``ConfigurationError`` naming each variable to fix,
        for typos in our namespace, and naming a missing ``env_file``.
        """
        if (
            env_file is not None
            and Path(env_file) != Path(DEFAULT_ENV_FILE)
            and not Path(env_file).is_file()
        ):
            raise ConfigurationError(f"env_file {env_file}: no such file")
        environ = read_environment(env_file)
        _check_command_timeout_aliases(environ)
        config = cls.__new__(cls)
        config._from_env = True
        config._env_file = env_file
        config._environ = environ
        config._lock = threading.Lock()
        config._values = {str(database_name(k)): v for k, v in (values or {}).items()}
        config._sections = {}
        config._named = tuple(check_variables(environ, declared_databases()))
        config._loading = True
        try:
            config._load_declared()
        finally:
            config._loading = False
        return config

    @classmethod
    def from_mapping(cls, values: Mapping[str, Mapping[str, Any]]) -> PostgresConfig:
        """Settings from code only (no environment): ``{"main": {"dsn": ...}, ...}``."""
        return cls(values)

    @classmethod
    def from_configuration(cls, configuration: _ConfigurationLike) -> PostgresConfig:
        """Settings from a dependency-injector ``providers.Configuration`` (or one of its options).

        Its value must be a mapping of database names to their settings, as
        read from YAML, JSON, INI or a dict; an unset configuration gives
        every database its defaults.
        """
        value = configuration()
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                "the configuration given for wellwon_db must map database names to settings "
                f"(e.g. {{'main': {{'dsn': ...}}}}), got {type(value).__name__}"
            )
        return cls(value)

    def _load_declared(self) -> None:
        for spec in declared_databases():
            section = self._section(spec)
            PoolConfig.from_settings(section)  # budget and WEB_CONCURRENCY, checked now
        for name in self._values:
            self._section(spec_for(name))  # unknown keys and bad values, checked now

    def _section(self, spec: DatabaseSpec) -> DatabaseSettings:
        key = str(spec.name)
        section = self._sections.get(key)
        if section is not None:
            return section
        with self._lock:
            section = self._sections.get(key)
            if section is None:
                section = self._make(spec)
                self._sections[key] = section
        return section

    def _make(self, spec: DatabaseSpec) -> DatabaseSettings:
        values = self._values.get(str(spec.name), {})
        if not self._from_env:
            return _make_section(spec, values, None, from_env=False)
        if self._loading:
            return _make_section(spec, values, self._env_file, from_env=True)
        # A database first named after load: from the environment as it was at load time.
        snapshot = _from_snapshot(settings_class(spec), self._environ)
        return _make_section(spec, {**snapshot, **values}, None, from_env=False)

    # -- reading ---------------------------------------------------------------

    @property
    def databases(self) -> tuple[DatabaseName, ...]:
        """The declared databases, then the others named by variables or code, in that order."""
        names: list[DatabaseName] = [spec.name for spec in declared_databases()]
        for name in (*self._named, *self._values, *self._sections):
            valid = database_name(name)
            if valid not in names:
                names.append(valid)
        return tuple(names)

    def settings_for(self, database: Database | str) -> DatabaseSettings:
        """The settings of ``database`` (any valid name; an undeclared one is loaded on first use).

        Raises ``ConfigurationError`` for an invalid name, or for invalid
        values of an undeclared database met only now.
        """
        return self._section(spec_for(database))

    @property
    def main(self) -> DatabaseSettings:
        """The main database's settings."""
        return self.settings_for(Database.MAIN)

    @property
    def reference(self) -> DatabaseSettings:
        """The reference database's settings."""
        return self.settings_for(Database.REFERENCE)

    def has_dsn(self, database: Database | str) -> bool:
        """Whether ``database``'s DSN is set."""
        return self.settings_for(database).dsn is not None

    def get_dsn(self, database: Database | str) -> str:
        """The DSN of ``database``.

        Raises ``ConfigurationError`` naming the variable to set when it is
        unset; never falls back to another database's DSN.
        """
        settings = self.settings_for(database)
        if settings.dsn is None:
            raise self.missing_dsn_error(database)
        return settings.dsn.get_secret_value()

    def missing_dsn_error(self, database: Database | str) -> ConfigurationError:
        """The error that says ``database``'s DSN is unset, naming the variable to set."""
        settings = self.settings_for(database)
        var = env_var_name(type(settings), "dsn")
        return ConfigurationError(
            f"no DSN for the {settings.database} database: set {var} "
            f"(postgresql://user:password@host:port/dbname)",
            env_var=var,
        )

    def get_connect_params(
        self, database: Database | str, dsn: str | None = None
    ) -> ConnectParams:
        """How ``database``'s connections to ``dsn`` (default: its DSN) are opened.

        Password (its file, provider or the DSN's), TLS and session settings;
        each call makes new parameters (their own password cache and holdoff
        after a refused login), one per server endpoint. Raises
        ``ConfigurationError`` naming the variable when the DSN is unset or
        the password file cannot be read.
        """
        return connect_params(
            self.settings_for(database), self.get_dsn(database) if dsn is None else dsn
        )

    def get_pool_config(self, database: Database | str) -> PoolConfig:
        """The pool settings of ``database`` (its own, never another database's).

        One exception: a replica database whose JSON codec is not set
        decodes JSON as its primary does, so a read answers alike wherever
        it is routed.
        """
        settings = self.settings_for(database)
        config = PoolConfig.from_settings(settings)
        primary = settings.spec.replica_of
        if primary is not None and "pool_json_codec" not in settings.model_fields_set:
            codec = self.settings_for(primary).pool_json_codec
            config = dataclasses.replace(config, json_codec=codec)
        return config

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
            consecutive_failures=s.breaker_consecutive_failures,
            probe_interval_sec=s.breaker_probe_interval_sec,
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

    # -- deriving --------------------------------------------------------------

    def replace(self, database: Database | str, **changes: Any) -> PostgresConfig:
        """A copy in which ``database``'s settings have ``changes`` (field names), unvalidated."""
        updated = self.settings_for(database).model_copy(update=changes)
        copy = PostgresConfig.__new__(PostgresConfig)
        copy._from_env, copy._env_file, copy._named = self._from_env, self._env_file, self._named
        copy._environ, copy._loading = self._environ, False
        copy._lock = threading.Lock()
        copy._values = dict(self._values)
        copy._sections = {**self._sections, str(updated.database): updated}
        return copy

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every loaded database's settings by field name, secrets masked (JSON-serialisable)."""
        return {
            str(name): self.settings_for(name).model_dump(mode="json") for name in self.databases
        }

    def __repr__(self) -> str:
        return f"<PostgresConfig {', '.join(map(str, self.databases))}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PostgresConfig):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


@functools.cache
def get_postgres_config() -> PostgresConfig:
    """The settings read from the environment and ``./.env``, cached (for the seed API).

    Call ``get_postgres_config.cache_clear()`` to read them again.
    Containers do not use it: each reads its own settings when it starts.
    """
    return PostgresConfig.load()


def _make_section(
    spec: DatabaseSpec,
    values: Mapping[str, Any],
    env_file: str | Path | None,
    *,
    from_env: bool,
) -> DatabaseSettings:
    """Validate ``spec``'s settings from ``values`` (over the environment when ``from_env``)."""
    settings = settings_class(spec)
    unknown = [key for key in values if key not in settings.model_fields]
    if unknown:
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(settings.model_fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"  {spec.name}.{key}: not a wellwon_db setting{hint}")
        raise ConfigurationError(
            f"unknown settings for the {spec.name} database:\n" + "\n".join(lines),
            env_var=None,
        )
    try:
        if from_env:
            return settings(_env_file=env_file, **values)  # type: ignore[call-arg]
        return from_code(settings, dict(values))
    except ValidationError as exc:
        raise _translate(settings, exc) from None


def _from_snapshot(settings: type[DatabaseSettings], environ: Mapping[str, str]) -> dict[str, str]:
    """``settings``' fields as the variables in ``environ`` set them (the first name wins)."""
    values: dict[str, str] = {}
    for field in settings.model_fields:
        for name in env_var_names(settings, field):
            if name in environ:
                values[field] = environ[name]
                break
    return values


def _translate(settings: type[DatabaseSettings], exc: ValidationError) -> ConfigurationError:
    lines = []
    first_var: str | None = None
    for error in exc.errors(include_input=False, include_url=False):
        loc = str(error["loc"][0]) if error["loc"] else ""
        field = _field_for_loc(settings, loc)
        var = env_var_name(settings, field) if field else "?"
        first_var = first_var or var
        lines.append(f"  {var} ({field or loc}): {error['msg']}")
    return ConfigurationError(
        f"invalid settings for the {settings.database} database:\n" + "\n".join(lines),
        env_var=first_var,
    )


def _field_for_loc(settings: type[DatabaseSettings], loc: str) -> str | None:
    for name in settings.model_fields:
        if loc == name or loc.upper() in env_var_names(settings, name):
            return name
    return None


def _check_command_timeout_aliases(environ: Mapping[str, str]) -> None:
    """Main's two command-timeout names may both be set only to the same value."""
    legacy, pattern = "PG_COMMAND_TIMEOUT_SEC", "PG_POOL_COMMAND_TIMEOUT_SEC"
    if legacy in environ and pattern in environ and environ[legacy] != environ[pattern]:
        raise ConfigurationError(
            f"{legacy}={environ[legacy]} and {pattern}={environ[pattern]} both set main's "
            f"command timeout; set only one of them ({legacy} is the original name)",
            env_var=legacy,
        )
