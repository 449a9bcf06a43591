"""PromQL pieces shared by the dashboard and the alert rules.

Metric names come from the catalog (``wellwon_db.telemetry._catalog``) as the
OpenTelemetry Prometheus exporter writes them: units as suffixes, dots to
underscores (``db.client.operation.duration`` in seconds ->
``db_client_operation_duration_seconds_bucket``, ``_sum``, ``_count``).
"""

from __future__ import annotations

from typing import Final

from wellwon_db.telemetry._catalog import Metric

__all__ = [
    "BYPASSES",
    "DB",
    "FAILED",
    "FILTER",
    "HITS",
    "LOOKUPS",
    "OPEN",
    "quantile",
    "rate",
    "selector",
    "series",
]

#: The dashboard's filter on every query: the chosen databases and instances.
FILTER: Final = 'wellwon_db_database=~"$database", instance=~"$instance"'
DB: Final = "wellwon_db_database"
FAILED: Final = 'error_type!=""'
HITS: Final = 'wellwon_db_cache_event="hits"'
LOOKUPS: Final = 'wellwon_db_cache_event=~"hits|misses"'
OPEN: Final = 'wellwon_db_breaker_state=~"open|forced_open"'
BYPASSES: Final = 'wellwon_db_cache_event="bypasses"'


def series(metric: Metric, suffix: str = "") -> str:
    return f"{metric.prometheus}{suffix}"


def selector(metric: Metric, suffix: str = "", extra: str = "") -> str:
    matchers = f"{FILTER}, {extra}" if extra else FILTER
    return f"{series(metric, suffix)}{{{matchers}}}"


def rate(
    metric: Metric, suffix: str = "", extra: str = "", window: str = "$__rate_interval"
) -> str:
    return f"rate({selector(metric, suffix, extra)}[{window}])"


def quantile(q: float, metric: Metric, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) ({rate(metric, '_bucket')}))"
