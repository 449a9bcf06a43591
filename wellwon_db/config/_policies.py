"""What each layer gets of one database's settings: plain, frozen values.

The pool gets a :class:`PoolConfig`, the breaker a :class:`BreakerConfig`,
the retry policy a :class:`RetryConfig`, telemetry and health theirs; none of
them reads settings or environment variables itself.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from wellwon_db.config._connection import ConnectionPreparation, ConnectionSetup, JsonCodec
from wellwon_db.config._registry import DatabaseName
from wellwon_db.config._settings import DatabaseSettings, ResetPolicy, env_var_name
from wellwon_db.config._workers import worker_count
from wellwon_db.errors import ConfigurationError

logger = logging.getLogger("wellwon_db.pool")

__all__ = ["BreakerConfig", "HealthConfig", "PoolConfig", "RetryConfig", "TelemetryConfig"]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Thresholds of one breaker. Rates in percent, durations in seconds.

    ``consecutive_failures``: that many availability failures in a row open
    the breaker at once, whatever the rate window holds (0: only the rate
    opens it). ``probe_interval_sec``: while open, how often a background
    reachability check of the server is due (0: no checks; the breaker then
    probes with real calls once ``open_sec``, doubling per trip in a row up
    to ``open_max_sec``, has elapsed).
    """

    enabled: bool = True
    failure_rate: float = 50.0
    min_calls: int = 10
    window_sec: float = 10.0
    slow_call_sec: float = 0.0
    slow_call_rate: float = 100.0
    open_sec: float = 5.0
    open_max_sec: float = 60.0
    half_open_calls: int = 3
    consecutive_failures: int = 5
    probe_interval_sec: float = 1.0


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Attempts (the first included), backoff bounds and total deadline in seconds."""

    attempts: int = 3
    backoff: float = 0.05
    backoff_max: float = 2.0
    deadline: float = 10.0


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The effective pool settings of one database (of this worker). Durations in seconds.

    ``max_inactive_lifetime`` and ``max_lifetime`` of 0 mean no limit. With a
    connection ``budget``, ``min_size``/``max_size`` are this worker's share
    (``budget // workers``), never above the explicit settings, which stay
    in ``configured_min_size``/``configured_max_size``.
    """

    database: DatabaseName
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
    #: Where ``workers`` came from: ``setting``, ``WEB_CONCURRENCY``,
    #: ``<server> --workers`` (the parent's command line) or ``assumed``.
    workers_source: str = "assumed"
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
    # -- connection set-up (config/_connection.py) --
    #: ``text`` (json/jsonb as ``str``) or ``python`` (decoded with the stdlib ``json``).
    json_codec: JsonCodec = "text"
    #: The application's init hook and server settings (code, from the container).
    setup: ConnectionSetup | None = dataclasses.field(default=None, compare=False)

    @property
    def preparation(self) -> ConnectionPreparation:
        """What the pool does to each new connection: server settings, JSON codec, init hook."""
        setup = self.setup
        return ConnectionPreparation(
            str(self.database),
            self.json_codec,
            setup.init if setup is not None else None,
            setup.server_settings if setup is not None else {},
        )

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> PoolConfig:
        """Build from one database's settings (and ``WEB_CONCURRENCY`` for the workers)."""
        if settings.pool_workers:
            workers, workers_source = settings.pool_workers, "setting"
        else:
            found = worker_count()
            workers, workers_source = found.count, found.source
            if settings.pool_budget and found.server is not None:
                _warn_undividable_budget(
                    str(settings.database),
                    env_var_name(type(settings), "pool_budget"),
                    env_var_name(type(settings), "pool_workers"),
                    found.server,
                )
        max_size, min_size = settings.pool_max_size, settings.pool_min_size
        if settings.pool_budget:
            share = settings.pool_budget // workers
            if share < 1:
                budget_var = env_var_name(type(settings), "pool_budget")
                raise ConfigurationError(
                    f"{budget_var}={settings.pool_budget} gives each of {workers} workers no "
                    f"connection to the {settings.database} database; raise "
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
            workers_source=workers_source,
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
            json_codec=settings.pool_json_codec,
        )


@functools.cache
def _warn_undividable_budget(
    database: str, budget_var: str, workers_var: str, server: str
) -> None:
    """Once per database and process: the budget cannot be divided among unknown workers."""
    logger.warning(
        "%s is set for the %s database, but this process is a %s worker and the number of "
        "workers is unknown (no WEB_CONCURRENCY, no --workers on the command line): each "
        "worker takes the whole budget. Set WEB_CONCURRENCY or %s to the number of workers.",
        budget_var,
        database,
        server,
        workers_var,
    )


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Readiness of one database: whether it is required, and the check's timeout (s)."""

    required: bool = True
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Logging thresholds of one database: statements slower than ``slow_query`` s (0: off)."""

    slow_query: float = 1.0
