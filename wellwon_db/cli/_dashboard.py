"""The Grafana dashboard for every database, generated from the metric catalog.

Each query names its metric through the catalog the instruments are made
from, so a renamed metric renames its panels too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wellwon_db.cli._promql import (
    DB,
    FAILED,
    HITS,
    LOOKUPS,
    quantile,
    rate,
    selector,
    series,
)
from wellwon_db.telemetry import _catalog as m

__all__ = ["dashboard", "dashboard_json"]


@dataclass(frozen=True, slots=True)
class _Panel:
    title: str
    description: str
    targets: tuple[tuple[str, str], ...]  # (expression, legend)
    unit: str = "short"


def _panels() -> list[tuple[str, list[_Panel]]]:
    op = m.OPERATION_DURATION
    by_db_summary = f"{DB}, db_query_summary"
    return [
        (
            "Operations",
            [
                _Panel(
                    "Operation rate",
                    "Operations per second by database and query summary.",
                    (
                        (
                            f"sum by ({by_db_summary}) ({rate(op, '_count')})",
                            "{{wellwon_db_database}} {{db_query_summary}}",
                        ),
                    ),
                    "ops",
                ),
                _Panel(
                    "Latency percentiles",
                    "p50, p95 and p99 of db.client.operation.duration by database.",
                    tuple(
                        (quantile(q, op, DB), f"p{int(q * 100)} {{{{wellwon_db_database}}}}")
                        for q in (0.5, 0.95, 0.99)
                    ),
                    "s",
                ),
                _Panel(
                    "p99 latency by operation",
                    "p99 by database and query summary: which statements are slow.",
                    (
                        (
                            quantile(0.99, op, by_db_summary),
                            "{{wellwon_db_database}} {{db_query_summary}}",
                        ),
                    ),
                    "s",
                ),
                _Panel(
                    "Errors by error.type",
                    "Failed operations per second: SQLSTATE, timeout or the exception class.",
                    (
                        (
                            f"sum by ({DB}, error_type) ({rate(op, '_count', FAILED)})",
                            "{{wellwon_db_database}} {{error_type}}",
                        ),
                    ),
                    "ops",
                ),
                _Panel(
                    "Slow queries",
                    "Operations slower than PG_[<DB>_]LOG_SLOW_QUERY_SEC, per second.",
                    (
                        (
                            f"sum by ({by_db_summary}) ({rate(m.SLOW_QUERIES)})",
                            "{{wellwon_db_database}} {{db_query_summary}}",
                        ),
                    ),
                    "ops",
                ),
                _Panel(
                    "Retries and refused calls",
                    "Attempts made again, and calls refused without reaching the database.",
                    (
                        (f"sum by ({DB}) ({rate(m.RETRIES)})", "retries {{wellwon_db_database}}"),
                        (
                            f"sum by ({DB}, wellwon_db_refused_reason) ({rate(m.REFUSED)})",
                            "refused {{wellwon_db_database}} {{wellwon_db_refused_reason}}",
                        ),
                    ),
                    "ops",
                ),
            ],
        ),
        (
            "Pools",
            [
                _Panel(
                    "Connections used, idle and max",
                    "db.client.connection.count by state, and the pool's maximum.",
                    (
                        (
                            f"sum by ({DB}, db_client_connection_state) "
                            f"({selector(m.CONNECTION_COUNT)})",
                            "{{wellwon_db_database}} {{db_client_connection_state}}",
                        ),
                        (
                            f"sum by ({DB}) ({selector(m.CONNECTION_MAX)})",
                            "{{wellwon_db_database}} max",
                        ),
                    ),
                ),
                _Panel(
                    "Pending requests",
                    "Callers waiting for a connection.",
                    (
                        (
                            f"sum by ({DB}) ({selector(m.PENDING_REQUESTS)})",
                            "{{wellwon_db_database}}",
                        ),
                    ),
                ),
                _Panel(
                    "Acquire wait time (p95)",
                    "Time to get a connection (recorded with PG_[<DB>_]POOL_LEASE_METRICS=true).",
                    ((quantile(0.95, m.CONNECTION_WAIT_TIME, DB), "{{wellwon_db_database}}"),),
                    "s",
                ),
                _Panel(
                    "Acquire timeouts and exhaustion episodes",
                    "PoolTimeoutError per second, and episodes of sustained pool pressure.",
                    (
                        (
                            f"sum by ({DB}) ({rate(m.CONNECTION_TIMEOUTS)})",
                            "timeouts {{wellwon_db_database}}",
                        ),
                        (
                            f"sum by ({DB}) ({rate(m.POOL_EXHAUSTED)})",
                            "exhaustion {{wellwon_db_database}}",
                        ),
                    ),
                    "ops",
                ),
            ],
        ),
        (
            "Breakers",
            [
                _Panel(
                    "Breaker state",
                    "1 for each database's current breaker state.",
                    (
                        (
                            f"max by ({DB}, wellwon_db_breaker_state) "
                            f"({selector(m.BREAKER_STATE)}) == 1",
                            "{{wellwon_db_database}} {{wellwon_db_breaker_state}}",
                        ),
                    ),
                ),
                _Panel(
                    "Breaker transitions",
                    "State changes per second, by new state.",
                    (
                        (
                            f"sum by ({DB}, wellwon_db_breaker_to) "
                            f"({rate(m.BREAKER_TRANSITIONS)})",
                            "{{wellwon_db_database}} -> {{wellwon_db_breaker_to}}",
                        ),
                    ),
                    "ops",
                ),
            ],
        ),
        (
            "Replicas",
            [
                _Panel(
                    "Replica lag",
                    "Seconds each replica is behind its primary (WAL positions).",
                    (
                        (
                            f"max by ({DB}, server_address) ({selector(m.REPLICA_LAG)})",
                            "{{wellwon_db_database}} {{server_address}}",
                        ),
                    ),
                    "s",
                ),
                _Panel(
                    "Replica lag (bytes)",
                    "WAL bytes each replica has not replayed.",
                    (
                        (
                            f"max by ({DB}, server_address) ({selector(m.REPLICA_LAG_BYTES)})",
                            "{{wellwon_db_database}} {{server_address}}",
                        ),
                    ),
                    "bytes",
                ),
                _Panel(
                    "Replica reads by target and reason",
                    "Where replica reads went (replica or primary) and why.",
                    (
                        (
                            f"sum by ({DB}, wellwon_db_replica_target, wellwon_db_replica_reason) "
                            f"({rate(m.REPLICA_READS)})",
                            "{{wellwon_db_database}} {{wellwon_db_replica_target}} "
                            "{{wellwon_db_replica_reason}}",
                        ),
                    ),
                    "ops",
                ),
            ],
        ),
        (
            "Result cache",
            [
                _Panel(
                    "Cache hit ratio",
                    "Hits over hits and misses.",
                    (
                        (
                            f"sum by ({DB}) ({rate(m.CACHE_EVENTS, extra=HITS)}) / "
                            f"sum by ({DB}) ({rate(m.CACHE_EVENTS, extra=LOOKUPS)})",
                            "{{wellwon_db_database}}",
                        ),
                    ),
                    "percentunit",
                ),
                _Panel(
                    "Cache events",
                    "Misses, bypasses, stale answers, evictions, invalidations per second.",
                    (
                        (
                            f"sum by ({DB}, wellwon_db_cache_event) ({rate(m.CACHE_EVENTS)})",
                            "{{wellwon_db_database}} {{wellwon_db_cache_event}}",
                        ),
                    ),
                    "ops",
                ),
                _Panel(
                    "Invalidation lag (p95)",
                    "From a change's statement to this process dropping its cached results.",
                    ((quantile(0.95, m.CACHE_INVALIDATION_LAG, DB), "{{wellwon_db_database}}"),),
                    "s",
                ),
            ],
        ),
    ]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard (JSON model, schema version 39) for every database."""
    panels: list[dict[str, Any]] = []
    y = 0
    panel_id = 1
    for row_title, row_panels in _panels():
        panels.append(
            {
                "type": "row",
                "id": panel_id,
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        for index, panel in enumerate(row_panels):
            panels.append(
                {
                    "type": "timeseries",
                    "id": panel_id,
                    "title": panel.title,
                    "description": panel.description,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": y + 8 * (index // 2)},
                    "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {
                            "refId": chr(ord("A") + n),
                            "datasource": {"type": "prometheus", "uid": "${datasource}"},
                            "expr": expr,
                            "legendFormat": legend,
                        }
                        for n, (expr, legend) in enumerate(panel.targets)
                    ],
                }
            )
            panel_id += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    count = series(m.OPERATION_DURATION, "_count")
    return {
        "title": "wellwon_db",
        "uid": "wellwon-db",
        "tags": ["wellwon_db", "postgresql"],
        "schemaVersion": 39,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Prometheus",
                    "query": "prometheus",
                },
                {
                    "type": "query",
                    "name": "database",
                    "label": "Database",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": f"label_values({count}, {DB})", "refId": "database"},
                    "definition": f"label_values({count}, {DB})",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                },
                {
                    "type": "query",
                    "name": "instance",
                    "label": "Instance",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": f"label_values({count}, instance)", "refId": "instance"},
                    "definition": f"label_values({count}, instance)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                },
            ]
        },
        "panels": panels,
    }


def dashboard_json() -> str:
    """:func:`dashboard` as indented JSON (what ``wellwon-db monitoring dashboard`` prints)."""
    return json.dumps(dashboard(), indent=2) + "\n"
