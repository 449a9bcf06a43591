"""The shard map's settings: ``PG_SHARDS_*`` from the environment, a ``.env`` file or code.

::

    PG_SHARDS_PLACEMENT      where each logical shard lives (databases, ranges or an even split)
    PG_SHARDS_COUNT          the fixed number of logical shards
    PG_SHARDS_SCHEME         pg_partition (PARTITION BY HASH's placement) or citus
    PG_SHARDS_KEY_TYPE       bigint, text or uuid: the shard key column's type
    PG_SHARDS_VERSION        bumped with every placement change
    PG_SHARDS_FANOUT_*       fan-out concurrency and timeout
    PG_SHARDS_ID_EPOCH       the epoch of global IDs
    PG_SHARDS_KEY_SETTING    a setting every keyed transaction sets to its key (row-level security)

Each physical database of the placement is an ordinary named database with
its own ``POSTGRES_<NAME>_DSN`` and ``PG_<NAME>_*`` settings. The
``PG_SHARDS_`` prefix belongs to the shard map: any other variable under it
is reported as a typo.
"""

from __future__ import annotations

import contextvars
import difflib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._environment import read_environment
from wellwon_db.config._registry import spec_for
from wellwon_db.config._settings import DEFAULT_ENV_FILE
from wellwon_db.errors import ConfigurationError
from wellwon_db.shards._hashing import HashScheme
from wellwon_db.shards._map import MAX_LOGICAL_SHARDS, KeyType, ShardMap

__all__ = [
    "PREFIX",
    "ShardSettings",
    "check_databases",
    "load_shard_settings",
    "shard_variable",
]

#: The prefix of every shard-map variable.
PREFIX = "PG_SHARDS_"

_CODE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("shards_code", default=False)


def shard_variable(field: str) -> str:
    """The environment variable of a shard-map setting: ``count`` -> ``PG_SHARDS_COUNT``."""
    return f"{PREFIX}{field.upper()}"


class ShardSettings(BaseSettings):
    """The shard map and sharding behaviour. Durations in seconds.

    :meth:`shard_map` builds the :class:`ShardMap`; the rest shapes fan-out,
    IDs and keyed transactions.
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        validate_default=True,
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
        return (init_settings, env_settings, dotenv_settings)

    placement: str | None = Field(
        default=None,
        description=(
            "The databases holding the logical shards: 'shard_a shard_b' (split evenly, in "
            "order) or 'shard_a:0-31 shard_b:32-63' (ranges and numbers, comma-separated). "
            "Unset: no shard map."
        ),
    )
    count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_LOGICAL_SHARDS,
        description=(
            "The number of logical shards, fixed for the data's lifetime (changing it moves "
            "almost every key); for citus, the tables' shard_count. Required with a placement."
        ),
    )
    scheme: HashScheme = Field(
        default="pg_partition",
        description=(
            "How a key's hash picks its logical shard: 'pg_partition' as PARTITION BY HASH "
            "(MODULUS count) does, 'citus' as a Citus distributed table of count shards does."
        ),
    )
    key_type: KeyType = Field(
        default="bigint",
        description=(
            "The shard key column's type, whose hash function is used: 'bigint' (also for "
            "integer and smallint), 'text' (deterministic collations) or 'uuid'."
        ),
    )
    version: int = Field(
        default=1,
        ge=1,
        description="The placement's version: bump it whenever a logical shard moves.",
    )
    fanout_concurrency: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description="Physical shards a fan-out queries at the same time.",
    )
    fanout_timeout_sec: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description=(
            "Seconds a fan-out waits for all shards; a shard that has not answered by then "
            "is reported as timed out."
        ),
    )
    id_epoch: datetime = Field(
        default=datetime(2024, 1, 1, tzinfo=UTC),
        description=(
            "The epoch of global IDs (ISO 8601, UTC when no offset): their 41 bits of "
            "milliseconds count from it. Never change it once IDs exist."
        ),
    )
    key_setting: str | None = Field(
        default=None,
        min_length=3,
        max_length=63,
        pattern=r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$",
        description=(
            "A custom setting (e.g. app.tenant_id) that every transaction opened for a key "
            "sets to that key (SET LOCAL), for row-level security policies. Unset: none."
        ),
    )

    @field_validator("id_epoch")
    @classmethod
    def _epoch_in_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if not datetime(1970, 1, 1, tzinfo=UTC) <= value <= datetime.now(UTC):
            raise ValueError("must lie between 1970 and now")
        return value

    @property
    def configured(self) -> bool:
        """Whether a placement is set (a shard map exists)."""
        return self.placement is not None

    @property
    def id_epoch_ms(self) -> int:
        """The ID epoch in Unix milliseconds."""
        return int(self.id_epoch.timestamp() * 1000)

    def shard_map(self) -> ShardMap:
        """The shard map these settings describe.

        Raises ``ConfigurationError`` naming ``PG_SHARDS_PLACEMENT`` when it is
        unset, ``PG_SHARDS_COUNT`` when the count is missing, and the
        placement's own errors (see :class:`ShardMap`).
        """
        if self.placement is None:
            raise ConfigurationError(
                "no shard map: set PG_SHARDS_PLACEMENT to the databases that hold the logical "
                "shards (e.g. 'shard_a shard_b') and PG_SHARDS_COUNT to their fixed number "
                "(docs/sharding.md)",
                env_var="PG_SHARDS_PLACEMENT",
            )
        if self.count is None:
            raise ConfigurationError(
                "PG_SHARDS_PLACEMENT is set but PG_SHARDS_COUNT is not: set it to the fixed "
                "number of logical shards (e.g. 64; it cannot change later without moving "
                "almost every key)",
                env_var="PG_SHARDS_COUNT",
            )
        return ShardMap(
            self.count,
            self.placement,
            scheme=self.scheme,
            key_type=self.key_type,
            version=self.version,
        )

    @classmethod
    def from_code(cls, values: Mapping[str, Any]) -> ShardSettings:
        """Settings from ``values`` (by field name) alone: no environment, no ``.env``.

        Raises ``ConfigurationError`` for unknown keys and invalid values.
        """
        _check_keys(values)
        token = _CODE_ONLY.set(True)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise _translate(exc) from None
        finally:
            _CODE_ONLY.reset(token)


def load_shard_settings(
    env_file: str | Path | None = DEFAULT_ENV_FILE,
    values: Mapping[str, Any] | ShardSettings | None = None,
) -> ShardSettings:
    """The shard settings from the environment and ``env_file``, ``values`` (by field name) over
    them; a ``ShardSettings`` given as ``values`` is returned as it is.

    Raises ``ConfigurationError`` naming each variable to fix, and for any
    variable under ``PG_SHARDS_`` that is not a setting.
    """
    if isinstance(values, ShardSettings):
        return values
    _check_variables(read_environment(env_file))
    _check_keys(values or {})
    try:
        return ShardSettings(_env_file=env_file, **dict(values or {}))  # type: ignore[call-arg]
    except ValidationError as exc:
        raise _translate(exc) from None


def check_databases(shard_map: ShardMap, config: PostgresConfig) -> None:
    """Every database of ``shard_map`` is one ``config`` knows, and a primary.

    Raises ``ConfigurationError`` naming the DSN variable to set for a
    database nothing configures, or saying a replica cannot hold shards.
    """
    known = {str(name) for name in config.databases}
    for database in shard_map.databases:
        spec = spec_for(database)
        if str(database) not in known:
            raise ConfigurationError(
                f"PG_SHARDS_PLACEMENT places logical shards on the {database} database, which "
                f"nothing configures: set {spec.dsn_variable} (or declare it with "
                f"declare_database({str(database)!r}))",
                env_var=spec.dsn_variable,
            )
        if spec.replica_of is not None:
            raise ConfigurationError(
                f"PG_SHARDS_PLACEMENT places logical shards on {database}, a replica of "
                f"{spec.replica_of}: shards live on primaries",
                env_var="PG_SHARDS_PLACEMENT",
            )


def _fields() -> list[str]:
    return list(ShardSettings.model_fields)


def _check_variables(environ: Mapping[str, str]) -> None:
    known = {shard_variable(field) for field in _fields()}
    unknown = sorted(name for name in environ if name.startswith(PREFIX) and name not in known)
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"  {name}: not a shard map setting{hint}")
        raise ConfigurationError(
            "unknown shard map settings in the environment or .env (the PG_SHARDS_ prefix "
            "belongs to the shard map):\n" + "\n".join(lines),
            env_var=unknown[0],
        )


def _check_keys(values: Mapping[str, Any]) -> None:
    unknown = [key for key in values if key not in ShardSettings.model_fields]
    if unknown:
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), _fields(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"  {key}: not a shard map setting{hint}")
        raise ConfigurationError("unknown shard map settings:\n" + "\n".join(lines))


def _translate(exc: ValidationError) -> ConfigurationError:
    lines = []
    first: str | None = None
    for error in exc.errors(include_input=False, include_url=False):
        loc = str(error["loc"][0]).lower() if error["loc"] else ""
        field = loc.removeprefix(PREFIX.lower())
        var = shard_variable(field) if field in ShardSettings.model_fields else loc or "?"
        first = first or var
        lines.append(f"  {var} ({field}): {error['msg']}")
    return ConfigurationError("invalid shard map settings:\n" + "\n".join(lines), env_var=first)
