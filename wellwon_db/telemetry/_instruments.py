"""The tracer, the meter and every instrument, made from the catalog; what they observe.

Synchronous instruments are recorded by the ``record_*`` functions and by
``PoolTelemetry``; observable ones read the pools, breakers, replica sets
and caches registered here (weakly: a collected object stops being observed)
through small protocols, so telemetry sits below every layer it observes.
With no SDK installed every instrument is the API's no-op.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from wellwon_db._version import __version__
from wellwon_db.telemetry import _catalog as catalog
from wellwon_db.telemetry._catalog import DURATION_BUCKETS, SCHEMA_URL, Metric

__all__ = [
    "ObservedBreaker",
    "ObservedCache",
    "ObservedPool",
    "ObservedReplicaSet",
    "ObservedTransition",
    "cache_lag",
    "create_time",
    "exhausted",
    "meter",
    "operation_duration",
    "record_breaker_transition",
    "record_fan_out",
    "record_invalidation_lag",
    "record_refused",
    "record_retry",
    "record_route",
    "record_slow_query",
    "register_breaker",
    "register_cache",
    "register_pool",
    "register_replica_set",
    "tracer",
    "unregister_breaker",
    "unregister_cache",
    "unregister_pool",
    "unregister_replica_set",
    "use_time",
    "wait_time",
]

tracer = trace.get_tracer("wellwon_db", __version__, schema_url=SCHEMA_URL)
meter = metrics.get_meter("wellwon_db", __version__, schema_url=SCHEMA_URL)


class _State(Protocol):
    @property
    def value(self) -> str: ...


class ObservedPool(Protocol):
    """What the connection instruments read of a pool."""

    @property
    def telemetry(self) -> Any: ...

    def get_stats(self) -> Any: ...


class ObservedBreaker(Protocol):
    """What the breaker-state gauge reads of a circuit breaker."""

    @property
    def database(self) -> str: ...

    @property
    def state(self) -> _State: ...


class ObservedTransition(Protocol):
    """What the transitions counter reads of one breaker state change."""

    @property
    def database(self) -> str: ...

    @property
    def old(self) -> _State: ...

    @property
    def new(self) -> _State: ...


class ObservedReplicaSet(Protocol):
    """What the lag gauges read of a replica database (endpoints with address, state, lag)."""

    @property
    def database(self) -> Any: ...

    @property
    def endpoints(self) -> list[Any]: ...


class ObservedCache(Protocol):
    """What the cache counters read of a database's result cache."""

    @property
    def database(self) -> str: ...

    def events(self) -> dict[str, int]: ...


def _histogram(metric: Metric) -> Any:
    return meter.create_histogram(
        metric.name,
        unit=metric.unit,
        description=metric.description,
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )


def _counter(metric: Metric) -> Any:
    return meter.create_counter(metric.name, unit=metric.unit, description=metric.description)


operation_duration = _histogram(catalog.OPERATION_DURATION)
create_time = _histogram(catalog.CONNECTION_CREATE_TIME)
wait_time = _histogram(catalog.CONNECTION_WAIT_TIME)
use_time = _histogram(catalog.CONNECTION_USE_TIME)
cache_lag = _histogram(catalog.CACHE_INVALIDATION_LAG)
exhausted = _counter(catalog.POOL_EXHAUSTED)
_refused = _counter(catalog.REFUSED)
_slow = _counter(catalog.SLOW_QUERIES)
_retries = _counter(catalog.RETRIES)
_transitions = _counter(catalog.BREAKER_TRANSITIONS)
_routes = _counter(catalog.REPLICA_READS)
_fanout_shards = _counter(catalog.FANOUT_SHARDS)
_fanout_duration = _histogram(catalog.FANOUT_DURATION)

_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_breakers: weakref.WeakSet[Any] = weakref.WeakSet()
_replica_sets: weakref.WeakSet[Any] = weakref.WeakSet()
_caches: weakref.WeakSet[Any] = weakref.WeakSet()

#: Attribute dictionaries by their values, so that a hot path allocates none.
_attributes: dict[tuple[str, ...], dict[str, str]] = {}


def _cached(*pairs: str) -> dict[str, str]:
    attributes = _attributes.get(pairs)
    if attributes is None:
        attributes = dict(zip(pairs[::2], pairs[1::2], strict=True))
        if len(_attributes) < 4096:
            _attributes[pairs] = attributes
    return attributes


# -- registration ----------------------------------------------------------------


def register_pool(pool: ObservedPool) -> None:
    """Make ``pool``'s stats visible to the connection instruments."""
    _pools.add(pool)


def unregister_pool(pool: ObservedPool) -> None:
    """Stop observing ``pool``."""
    _pools.discard(pool)


def register_breaker(breaker: ObservedBreaker) -> None:
    """Make ``breaker``'s state visible to the breaker-state gauge (while its pool is open)."""
    _breakers.add(breaker)


def unregister_breaker(breaker: ObservedBreaker) -> None:
    """Stop observing ``breaker``."""
    _breakers.discard(breaker)


def register_replica_set(replicas: ObservedReplicaSet) -> None:
    """Make ``replicas``' lag visible to the lag gauges (while it is open)."""
    _replica_sets.add(replicas)


def unregister_replica_set(replicas: ObservedReplicaSet) -> None:
    """Stop observing ``replicas``."""
    _replica_sets.discard(replicas)


def register_cache(cache: ObservedCache) -> None:
    """Count ``cache``'s events (while it runs)."""
    _caches.add(cache)


def unregister_cache(cache: ObservedCache) -> None:
    """Stop counting ``cache``'s events."""
    _caches.discard(cache)


# -- synchronous records ------------------------------------------------------------


def record_retry(database: str) -> None:
    """One more attempt is about to be made on ``database``."""
    _retries.add(1, _cached("wellwon.db.database", str(database)))


def record_refused(database: str, reason: str) -> None:
    """A call to ``database`` was refused without reaching it (``breaker_open``, ``pool_closed``,
    ``unconfigured``): counted here, never as a database operation."""
    _refused.add(
        1, _cached("wellwon.db.database", str(database), "wellwon.db.refused.reason", reason)
    )


def record_slow_query(database: str, summary: str) -> None:
    """An operation on ``database`` was at least as slow as its slow-query threshold."""
    _slow.add(1, _cached("wellwon.db.database", str(database), "db.query.summary", summary))


def record_breaker_transition(transition: ObservedTransition) -> None:
    """Breaker listener: count the state change."""
    _transitions.add(
        1,
        _cached(
            "wellwon.db.database",
            str(transition.database),
            "wellwon.db.breaker.from",
            transition.old.value,
            "wellwon.db.breaker.to",
            transition.new.value,
        ),
    )


def record_route(database: str, target: str, reason: str) -> None:
    """One read of replica database ``database`` went to ``target`` for ``reason``."""
    _routes.add(
        1,
        _cached(
            "wellwon.db.database",
            str(database),
            "wellwon.db.replica.target",
            target,
            "wellwon.db.replica.reason",
            reason,
        ),
    )


def record_invalidation_lag(database: str, seconds: float) -> None:
    """A change notification reached this process ``seconds`` after its statement."""
    cache_lag.record(seconds, _cached("wellwon.db.database", str(database)))


def record_fan_out(outcomes: Iterable[tuple[str, str]], seconds: float, complete: bool) -> None:
    """A fan-out ended: ``(database, outcome)`` per shard asked, its duration, completeness."""
    for database, outcome in outcomes:
        _fanout_shards.add(
            1, _cached("wellwon.db.database", database, "wellwon.db.shards.outcome", outcome)
        )
    _fanout_duration.record(
        seconds, _cached("wellwon.db.shards.complete", "true" if complete else "false")
    )


# -- observable instruments ---------------------------------------------------------


def _stats() -> Iterator[tuple[dict[str, Any], Any]]:
    for pool in list(_pools):
        yield pool.telemetry.pool_attributes, pool.get_stats()


def _connection_count(options: CallbackOptions) -> Iterable[Observation]:
    for attributes, stats in _stats():
        yield Observation(stats["idle"], {**attributes, "db.client.connection.state": "idle"})
        yield Observation(stats["in_use"], {**attributes, "db.client.connection.state": "used"})


def _stat(key: str) -> Any:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        for attributes, stats in _stats():
            yield Observation(stats[key], attributes)

    return callback


_BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")


def _breaker_state(options: CallbackOptions) -> Iterable[Observation]:
    for breaker in list(_breakers):
        state = breaker.state.value
        for candidate in _BREAKER_STATES:
            yield Observation(
                1 if candidate == state else 0,
                _cached(
                    "wellwon.db.database",
                    str(breaker.database),
                    "wellwon.db.breaker.state",
                    candidate,
                ),
            )


def _replica_observations(attribute: str) -> Any:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        for replicas in list(_replica_sets):
            for endpoint in list(replicas.endpoints):
                value = getattr(endpoint, attribute)
                if value is not None:
                    yield Observation(
                        value,
                        {
                            "wellwon.db.database": str(replicas.database),
                            "server.address": endpoint.address,
                            "wellwon.db.replica.state": endpoint.state,
                        },
                    )

    return callback


def _cache_events(options: CallbackOptions) -> Iterable[Observation]:
    for cache in list(_caches):
        for event, count in cache.events().items():
            yield Observation(
                count,
                _cached(
                    "wellwon.db.database", str(cache.database), "wellwon.db.cache.event", event
                ),
            )


def _observe(metric: Metric, callback: Any) -> None:
    create = {
        "updown": meter.create_observable_up_down_counter,
        "counter": meter.create_observable_counter,
        "gauge": meter.create_observable_gauge,
    }[metric.kind]
    create(metric.name, callbacks=[callback], unit=metric.unit, description=metric.description)


_observe(catalog.CONNECTION_COUNT, _connection_count)
_observe(catalog.CONNECTION_MAX, _stat("max_size"))
_observe(catalog.CONNECTION_IDLE_MAX, _stat("max_size"))
_observe(catalog.CONNECTION_IDLE_MIN, _stat("min_size"))
_observe(catalog.PENDING_REQUESTS, _stat("waiting"))
_observe(catalog.CONNECTION_TIMEOUTS, _stat("timeouts"))
_observe(catalog.BREAKER_STATE, _breaker_state)
_observe(catalog.REPLICA_LAG, _replica_observations("lag_sec"))
_observe(catalog.REPLICA_LAG_BYTES, _replica_observations("lag_bytes"))
_observe(catalog.CACHE_EVENTS, _cache_events)
