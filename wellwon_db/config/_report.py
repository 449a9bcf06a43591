"""The effective settings of every database, secrets masked, and where each value came from.

Backs ``wellwon-db config``. A value's source is decided the way
pydantic-settings decides it: the environment wins over the ``.env`` file,
and within each the variable names of a field are tried in order (the
preferred name first, then its aliases); a value no variable set is the
field's default, or
``derived`` when a rule adjusted the default (a default minimum pool size
follows a smaller maximum down, a default cap follows a larger lower bound up).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from dotenv import dotenv_values
from pydantic import SecretStr

from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._dsn import redact_dsn
from wellwon_db.config._settings import DatabaseSettings, env_var_names
from wellwon_db.errors import ConfigurationError

__all__ = ["ConfigReport", "SettingReport", "SettingSource", "build_config_report"]

#: ``default``, ``derived`` (a default adjusted by a rule), ``env``, ``.env``, or
#: ``file`` (the DSN read from ``POSTGRES_[<DB>_]DSN_FILE``, never shown).
SettingSource: TypeAlias = Literal["default", "derived", "env", ".env", "file"]

#: A setting's value as shown: secrets masked, otherwise as validated.
ShownValue: TypeAlias = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class SettingReport:
    """One setting of one database.

    ``variable`` is the environment variable that supplied the value, or the
    one to set when the value is a default.
    """

    field: str
    variable: str
    value: ShownValue
    source: SettingSource

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {"variable": self.variable, "value": self.value, "source": self.source}


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """Every database's settings, in field order; ``env_file`` is the ``.env`` read, if any."""

    env_file: str | None
    databases: dict[str, list[SettingReport]]
    #: Per database, what each worker's pool really gets (after the budget).
    effective: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per database whose settings are invalid (an undeclared one named by a variable): why.
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, settings keyed by field name."""
        return {
            "env_file": self.env_file,
            "databases": {
                name: {setting.field: setting.to_dict() for setting in settings}
                for name, settings in self.databases.items()
            },
            "effective": self.effective,
            "errors": self.errors,
        }


def build_config_report(
    config: PostgresConfig,
    env_file: str | Path | None,
    environ: Mapping[str, str] | None = None,
) -> ConfigReport:
    """Describe ``config`` as loaded from ``environ`` (default ``os.environ``) and ``env_file``.

    ``env_file`` must be the file ``config`` was loaded with; a missing file
    counts as none. Secrets are masked: DSNs keep everything but the password;
    a DSN read from a file is not shown, nor is any file's content.
    """
    env_path = Path(env_file) if env_file is not None else None
    if env_path is not None and not env_path.is_file():
        env_path = None
    from_env = _upper_keys(os.environ if environ is None else environ)
    from_file = _upper_keys(dotenv_values(env_path)) if env_path is not None else {}
    databases: dict[str, list[SettingReport]] = {}
    errors: dict[str, str] = {}
    effective = {}
    for database in config.databases:
        try:
            settings = config.settings_for(database)
            pool = config.get_pool_config(database)
        except ConfigurationError as exc:
            errors[str(database)] = str(exc)
            continue
        databases[str(database)] = [
            _describe(type(settings), settings, field, from_env, from_file)
            for field in type(settings).model_fields
        ]
        effective[str(database)] = {
            "workers": pool.workers,
            "budget": pool.budget or None,
            "min_size_per_worker": pool.min_size,
            "max_size_per_worker": pool.max_size,
            "max_connections_all_workers": pool.workers * pool.max_size,
            "statement_cache_size": 0 if pool.pgbouncer else pool.statement_cache_size,
        }
    return ConfigReport(
        env_file=str(env_path.resolve()) if env_path is not None else None,
        databases=databases,
        effective=effective,
        errors=errors,
    )


def _upper_keys(values: Mapping[str, str | None]) -> dict[str, str]:
    # pydantic-settings matches names case-insensitively; a bare ``KEY`` line
    # in a .env file (no ``=``) sets nothing.
    return {key.upper(): value for key, value in values.items() if value is not None}


def _describe(
    settings_class: type[DatabaseSettings],
    settings: DatabaseSettings,
    field: str,
    from_env: Mapping[str, str],
    from_file: Mapping[str, str],
) -> SettingReport:
    names = env_var_names(settings_class, field)
    value = getattr(settings, field)
    if field == "dsn" and settings.dsn_file is not None:
        # Not even redacted: the file's content (host, user) is not shown at all.
        file_variable = env_var_names(settings_class, "dsn_file")[0]
        return SettingReport(field, names[0], f"(read from {file_variable})", "file")
    shown = _shown(value)
    for name in names:
        if name in from_env:
            return SettingReport(field, name, shown, "env")
    for name in names:
        if name in from_file:
            return SettingReport(field, name, shown, ".env")
    default = settings_class.model_fields[field].get_default(call_default_factory=True)
    source: SettingSource = "default" if value == default else "derived"
    return SettingReport(field, names[0], shown, source)


def _shown(value: object) -> ShownValue:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return redact_dsn(secret) if "://" in secret else "***"
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if callable(value):  # a password provider: its name, as PG_[<DB>_]PASSWORD_PROVIDER takes it
        module = getattr(value, "__module__", None) or "?"
        return f"{module}:{getattr(value, '__qualname__', type(value).__name__)}"
    return str(value)
