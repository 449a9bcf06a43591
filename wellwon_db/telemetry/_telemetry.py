"""Traces, metrics and the slow-query log, through the OpenTelemetry API only.

Spans follow the stable database semantic conventions: one CLIENT span per
operation named ``"{db.operation.name} {db.namespace}"`` with
``db.system.name``, ``db.namespace``, ``db.operation.name``,
``db.query.text`` (literals replaced by ``?``; parameter values are never
recorded), ``server.address``/``server.port``, ``db.response.status_code``
and ``error.type`` on failure, and ``wellwon.db.database`` (main,
reference). ``OTEL_SEMCONV_STABILITY_OPT_IN=database/dup`` adds the
pre-1.25 names (``db.system``, ``db.name``, ``db.statement``,
``db.operation``, ``net.peer.*``) for backends that still expect them.

Metrics: ``db.client.operation.duration``, the ``db.client.connection.*``
family (read from each pool's ``get_stats()`` through observable
instruments), breaker state and transitions, retries and pool-exhaustion
episodes.

With no SDK installed, a call costs a tracer-provider check and a no-op
histogram record: see ``docs/performance.md``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import asyncpg
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import ProxyTracerProvider, Span, SpanKind, Status, StatusCode

from wellwon_db._version import __version__
from wellwon_db.telemetry._stats import PoolCount, PoolStats

__all__ = [
    "ObservedBreaker",
    "ObservedPool",
    "PoolTelemetry",
    "describe_query",
    "record_breaker_transition",
    "record_retry",
    "register_breaker",
    "register_pool",
    "unregister_breaker",
    "unregister_pool",
]


class ObservedPool(Protocol):
    """What the observable instruments read of a pool (telemetry sits below the pool)."""

    @property
    def telemetry(self) -> PoolTelemetry: ...

    def get_stats(self) -> PoolStats: ...


class _State(Protocol):
    @property
    def value(self) -> str: ...


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


slow_logger = logging.getLogger("wellwon_db.slow")

_tracer = trace.get_tracer("wellwon_db", __version__)
_meter = metrics.get_meter("wellwon_db", __version__)

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
_operation_duration = _meter.create_histogram(
    "db.client.operation.duration",
    unit="s",
    description="Duration of database client operations.",
    explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
)
_create_time = _meter.create_histogram(
    "db.client.connection.create_time",
    unit="s",
    description="The time it took to create a new connection.",
    explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
)
_wait_time = _meter.create_histogram(
    "db.client.connection.wait_time",
    unit="s",
    description="The time it took to obtain an open connection from the pool.",
    explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
)
_use_time = _meter.create_histogram(
    "db.client.connection.use_time",
    unit="s",
    description="The time between borrowing a connection and returning it to the pool.",
    explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
)
_breaker_transitions = _meter.create_counter(
    "wellwon.db.breaker.transitions",
    unit="{transition}",
    description="Circuit-breaker state changes, by old and new state.",
)
_retries = _meter.create_counter(
    "wellwon.db.client.retries",
    unit="{retry}",
    description="Attempts made again after a retryable failure.",
)
_exhaustion = _meter.create_counter(
    "wellwon.db.client.connection.pool.exhausted",
    unit="{episode}",
    description="Episodes of sustained pool pressure (one per episode, when it is warned of).",
)


def _tracing_off() -> bool:
    """True while no tracer provider is set: no span objects are made at all."""
    return isinstance(trace.get_tracer_provider(), ProxyTracerProvider)


def _fast_tracing_check() -> bool:
    """``_tracing_off()`` without an environment lookup per call, where the API allows.

    ``trace.get_tracer_provider()`` looks up an environment variable on every
    call while no provider is set (a few µs per query). The API keeps the
    provider in a module global that is set once and never unset; when that
    global exists and no provider is configured through the environment,
    reading it gives the same answer. Decided at the first call (after
    start-up code such as ``load_dotenv()`` ran), not at import.
    """
    global _tracing_off_fast
    if hasattr(trace, "_TRACER_PROVIDER") and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ:

        def tracing_off() -> bool:
            return trace._TRACER_PROVIDER is None

        _tracing_off_fast = tracing_off
    else:
        _tracing_off_fast = _tracing_off
    return _tracing_off_fast()


#: The per-call check; replaces itself with the right one at its first call.
_tracing_off_fast = _fast_tracing_check

#: Pools alive in this process, read by the observable instruments.
_pools: weakref.WeakSet[ObservedPool] = weakref.WeakSet()
#: Breakers alive in this process, read by the breaker-state gauge.
_breakers: weakref.WeakSet[ObservedBreaker] = weakref.WeakSet()

_LITERALS = re.compile(
    r"'(?:[^']|'')*'"  # string literals
    r"|\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$"  # dollar-quoted strings
    r"|(?<![\w$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b",  # numbers, not $1 or t1
    re.DOTALL,
)
_FIRST_WORD = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL)


@functools.lru_cache(maxsize=4096)
def describe_query(query: str) -> tuple[str, str]:
    """``(operation name, text with literals replaced by ?)`` of ``query``. Cached."""
    match = _FIRST_WORD.match(query)
    operation = match.group(1).upper() if match else "QUERY"
    return operation, _LITERALS.sub("?", query)


def _semconv_dup() -> bool:
    values = {v.strip() for v in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
    return "database/dup" in values


def _error_type(exc: BaseException) -> tuple[str, str | None]:
    """``(error.type, db.response.status_code)`` for ``exc``."""
    if isinstance(exc, asyncpg.PostgresError):
        code: str | None = exc.sqlstate
        return code or type(exc).__qualname__, code
    if isinstance(exc, TimeoutError) and type(exc) is TimeoutError:
        return "timeout", None
    return f"{type(exc).__module__}.{type(exc).__qualname__}", None


class PoolTelemetry:
    """Instrumentation of one database's pool and calls.

    Attribute sets are built once; a call with tracing off allocates nothing
    here but the duration measurement.
    """

    __slots__ = (
        "_dup",
        "_op_attributes",
        "_pool_attributes",
        "_span_attributes",
        "database",
        "namespace",
        "slow_query",
    )

    def __init__(
        self,
        database: str,
        *,
        host: str | None,
        port: int | None,
        namespace: str | None,
        pool_name: str,
        slow_query: float = 1.0,
    ) -> None:
        self.database = database
        self.namespace = namespace or database
        self.slow_query = slow_query
        self._dup = _semconv_dup()
        base: dict[str, Any] = {"db.system.name": "postgresql", "wellwon.db.database": database}
        if namespace:
            base["db.namespace"] = namespace
        if host:
            base["server.address"] = host
        if port:
            base["server.port"] = port
        self._span_attributes = base
        self._op_attributes: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}
        self._pool_attributes = {
            "db.client.connection.pool.name": pool_name,
            "wellwon.db.database": database,
        }

    @property
    def pool_attributes(self) -> dict[str, Any]:
        """The attributes of this pool's connection metrics."""
        return self._pool_attributes

    # -- operations ----------------------------------------------------------

    def start(self, query: str, *, batch: bool = False) -> Span | None:
        """A CLIENT span for one operation, or ``None`` when no tracer provider is set."""
        if _tracing_off_fast():
            return None
        operation, text = describe_query(query)
        if batch:
            operation = f"BATCH {operation}"
        attributes = dict(self._span_attributes)
        attributes["db.operation.name"] = operation
        attributes["db.query.text"] = text
        if self._dup:
            attributes.update(
                {
                    "db.system": "postgresql",
                    "db.operation": operation,
                    "db.statement": text,
                    "db.name": self.namespace,
                    "net.peer.name": attributes.get("server.address"),
                    "net.peer.port": attributes.get("server.port"),
                }
            )
        return _tracer.start_span(
            f"{operation} {self.namespace}",
            kind=SpanKind.CLIENT,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )

    def waited(self, span: Span | None, seconds: float) -> None:
        """Mark on ``span`` that a pooled connection was obtained after ``seconds``."""
        if span is not None:
            span.add_event(
                "wellwon.db.connection.acquired",
                {"db.client.connection.wait_time": seconds},
            )

    def finish(
        self,
        span: Span | None,
        query: str,
        started: float,
        error: BaseException | None = None,
        *,
        batch: bool = False,
    ) -> None:
        """Record the duration, end ``span``, and log the statement if it was slow."""
        duration = time.monotonic() - started
        operation = describe_query(query)[0]
        if batch:
            operation = f"BATCH {operation}"
        error_type = status_code = None
        if error is not None:
            error_type, status_code = _error_type(error)
        key = (operation, error_type, status_code)
        attributes = self._op_attributes.get(key)
        if attributes is None:
            attributes = dict(self._span_attributes)
            attributes["db.operation.name"] = operation
            if error_type is not None:
                attributes["error.type"] = error_type
            if status_code is not None:
                attributes["db.response.status_code"] = status_code
            if len(self._op_attributes) < 1024:
                self._op_attributes[key] = attributes
        _operation_duration.record(duration, attributes)
        if span is not None:
            if error is not None:
                span.set_attribute("error.type", error_type or "")
                if status_code is not None:
                    span.set_attribute("db.response.status_code", status_code)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()
        if self.slow_query and duration >= self.slow_query:
            _, text = describe_query(query)
            slow_logger.warning(
                "slow %s on the %s database: %.1f ms: %s",
                operation,
                self.database,
                duration * 1000,
                text,
                extra={
                    "database": self.database,
                    "duration_ms": round(duration * 1000, 3),
                    "operation": operation,
                    "query": text,
                },
            )

    # -- transactions ----------------------------------------------------------

    def start_transaction(self) -> tuple[Span, object] | None:
        """An INTERNAL span grouping a transaction's statements, made current."""
        if _tracing_off_fast():
            return None
        span = _tracer.start_span(
            f"TRANSACTION {self.namespace}",
            kind=SpanKind.INTERNAL,
            attributes=dict(self._span_attributes),
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    def end_transaction(
        self, handle: tuple[Span, object] | None, outcome: str, error: BaseException | None
    ) -> None:
        """Close a transaction span: ``outcome`` is ``commit`` or ``rollback``."""
        if handle is None:
            return
        span, token = handle
        span.set_attribute("wellwon.db.transaction.outcome", outcome)
        if error is not None:
            error_type, _ = _error_type(error)
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]

    # -- pool events ---------------------------------------------------------

    def connection_created(self, seconds: float) -> None:
        """A new connection took ``seconds`` to open."""
        _create_time.record(seconds, self._pool_attributes)

    def connection_acquired(self, seconds: float) -> None:
        """A caller waited ``seconds`` for a pooled connection."""
        _wait_time.record(seconds, self._pool_attributes)

    def connection_released(self, seconds: float) -> None:
        """A connection was borrowed for ``seconds``."""
        _use_time.record(seconds, self._pool_attributes)

    def pool_exhausted(self) -> None:
        """One episode of sustained pool pressure began (already warned of)."""
        _exhaustion.add(1, self._pool_attributes)


def register_pool(pool: ObservedPool) -> None:
    """Make ``pool``'s stats visible to the observable instruments."""
    _pools.add(pool)


def unregister_pool(pool: ObservedPool) -> None:
    """Stop observing ``pool``."""
    _pools.discard(pool)


def record_retry(database: str) -> None:
    """One more attempt is about to be made on ``database``."""
    _retries.add(1, {"wellwon.db.database": database})


def register_breaker(breaker: ObservedBreaker) -> None:
    """Make ``breaker``'s state visible to the breaker-state gauge (while its pool is open)."""
    _breakers.add(breaker)


def unregister_breaker(breaker: ObservedBreaker) -> None:
    """Stop observing ``breaker``."""
    _breakers.discard(breaker)


def record_breaker_transition(transition: ObservedTransition) -> None:
    """Breaker listener: count the state change."""
    _breaker_transitions.add(
        1,
        {
            "wellwon.db.database": transition.database,
            "wellwon.db.breaker.from": transition.old.value,
            "wellwon.db.breaker.to": transition.new.value,
        },
    )


# -- observable instruments: one stats source, get_stats() -------------------


def _stats() -> Iterator[tuple[dict[str, Any], PoolStats]]:
    for pool in list(_pools):
        yield pool.telemetry.pool_attributes, pool.get_stats()


def _connection_count(options: CallbackOptions) -> Iterable[Observation]:
    for attributes, stats in _stats():
        yield Observation(stats["idle"], {**attributes, "db.client.connection.state": "idle"})
        yield Observation(stats["in_use"], {**attributes, "db.client.connection.state": "used"})


def _stat(key: PoolCount) -> Any:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        for attributes, stats in _stats():
            yield Observation(stats[key], attributes)

    return callback


_STATES = ("closed", "open", "half_open", "forced_open", "disabled")


def _breaker_state(options: CallbackOptions) -> Iterable[Observation]:
    for breaker in list(_breakers):
        state = breaker.state.value
        for candidate in _STATES:
            attributes = {
                "wellwon.db.database": breaker.database,
                "wellwon.db.breaker.state": candidate,
            }
            yield Observation(1 if candidate == state else 0, attributes)


_meter.create_observable_up_down_counter(
    "db.client.connection.count",
    callbacks=[_connection_count],
    unit="{connection}",
    description="The number of connections that are currently in the state described by state.",
)
_meter.create_observable_up_down_counter(
    "db.client.connection.max",
    callbacks=[_stat("max_size")],
    unit="{connection}",
    description="The maximum number of open connections allowed.",
)
_meter.create_observable_up_down_counter(
    "db.client.connection.idle.max",
    callbacks=[_stat("max_size")],
    unit="{connection}",
    description="The maximum number of idle open connections allowed.",
)
_meter.create_observable_up_down_counter(
    "db.client.connection.idle.min",
    callbacks=[_stat("min_size")],
    unit="{connection}",
    description="The minimum number of idle open connections allowed.",
)
_meter.create_observable_up_down_counter(
    "db.client.connection.pending_requests",
    callbacks=[_stat("waiting")],
    unit="{request}",
    description="The number of current pending requests for an open connection.",
)
_meter.create_observable_counter(
    "db.client.connection.timeouts",
    callbacks=[_stat("timeouts")],
    unit="{timeout}",
    description="The number of connection timeouts that have occurred trying to obtain a "
    "connection from the pool.",
)
_meter.create_observable_gauge(
    "wellwon.db.breaker.state",
    callbacks=[_breaker_state],
    unit="1",
    description="1 for the breaker's current state, 0 for the others.",
)
