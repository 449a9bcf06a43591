"""Spans, the operation-duration metric and the slow-query log of one database's calls.

Following the OpenTelemetry database conventions (``_catalog.SEMCONV_VERSION``):

* one CLIENT span per operation as the caller sees it (retries included),
  named ``{db.query.summary}`` (``SELECT dc_customs``), else the target
  (``db.namespace``, else ``server.address:server.port``), else ``postgresql``;
* ``db.query.summary`` from PostgreSQL's parse tree; ``db.operation.name``
  only where it is known without reading the text (``BEGIN``, ``COMMIT``,
  ``ROLLBACK``, which the client sends itself); ``db.query.text`` as given
  when the query is parameterised, else with every literal replaced by ``?``
  (parameter values are never recorded);
* ``error.type``: the SQLSTATE for PostgreSQL's errors (also in
  ``db.response.status_code``), ``timeout`` for a command timeout, else the
  fully qualified class of the original exception (the one our own errors
  wrap);
* ``executemany`` with two or more parameter sets is a batch
  (``db.operation.batch.size``, summary ``BATCH ...``); with one it is a
  single operation;
* a call refused without reaching the database (breaker open, pool closed)
  is no operation: counted in ``wellwon.db.client.refused`` and noted as an
  event on the current span, never as a 0 s duration.

``OTEL_SEMCONV_STABILITY_OPT_IN=database/dup`` adds the pre-1.25 names
(``db.system``, ``db.name``, ``db.statement``, ``db.operation``,
``net.peer.*``). With no SDK installed a call costs a tracer-provider check
and a no-op histogram record: see docs/performance.md.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import asyncpg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import ProxyTracerProvider, Span, SpanKind, Status, StatusCode

from wellwon_db.sql._sanitize import sanitize
from wellwon_db.sql._summary import query_summary
from wellwon_db.telemetry._instruments import (
    ObservedBreaker,
    ObservedCache,
    ObservedPool,
    ObservedReplicaSet,
    ObservedTransition,
    create_time,
    exhausted,
    operation_duration,
    record_breaker_transition,
    record_invalidation_lag,
    record_refused,
    record_retry,
    record_route,
    record_slow_query,
    register_breaker,
    register_cache,
    register_pool,
    register_replica_set,
    tracer,
    unregister_breaker,
    unregister_cache,
    unregister_pool,
    unregister_replica_set,
    use_time,
    wait_time,
)

__all__ = [
    "ObservedBreaker",
    "ObservedCache",
    "ObservedPool",
    "ObservedReplicaSet",
    "ObservedTransition",
    "PoolTelemetry",
    "error_attributes",
    "record_breaker_transition",
    "record_invalidation_lag",
    "record_refused",
    "record_retry",
    "record_route",
    "register_breaker",
    "register_cache",
    "register_pool",
    "register_replica_set",
    "unregister_breaker",
    "unregister_cache",
    "unregister_pool",
    "unregister_replica_set",
]

slow_logger = logging.getLogger("wellwon_db.slow")


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


def _semconv_dup() -> bool:
    values = {v.strip() for v in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
    return "database/dup" in values


def error_attributes(exc: BaseException) -> tuple[str, str | None]:
    """``(error.type, db.response.status_code)`` for ``exc``.

    The original cause counts: a ``DatabaseUnavailableError`` raised from
    asyncpg's ``AdminShutdownError`` is ``57P01``; from a refused TCP
    connect, ``builtins.ConnectionRefusedError``.
    """
    original = exc
    seen = 0
    while (
        type(original).__module__.startswith("wellwon_db")
        and original.__cause__ is not None
        and seen < 8
    ):
        original, seen = original.__cause__, seen + 1
    if isinstance(original, asyncpg.PostgresError):
        code: str | None = original.sqlstate
        if code:
            return code, code
    if type(original) is TimeoutError:
        return "timeout", None
    return f"{type(original).__module__}.{type(original).__qualname__}", None


def _batch_summary(summary: str, batch: int | None) -> str:
    if batch is None or batch == 1:
        return summary
    return f"BATCH {summary}" if summary else "BATCH"


class PoolTelemetry:
    """Instrumentation of one database's pool and calls.

    Attribute sets are built once per summary and outcome; with tracing off
    a call allocates nothing here but the duration measurement.
    """

    __slots__ = (
        "_dup",
        "_op_attributes",
        "_pool_attributes",
        "_span_attributes",
        "_target",
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
        self.namespace = namespace
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
        # The span name's target: never the library's own name for the database.
        self._target = namespace or (f"{host}:{port}" if host and port else host or "postgresql")
        self._op_attributes: dict[tuple[str, str | None, str | None, str | None], Any] = {}
        self._pool_attributes = {
            "db.client.connection.pool.name": pool_name,
            "wellwon.db.database": database,
        }

    @property
    def pool_attributes(self) -> dict[str, Any]:
        """The attributes of this pool's connection metrics."""
        return self._pool_attributes

    # -- operations ----------------------------------------------------------

    def start(
        self,
        query: str,
        *,
        parameterized: bool = True,
        batch: int | None = None,
        operation: str | None = None,
    ) -> Span | None:
        """A CLIENT span for one operation, or ``None`` when no tracer provider is set.

        ``parameterized``: the query was sent with arguments (its text is
        recorded as it is). ``batch``: the number of parameter sets of an
        ``executemany``. ``operation``: the operation name when the client
        knows it without the text (``COMMIT``).
        """
        if _tracing_off_fast():
            return None
        summary = _batch_summary(operation or query_summary(query), batch)
        attributes = dict(self._span_attributes)
        if summary:
            attributes["db.query.summary"] = summary
        if operation is not None:
            attributes["db.operation.name"] = operation
        text = query if parameterized else sanitize(query)
        if text:
            attributes["db.query.text"] = text
        if batch is not None and batch != 1:
            attributes["db.operation.batch.size"] = batch
        if self._dup:
            attributes.update(
                {
                    "db.system": "postgresql",
                    "db.operation": summary.split(" ", 1)[0] if summary else None,
                    "db.statement": text,
                    "db.name": self.namespace,
                    "net.peer.name": attributes.get("server.address"),
                    "net.peer.port": attributes.get("server.port"),
                }
            )
        return tracer.start_span(
            summary or self._target,
            kind=SpanKind.CLIENT,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )

    def waited(self, span: Span | None, seconds: float) -> None:
        """Mark on ``span`` that a pooled connection was obtained after ``seconds``."""
        if span is not None:
            span.add_event(
                "wellwon.db.connection.acquired", {"wellwon.db.connection.wait_time": seconds}
            )

    def finish(
        self,
        span: Span | None,
        query: str,
        started: float,
        error: BaseException | None = None,
        *,
        sent: float | None = None,
        batch: int | None = None,
        operation: str | None = None,
    ) -> None:
        """Record the duration since ``started`` (pool wait included), end ``span``.

        ``sent`` is when the statement went to the server, after any wait for
        a connection; the slow-query log measures from it, so a pool wait is
        never reported as a slow query. ``None``: no statement was sent.
        """
        now = time.monotonic()
        duration = now - started
        summary = _batch_summary(operation or query_summary(query), batch)
        error_type = status_code = None
        if error is not None:
            error_type, status_code = error_attributes(error)
        key = (summary, operation, error_type, status_code)
        attributes = self._op_attributes.get(key)
        if attributes is None:
            attributes = dict(self._span_attributes)
            if summary:
                attributes["db.query.summary"] = summary
            if operation is not None:
                attributes["db.operation.name"] = operation
            if error_type is not None:
                attributes["error.type"] = error_type
            if status_code is not None:
                attributes["db.response.status_code"] = status_code
            if len(self._op_attributes) < 1024:
                self._op_attributes[key] = attributes
        operation_duration.record(duration, attributes)
        if span is not None:
            if error is not None:
                span.set_attribute("error.type", error_type or "")
                if status_code is not None:
                    span.set_attribute("db.response.status_code", status_code)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()
        if sent is not None and self.slow_query and now - sent >= self.slow_query:
            self._log_slow(query, summary, now - sent)

    def _log_slow(self, query: str, summary: str, duration: float) -> None:
        text = sanitize(query) or ""
        record_slow_query(self.database, summary)
        slow_logger.warning(
            "slow %s on the %s database: %.1f ms: %s",
            summary or "operation",
            self.database,
            duration * 1000,
            text,
            extra={
                "database": self.database,
                "duration_ms": round(duration * 1000, 3),
                "operation": summary.split(" ", 1)[0] if summary else "",
                "summary": summary,
                "query": text,
            },
        )

    def attempt_failed(self, span: Span | None, error: BaseException) -> None:
        """An attempt of an operation failed and another follows: an ``exception`` event."""
        if span is not None:
            error_type, _ = error_attributes(error)
            span.add_event(
                "exception",
                {"exception.type": error_type, "exception.message": str(error)},
            )

    def refused(self, reason: str) -> None:
        """A call was refused without reaching the database: not an operation."""
        record_refused(self.database, reason)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "wellwon.db.refused",
                {"wellwon.db.database": self.database, "wellwon.db.refused.reason": reason},
            )

    # -- transactions ----------------------------------------------------------

    def start_transaction(self) -> tuple[Span, object] | None:
        """An INTERNAL span grouping a transaction's statements, made current."""
        if _tracing_off_fast():
            return None
        span = tracer.start_span(
            f"TRANSACTION {self._target}",
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
            error_type, _ = error_attributes(error)
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]

    # -- pool events ---------------------------------------------------------

    def connection_created(self, seconds: float) -> None:
        """A new connection took ``seconds`` to open."""
        create_time.record(seconds, self._pool_attributes)

    def connection_acquired(self, seconds: float) -> None:
        """A caller waited ``seconds`` for a pooled connection."""
        wait_time.record(seconds, self._pool_attributes)

    def connection_released(self, seconds: float) -> None:
        """A connection was borrowed for ``seconds``."""
        use_time.record(seconds, self._pool_attributes)

    def pool_exhausted(self) -> None:
        """One episode of sustained pool pressure began (already warned of)."""
        exhausted.add(1, self._pool_attributes)
