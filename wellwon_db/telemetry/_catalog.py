"""Every metric wellwon_db emits, defined once: name, kind, unit, description, attributes.

The instruments are made from these definitions (``_instruments.py``) and
the Grafana dashboard and Prometheus alert rules refer to them by the same
objects (``wellwon_db.cli._dashboard`` and ``_alert_rules``), so a renamed metric changes both.
:meth:`Metric.prometheus` gives the name the OpenTelemetry Prometheus
exporter gives it (dots to underscores; the unit as a suffix: ``s`` to
``_seconds``, ``By`` to ``_bytes``, annotations such as ``{connection}``
dropped; ``_total`` after counters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["ALL", "DURATION_BUCKETS", "SCHEMA_URL", "SEMCONV_VERSION", "Metric"]

#: The OpenTelemetry semantic conventions version the telemetry follows.
SEMCONV_VERSION: Final = "1.44.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

#: The conventions' advisory buckets for database durations (seconds).
DURATION_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

Kind = Literal["histogram", "counter", "gauge", "updown"]

_UNIT_SUFFIXES: Final = {"s": "seconds", "By": "bytes", "1": ""}


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: its OpenTelemetry name, kind, unit, description and attribute keys."""

    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()

    @property
    def prometheus(self) -> str:
        """The base name in Prometheus (histograms add ``_bucket``, ``_sum``, ``_count``)."""
        base = self.name.replace(".", "_")
        suffix = "" if self.unit.startswith("{") else _UNIT_SUFFIXES.get(self.unit, self.unit)
        if suffix and not base.endswith(f"_{suffix}"):
            base = f"{base}_{suffix}"
        return f"{base}_total" if self.kind == "counter" else base

    def label(self, attribute: str) -> str:
        """The Prometheus label of one of its attributes (``wellwon.db.database`` ->
        ``wellwon_db_database``)."""
        if attribute not in self.attributes:
            raise KeyError(f"{self.name} has no attribute {attribute!r}")
        return attribute.replace(".", "_")


_OPERATION: Final = (
    "db.system.name",
    "db.namespace",
    "db.query.summary",
    "db.operation.name",
    "error.type",
    "db.response.status_code",
    "server.address",
    "server.port",
    "wellwon.db.database",
)
_POOL: Final = ("db.client.connection.pool.name", "wellwon.db.database")

OPERATION_DURATION: Final = Metric(
    "db.client.operation.duration",
    "histogram",
    "s",
    "Duration of database client operations.",
    _OPERATION,
)
CONNECTION_CREATE_TIME: Final = Metric(
    "db.client.connection.create_time",
    "histogram",
    "s",
    "The time it took to create a new connection.",
    _POOL,
)
CONNECTION_WAIT_TIME: Final = Metric(
    "db.client.connection.wait_time",
    "histogram",
    "s",
    "The time it took to obtain an open connection from the pool.",
    _POOL,
)
CONNECTION_USE_TIME: Final = Metric(
    "db.client.connection.use_time",
    "histogram",
    "s",
    "The time between borrowing a connection and returning it to the pool.",
    _POOL,
)
CONNECTION_COUNT: Final = Metric(
    "db.client.connection.count",
    "updown",
    "{connection}",
    "The number of connections that are currently in the state described by state.",
    (*_POOL, "db.client.connection.state"),
)
CONNECTION_MAX: Final = Metric(
    "db.client.connection.max",
    "updown",
    "{connection}",
    "The maximum number of open connections allowed.",
    _POOL,
)
CONNECTION_IDLE_MAX: Final = Metric(
    "db.client.connection.idle.max",
    "updown",
    "{connection}",
    "The maximum number of idle open connections allowed.",
    _POOL,
)
CONNECTION_IDLE_MIN: Final = Metric(
    "db.client.connection.idle.min",
    "updown",
    "{connection}",
    "The minimum number of idle open connections allowed.",
    _POOL,
)
PENDING_REQUESTS: Final = Metric(
    "db.client.connection.pending_requests",
    "updown",
    "{request}",
    "The number of current pending requests for an open connection.",
    _POOL,
)
CONNECTION_TIMEOUTS: Final = Metric(
    "db.client.connection.timeouts",
    "counter",
    "{timeout}",
    "The number of connection timeouts that have occurred trying to obtain a connection "
    "from the pool.",
    _POOL,
)
POOL_EXHAUSTED: Final = Metric(
    "wellwon.db.client.connection.pool.exhausted",
    "counter",
    "{episode}",
    "Episodes of sustained pool pressure (one per episode, when it is warned of).",
    _POOL,
)
REFUSED: Final = Metric(
    "wellwon.db.client.refused",
    "counter",
    "{call}",
    "Calls refused without reaching the database (breaker open, pool closed), by reason; "
    "not database operations, so not in db.client.operation.duration.",
    ("wellwon.db.database", "wellwon.db.refused.reason"),
)
SLOW_QUERIES: Final = Metric(
    "wellwon.db.client.slow_queries",
    "counter",
    "{operation}",
    "Operations at least as slow as PG_[<DB>_]LOG_SLOW_QUERY_SEC (also logged).",
    ("wellwon.db.database", "db.query.summary"),
)
RETRIES: Final = Metric(
    "wellwon.db.client.retries",
    "counter",
    "{retry}",
    "Attempts made again after a retryable failure.",
    ("wellwon.db.database",),
)
BREAKER_STATE: Final = Metric(
    "wellwon.db.breaker.state",
    "gauge",
    "1",
    "1 for the breaker's current state, 0 for the others.",
    ("wellwon.db.database", "wellwon.db.breaker.state"),
)
BREAKER_TRANSITIONS: Final = Metric(
    "wellwon.db.breaker.transitions",
    "counter",
    "{transition}",
    "Circuit-breaker state changes, by old and new state.",
    ("wellwon.db.database", "wellwon.db.breaker.from", "wellwon.db.breaker.to"),
)
REPLICA_READS: Final = Metric(
    "wellwon.db.replica.reads",
    "counter",
    "{read}",
    "Reads of a replica database, by the server that answered (replica or primary) and why.",
    ("wellwon.db.database", "wellwon.db.replica.target", "wellwon.db.replica.reason"),
)
REPLICA_LAG: Final = Metric(
    "wellwon.db.replica.lag",
    "gauge",
    "s",
    "How far each replica is behind its primary, from WAL positions.",
    ("wellwon.db.database", "server.address", "wellwon.db.replica.state"),
)
REPLICA_LAG_BYTES: Final = Metric(
    "wellwon.db.replica.lag_bytes",
    "gauge",
    "By",
    "WAL bytes the primary has written that each replica has not replayed.",
    ("wellwon.db.database", "server.address", "wellwon.db.replica.state"),
)
CACHE_EVENTS: Final = Metric(
    "wellwon.db.cache.events",
    "counter",
    "{event}",
    "Result-cache events since the cache started, by kind: hits, misses, stores, bypasses "
    "(listener not listening), stale_served (during an outage), evictions, invalidations.",
    ("wellwon.db.database", "wellwon.db.cache.event"),
)
CACHE_INVALIDATION_LAG: Final = Metric(
    "wellwon.db.cache.invalidation.lag",
    "histogram",
    "s",
    "Time from a table change's statement to this process dropping its cached results.",
    ("wellwon.db.database",),
)
FANOUT_SHARDS: Final = Metric(
    "wellwon.db.shards.fanout.shards",
    "counter",
    "{shard}",
    "Physical shards asked by fan-outs, by outcome: answered, failed (an error) or timed_out "
    "(no answer within the fan-out's timeout); shards asked is their sum.",
    ("wellwon.db.database", "wellwon.db.shards.outcome"),
)
FANOUT_DURATION: Final = Metric(
    "wellwon.db.shards.fanout.duration",
    "histogram",
    "s",
    "Duration of fan-outs over the shards, by whether every shard answered.",
    ("wellwon.db.shards.complete",),
)

#: Every metric, in the order the docs list them.
ALL: Final = (
    OPERATION_DURATION,
    CONNECTION_CREATE_TIME,
    CONNECTION_WAIT_TIME,
    CONNECTION_USE_TIME,
    CONNECTION_COUNT,
    CONNECTION_MAX,
    CONNECTION_IDLE_MAX,
    CONNECTION_IDLE_MIN,
    PENDING_REQUESTS,
    CONNECTION_TIMEOUTS,
    POOL_EXHAUSTED,
    REFUSED,
    SLOW_QUERIES,
    RETRIES,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    REPLICA_READS,
    REPLICA_LAG,
    REPLICA_LAG_BYTES,
    CACHE_EVENTS,
    CACHE_INVALIDATION_LAG,
    FANOUT_SHARDS,
    FANOUT_DURATION,
)
