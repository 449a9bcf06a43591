"""The Prometheus alert rules for every database, generated from the metric catalog.

Each rule's annotation ``runbook`` points at its section of docs/monitoring.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wellwon_db.cli._promql import BYPASSES, DB, FAILED, OPEN, series
from wellwon_db.cli._yaml import to_yaml
from wellwon_db.telemetry import _catalog as m

__all__ = ["AlertThresholds", "rules", "rules_yaml"]


@dataclass(frozen=True, slots=True)
class AlertThresholds:
    """Where the alerts fire. Durations are Prometheus durations (``30s``, ``5m``)."""

    pending_for: str = "30s"
    timeouts_window: str = "5m"
    breaker_for: str = "0s"
    error_ratio: float = 0.05
    error_for: str = "5m"
    slow_per_second: float = 0.1
    slow_for: str = "10m"
    p99_seconds: float = 1.0
    latency_for: str = "10m"
    replica_lag_seconds: float = 30.0
    replica_for: str = "2m"
    cache_bypass_for: str = "5m"


def _alert(
    name: str, expr: str, duration: str, severity: str, summary: str, runbook: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "runbook": f"docs/monitoring.md#{runbook}",
        },
    }


def rules(thresholds: AlertThresholds | None = None) -> dict[str, Any]:
    """The Prometheus rule file (one group) for every database."""
    t = thresholds or AlertThresholds()
    by = f"{DB}, instance"
    op = m.OPERATION_DURATION
    window = "5m"
    alerts = [
        _alert(
            "WellwonDBPoolExhausted",
            f"max by ({by}) ({series(m.PENDING_REQUESTS)}) > 0",
            t.pending_for,
            "warning",
            "{{ $labels.wellwon_db_database }} pool on {{ $labels.instance }}: callers have "
            f"waited for a connection for {t.pending_for}",
            "pool-exhausted",
        ),
        _alert(
            "WellwonDBAcquireTimeouts",
            f"sum by ({by}) (increase({series(m.CONNECTION_TIMEOUTS)}[{t.timeouts_window}])) > 0",
            "0s",
            "warning",
            "{{ $labels.wellwon_db_database }} pool on {{ $labels.instance }}: "
            "{{ $value | humanize }} acquire timeouts (PoolTimeoutError) in "
            f"{t.timeouts_window}",
            "acquire-timeouts",
        ),
        _alert(
            "WellwonDBBreakerOpen",
            f"max by ({by}) ({series(m.BREAKER_STATE)}{{{OPEN}}}) == 1",
            t.breaker_for,
            "critical",
            "{{ $labels.wellwon_db_database }} breaker on {{ $labels.instance }} is open: calls "
            "are refused",
            "breaker-open",
        ),
        _alert(
            "WellwonDBErrorRate",
            f"sum by ({by}) (rate({series(op, '_count')}{{{FAILED}}}[{window}])) / "
            f"sum by ({by}) (rate({series(op, '_count')}[{window}])) > {t.error_ratio}",
            t.error_for,
            "warning",
            "{{ $labels.wellwon_db_database }} on {{ $labels.instance }}: "
            "{{ $value | humanizePercentage }} of operations fail",
            "error-rate",
        ),
        _alert(
            "WellwonDBSlowQueries",
            f"sum by ({by}) (rate({series(m.SLOW_QUERIES)}[{window}])) > {t.slow_per_second}",
            t.slow_for,
            "warning",
            "{{ $labels.wellwon_db_database }} on {{ $labels.instance }}: "
            "{{ $value | humanize }} slow queries per second",
            "slow-queries",
        ),
        _alert(
            "WellwonDBLatencyHigh",
            f"histogram_quantile(0.99, sum by (le, {by}) "
            f"(rate({series(op, '_bucket')}[{window}]))) > {t.p99_seconds}",
            t.latency_for,
            "warning",
            "{{ $labels.wellwon_db_database }} on {{ $labels.instance }}: p99 latency "
            "{{ $value | humanizeDuration }}",
            "latency-high",
        ),
        _alert(
            "WellwonDBReplicaLag",
            f"max by ({by}, server_address) ({series(m.REPLICA_LAG)}) > {t.replica_lag_seconds}",
            t.replica_for,
            "warning",
            "{{ $labels.wellwon_db_database }} replica {{ $labels.server_address }}: "
            "{{ $value | humanizeDuration }} behind its primary",
            "replica-lag",
        ),
        _alert(
            "WellwonDBCacheBypassed",
            f"sum by ({by}) (rate({series(m.CACHE_EVENTS)}{{{BYPASSES}}}[{window}])) > 0",
            t.cache_bypass_for,
            "warning",
            "{{ $labels.wellwon_db_database }} on {{ $labels.instance }}: cached reads bypass "
            "the cache (its LISTEN connection is down)",
            "cache-bypassed",
        ),
    ]
    return {"groups": [{"name": "wellwon_db", "rules": alerts}]}


def rules_yaml(thresholds: AlertThresholds | None = None) -> str:
    """:func:`rules` as YAML (what ``wellwon-db monitoring alerts`` prints)."""
    return to_yaml(rules(thresholds))
