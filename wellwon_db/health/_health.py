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

Each database's ``tls`` says what its connections ask for (``sslmode``,
where that was set, what is verified of the server's certificate) and, after
a probe that answered, whether the session that answered is encrypted: the
server's own view, from ``pg_stat_ssl`` (behind PgBouncer, that is
PgBouncer's link to the server).

Reports are JSON-serialisable through ``to_dict()``; no DSN or password ever
appears in them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from wellwon_db.client._client import DatabaseClient
from wellwon_db.client._readonly import ReadOnlyClient
from wellwon_db.client._replicas import ReplicaSet
from wellwon_db.client._slot import PoolSlot
from wellwon_db.config._config import PostgresConfig
from wellwon_db.config._credentials import database_tls
from wellwon_db.config._policies import HealthConfig
from wellwon_db.config._registry import DatabaseName, database_name
from wellwon_db.config._settings import env_var_name, split_dsns
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
    "database_status",
    "describe_error",
    "overall_status",
    "redact_secrets",
    "secrets_of",
]

#: ``"ok"``, ``"degraded"`` or ``"down"``.
HealthStatus: TypeAlias = Literal["ok", "degraded", "down"]

_T = TypeVar("_T")

#: The probe: cheap, read-only, and its answer is worth reporting.
PROBE_SQL = "SHOW server_version"

#: Whether this session is encrypted, as the server sees it.
TLS_SQL = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"

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
    breaker's ``snapshot()``, both taken after the probe. For a replica
    database, ``replicas`` lists each replica (address, state, lag in seconds
    and bytes, its pool and breaker; empty when none is configured and its
    reads go to the primary), and ``pool``/``breaker`` are empty. ``cache``
    describes its result cache (listener state, entries, counts) when it has one.
    ``tls`` is ``{"sslmode", "sslmode_from", "verification" ("full": CA and
    host name, "ca", "none"), "encrypted", "protocol"}``; the last two are
    ``None`` when unknown (the probe failed, or a fake answered).
    """

    database: str
    status: HealthStatus
    required: bool
    latency_ms: float | None
    server_version: str | None
    error: str | None
    pool: dict[str, Any]
    breaker: dict[str, Any]
    replicas: list[dict[str, Any]] | None = None
    cache: dict[str, Any] | None = None
    tls: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "database": self.database,
            "status": self.status,
            "required": self.required,
            "latency_ms": self.latency_ms,
            "server_version": self.server_version,
            "error": self.error,
            "tls": None if self.tls is None else dict(self.tls),
            "pool": dict(self.pool),
            "breaker": dict(self.breaker),
            **({} if self.replicas is None else {"replicas": [dict(r) for r in self.replicas]}),
            **({} if self.cache is None else {"cache": dict(self.cache)}),
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The overall status, each database's :class:`DatabaseHealth` and when it was checked.

    ``checked_at`` is an ISO 8601 UTC timestamp (``2025-01-31T12:00:00.123+00:00``).
    ``unconfigured`` maps each optional database that runs without a DSN to
    the variable that would turn it on; such databases are not checked and do
    not affect the status.
    """

    status: HealthStatus
    databases: dict[str, DatabaseHealth]
    checked_at: str
    unconfigured: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy: ``json.dumps(report.to_dict())`` works."""
        return {
            "status": self.status,
            "checked_at": self.checked_at,
            "databases": {name: health.to_dict() for name, health in self.databases.items()},
            "unconfigured": dict(self.unconfigured),
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

    ``slots`` and ``clients`` map database names to the database's
    :class:`PoolSlot` and client; both must name the same databases, which
    reports list in the order given. Settings come from ``config``
    (:meth:`PostgresConfig.get_health_config`). Holds no connection of its
    own: cheap to create per request. (``check_health(container)`` and a
    container's ``health`` provider build one for every database of a
    container.)
    """

    __slots__ = ("_clients", "_config", "_secrets", "_slots")

    def __init__(
        self,
        config: PostgresConfig,
        slots: Mapping[str, PoolSlot | ReplicaSet],
        clients: Mapping[str, DatabaseClient | ReadOnlyClient],
    ) -> None:
        parsed_slots = {database_name(name): slot for name, slot in slots.items()}
        parsed_clients = {database_name(name): client for name, client in clients.items()}
        if parsed_slots.keys() != parsed_clients.keys():
            raise ValueError(
                f"HealthChecker needs a slot and a client for each database; slots for "
                f"{sorted(map(str, parsed_slots))}, clients for {sorted(map(str, parsed_clients))}"
            )
        for database, slot in parsed_slots.items():
            if slot.database != database:
                raise ValueError(f"the {slot.database} slot was given for the {database} database")
        self._config = config
        self._slots: dict[DatabaseName, PoolSlot | ReplicaSet] = parsed_slots
        self._clients: dict[DatabaseName, DatabaseClient | ReadOnlyClient] = parsed_clients
        self._secrets = secrets_of(config)

    async def check(self) -> HealthReport:
        """Probe every configured database concurrently, each within its own health timeout.

        Never raises for a database being unreachable: that is what the
        report says. Cancelling the call cancels every probe.
        """
        unconfigured = {
            str(database): missing.env_var or ""
            for database, slot in self._slots.items()
            if (missing := _unconfigured(slot)) is not None
        }
        checked = [database for database in self._slots if str(database) not in unconfigured]
        results = await asyncio.gather(*(self._check_one(database) for database in checked))
        databases = {health.database: health for health in results}
        return HealthReport(
            status=overall_status(results),
            databases=databases,
            checked_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            unconfigured=unconfigured,
        )

    async def _check_one(self, database: DatabaseName) -> DatabaseHealth:
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
            var = env_var_name(type(self._config.settings_for(database)), "health_timeout_sec")
            error = f"no answer within {settings.timeout:g}s ({var})"
        except Exception as exc:
            error = describe_error(exc)
        error = None if error is None else redact_secrets(error, self._secrets)
        tls = await self._tls(database, slot, client, started + settings.timeout, error is None)
        if isinstance(slot, ReplicaSet):
            return dataclasses.replace(
                _replica_health(slot, settings, latency_ms, version, error), tls=tls
            )
        pool = slot.pool
        stats: dict[str, Any] = dict(pool.get_stats()) if pool is not None else {}
        breaker: dict[str, Any] = dict(slot.breaker.snapshot())
        return DatabaseHealth(
            database=str(database),
            status=database_status(error is None, breaker["state"], stats),
            required=settings.required,
            latency_ms=latency_ms,
            server_version=version,
            error=error,
            pool=dict(stats),
            breaker=dict(breaker),
            cache=None if slot.cache is None else slot.cache.describe(),
            tls=tls,
        )

    async def _tls(
        self,
        database: DatabaseName,
        slot: PoolSlot | ReplicaSet,
        client: DatabaseClient | ReadOnlyClient,
        deadline: float,
        answered: bool,
    ) -> dict[str, Any] | None:
        """What TLS ``database`` asks for, and whether the server sees this session encrypted."""
        settings = self._config.settings_for(database)
        if settings.dsn is None:
            return None
        mode = database_tls(settings, split_dsns(settings.dsn.get_secret_value())[0])
        tls: dict[str, Any] = {
            "sslmode": mode.sslmode,
            "sslmode_from": mode.origin,
            "verification": mode.verification,
            "encrypted": None,
            "protocol": None,
        }
        if isinstance(slot, PoolSlot):
            real = slot.pool is not None
        else:
            real = bool(slot.endpoints) or slot.primary.pool is not None
        if answered and real:  # a fake client knows nothing of pg_stat_ssl
            try:
                row = await _within(
                    max(deadline - time.perf_counter(), 0.0), client.fetchrow(TLS_SQL)
                )
            except Exception:
                row = None  # unknown, which is what the report then says
            if row is not None:
                tls["encrypted"], tls["protocol"] = bool(row["ssl"]), row["version"]
        return tls


def _unconfigured(slot: PoolSlot | ReplicaSet) -> ConfigurationError | None:
    """Why ``slot``'s database is not checked: it is off, or a replica database has no
    replica configured (its reads go to the primary, which has its own check)."""
    if isinstance(slot, ReplicaSet):
        return slot.unconfigured
    return slot.unconfigured


def _replica_health(
    replicas: ReplicaSet,
    settings: HealthConfig,
    latency_ms: float | None,
    version: str | None,
    error: str | None,
) -> DatabaseHealth:
    """A replica database: ``ok`` when its reads are served as configured (by a replica that
    keeps up, or by the primary when it has none), ``degraded`` when replicas are configured
    but none can take reads (the primary serves them), ``down`` when the probe failed."""
    described = []
    for endpoint in replicas.endpoints:
        entry: dict[str, Any] = endpoint.describe()
        pool = endpoint.slot.pool
        entry["pool"] = dict(pool.get_stats()) if pool is not None else {}
        entry["breaker"] = dict(endpoint.slot.breaker.snapshot())
        described.append(entry)
    if error is not None:
        status: HealthStatus = "down"
    elif replicas.endpoints and not replicas.usable:
        status = "degraded"
    else:
        status = "ok"
    return DatabaseHealth(
        database=str(replicas.database),
        status=status,
        required=settings.required,
        latency_ms=latency_ms,
        server_version=version,
        error=error,
        pool={},
        breaker={},
        replicas=described,
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
    for database in config.databases:
        try:
            value = config.get_dsn(database)
        except ConfigurationError:
            continue
        found.add(value)
        for dsn in split_dsns(value):  # a replica database may list several
            found.add(dsn)
            try:
                parts = urlsplit(dsn)
                passwords = [parts.password or ""]
                passwords += [v for key, v in parse_qsl(parts.query) if key == "password"]
            except ValueError:
                continue
            for password in passwords:
                if password:
                    found.update({password, unquote(password), quote(password, safe="")})
    return sorted((secret for secret in found if secret), key=len, reverse=True)
