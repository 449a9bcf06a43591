"""Health checks: is each database answering, how fast, and what state are its pool and breaker in.

:func:`check_health` probes every database of a container concurrently
(``SHOW server_version`` through the database's own client, so an open
breaker answers at once without touching the network), each probe bounded
by ``PG_[<DB>_]HEALTH_TIMEOUT_SEC``, and folds the results into one
:class:`HealthReport`:

* a database is ``ok`` when it answered and its breaker is closed (or
  disabled); ``degraded`` when it answered but its breaker is half-open (or
  open again) or tasks are waiting for its connections; ``down`` when its pool
  is not open, the probe failed or did not answer in time;
* the report is ``down`` when a required database (``PG_[<DB>_]HEALTH_REQUIRED``,
  default true) is down; ``degraded`` when any database is degraded or an
  optional one is down; ``ok`` otherwise.

Reports are JSON-serialisable through ``to_dict()``; no DSN or password ever
appears in them.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from dependency_injector import containers, providers

from wellwon_db.client._client import DatabaseClient
from wellwon_db.client._slot import PoolSlot
from wellwon_db.config._config import HealthConfig, PostgresConfig
from wellwon_db.config._database import Database
from wellwon_db.config._settings import SETTINGS_CLASSES, env_var_name
from wellwon_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    PoolClosedError,
    PoolTimeoutError,
)

__all__ = [
    "DatabaseHealth",
    "HealthChecker",
    "HealthReport",
    "HealthStatus",
    "check_health",
    "database_status",
    "describe_error",
    "overall_status",
    "redact_secrets",
    "secrets_of",
]

#: ``"ok"``, ``"degraded"`` or ``"down"``.
HealthStatus: TypeAlias = Literal["ok", "degraded", "down"]

# Declared here rather than imported from ``_container``: the container may
# provide a HealthChecker, so ``_container`` imports this module.
_ContainerLike: TypeAlias = "containers.Container | providers.Container[Any]"

_T = TypeVar("_T")

#: The probe: cheap, read-only, and its answer is worth reporting.
PROBE_SQL = "SHOW server_version"

#: Breaker states in which an answering database counts as ``ok``.
_HEALTHY_BREAKER_STATES = frozenset({"closed", "disabled"})


@dataclass(frozen=True, slots=True)
class DatabaseHealth:
    """The outcome of one database's check.

    ``latency_ms`` is the probe's round trip in milliseconds (breaker check,
    acquire and statement), ``None`` when it did not answer.
    ``server_version`` is PostgreSQL's ``server_version``. ``error`` says why
    the database is down (never a DSN or password). ``pool`` is the pool's
    ``get_stats()`` (``{}`` while no pool is open) and ``breaker`` the
    breaker's ``snapshot()``, both taken after the probe.
    """

    database: str
    status: HealthStatus
    required: bool
    latency_ms: float | None
    server_version: str | None
    error: str | None
    pool: dict[str, Any]
    breaker: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "database": self.database,
            "status": self.status,
            "required": self.required,
            "latency_ms": self.latency_ms,
            "server_version": self.server_version,
            "error": self.error,
            "pool": dict(self.pool),
            "breaker": dict(self.breaker),
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The overall status, each database's :class:`DatabaseHealth` and when it was checked.

    ``checked_at`` is an ISO 8601 UTC timestamp (``2025-01-31T12:00:00.123+00:00``).
    """

    status: HealthStatus
    databases: dict[str, DatabaseHealth]
    checked_at: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy: ``json.dumps(report.to_dict())`` works."""
        return {
            "status": self.status,
            "checked_at": self.checked_at,
            "databases": {name: health.to_dict() for name, health in self.databases.items()},
        }


def database_status(answered: bool, breaker_state: str, pool: Mapping[str, Any]) -> HealthStatus:
    """One database's status from whether the probe answered, its breaker and pool stats."""
    if not answered:
        return "down"
    if breaker_state not in _HEALTHY_BREAKER_STATES or pool.get("waiting", 0) > 0:
        return "degraded"
    return "ok"


def overall_status(databases: Iterable[DatabaseHealth]) -> HealthStatus:
    """The report's status from its databases'.

    ``down`` if a required database is down; else ``degraded`` if any database
    is degraded or down; else ``ok``.
    """
    status: HealthStatus = "ok"
    for health in databases:
        if health.status == "down" and health.required:
            return "down"
        if health.status != "ok":
            status = "degraded"
    return status


class HealthChecker:
    """Checks the databases it is given; :meth:`check` returns a :class:`HealthReport`.

    ``slots`` and ``clients`` map database names (or :class:`Database`
    members) to the database's :class:`PoolSlot` and client; both must name
    the same databases. Settings come from ``config``
    (:meth:`PostgresConfig.get_health_config`). Holds no connection of its
    own: cheap to create per request.
    """

    __slots__ = ("_clients", "_config", "_secrets", "_slots")

    def __init__(
        self,
        config: PostgresConfig,
        slots: Mapping[str, PoolSlot] | Mapping[Database, PoolSlot],
        clients: Mapping[str, DatabaseClient] | Mapping[Database, DatabaseClient],
    ) -> None:
        parsed_slots = {Database.parse(name): slot for name, slot in slots.items()}
        parsed_clients = {Database.parse(name): client for name, client in clients.items()}
        if parsed_slots.keys() != parsed_clients.keys():
            raise ValueError(
                f"HealthChecker needs a slot and a client for each database; slots for "
                f"{sorted(parsed_slots)}, clients for {sorted(parsed_clients)}"
            )
        for database, slot in parsed_slots.items():
            if slot.database is not database:
                raise ValueError(
                    f"the {slot.database.value} slot was given for the {database.value} database"
                )
        # Enum order, so that reports list the databases the same way every time.
        order = [database for database in Database if database in parsed_slots]
        self._config = config
        self._slots = {database: parsed_slots[database] for database in order}
        self._clients = {database: parsed_clients[database] for database in order}
        self._secrets = secrets_of(config)

    @classmethod
    async def from_container(cls, container: _ContainerLike) -> HealthChecker:
        """A checker for every database of ``container`` (a ``DatabaseContainer``, or embedded).

        Uses the container's ``config``, ``<db>_slot`` and ``<db>_db``
        providers, overrides included (a faked client is probed as it is).
        """
        slots: dict[str, PoolSlot] = {}
        clients: dict[str, DatabaseClient] = {}
        for database in Database:
            slots[database.value] = await _provide(container, f"{database.value}_slot")
            clients[database.value] = await _provide(container, f"{database.value}_db")
        config: PostgresConfig = await _provide(container, "config")
        return cls(config, slots, clients)

    async def check(self) -> HealthReport:
        """Probe every database concurrently, each within its own health timeout.

        Never raises for a database being unreachable: that is what the
        report says. Cancelling the call cancels every probe.
        """
        results = await asyncio.gather(*(self._check_one(database) for database in self._slots))
        databases = {health.database: health for health in results}
        return HealthReport(
            status=overall_status(results),
            databases=databases,
            checked_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )

    async def _check_one(self, database: Database) -> DatabaseHealth:
        settings: HealthConfig = self._config.get_health_config(database)
        slot, client = self._slots[database], self._clients[database]
        version: str | None = None
        latency_ms: float | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            answer = await _within(settings.timeout, client.fetchval(PROBE_SQL))
            latency_ms = round((time.perf_counter() - started) * 1000, 3)
            version = None if answer is None else str(answer)
        except PoolTimeoutError as exc:
            error = describe_error(exc)
        except TimeoutError:
            var = env_var_name(SETTINGS_CLASSES[database], "health_timeout_sec")
            error = f"no answer within {settings.timeout:g}s ({var})"
        except Exception as exc:
            error = describe_error(exc)
        pool = slot.pool
        stats: dict[str, Any] = dict(pool.get_stats()) if pool is not None else {}
        breaker: dict[str, Any] = dict(slot.breaker.snapshot())
        return DatabaseHealth(
            database=database.value,
            status=database_status(error is None, str(breaker["state"]), stats),
            required=settings.required,
            latency_ms=latency_ms,
            server_version=version,
            error=None if error is None else redact_secrets(error, self._secrets),
            pool=stats,
            breaker=breaker,
        )


#: Probes given up on that are still finishing their clean-up (kept so they are not collected).
_abandoned: set[asyncio.Task[Any]] = set()


def _forget_abandoned(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the probe was already reported as failed


async def _within(timeout: float, probe: Coroutine[Any, Any, _T]) -> _T:
    """``await probe``, but return (raise ``TimeoutError``) after ``timeout`` s whatever happens.

    ``asyncio.timeout`` alone does not bound the call: a query cancelled on a
    silent network waits in asyncpg's release for its cancel request, up to
    the connect timeout. The probe runs as a task that is cancelled and left
    to finish its clean-up on its own.
    """
    task = asyncio.ensure_future(probe)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget_abandoned)
    if not done:
        raise TimeoutError
    return task.result()


async def check_health(container: _ContainerLike) -> HealthReport:
    """Check every database of ``container`` (a ``DatabaseContainer``, or one embedded).

    Probes run concurrently, each bounded by its database's
    ``PG_[<DB>_]HEALTH_TIMEOUT_SEC``; the whole call takes about as long as
    the slowest probe. Raises ``ConfigurationError`` only when the settings
    cannot be read.
    """
    checker = await HealthChecker.from_container(container)
    return await checker.check()


def describe_error(exc: BaseException) -> str:
    """Why a database is down, in one line: our messages as they are, others with their type."""
    if isinstance(exc, DatabaseUnavailableError | PoolClosedError | PoolTimeoutError):
        text = str(exc)
    else:
        detail = str(exc)
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return " ".join(text.split())


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def secrets_of(config: PostgresConfig) -> list[str]:
    """Every DSN and password in ``config``, in the forms they could appear in, longest first."""
    found: set[str] = set()
    for database in Database:
        try:
            dsn = config.get_dsn(database)
        except ConfigurationError:
            continue
        found.add(dsn)
        try:
            parts = urlsplit(dsn)
            passwords = [parts.password or ""]
            passwords += [value for key, value in parse_qsl(parts.query) if key == "password"]
        except ValueError:
            continue
        for password in passwords:
            if password:
                found.update({password, unquote(password), quote(password, safe="")})
    return sorted((secret for secret in found if secret), key=len, reverse=True)


async def _provide(container: _ContainerLike, name: str) -> Any:
    provider = getattr(container, name, None)
    if not isinstance(provider, providers.Provider):
        raise TypeError(
            f"{type(container).__name__} has no {name!r} provider: health checks need a "
            "wellwon_db.DatabaseContainer (or one embedded with providers.Container)"
        )
    value = provider()
    if inspect.isawaitable(value):
        value = await value
    return value
