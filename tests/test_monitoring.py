"""The dashboard and the alert rules, proven with Prometheus's own tools and a real server.

``promtool check rules`` on the generated file; ``promtool test rules`` with
tests/data/alerts_test.yml (each alert fires on synthetic series and
resolves); and end to end: a process with real pools exports its metrics
through ``opentelemetry-exporter-prometheus``, a Prometheus server scrapes it
every second, the pool is exhausted and ``WellwonDBPoolExhausted`` becomes
firing in Prometheus's API, every series the dashboard and the rules use is
in Prometheus, and every panel's query returns data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Servers, free_port, run_cli
from wellwon_db.cli._alert_rules import AlertThresholds, rules
from wellwon_db.cli._dashboard import dashboard
from wellwon_db.cli._monitoring_command import parse_thresholds, referenced_series
from wellwon_db.errors import ConfigurationError
from wellwon_db.testing import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
_NO_PROMETHEUS = (
    "Prometheus's tools are not installed: apt-get install prometheus (.ci/run does); "
    "the monitoring tests need promtool and the prometheus server"
)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=_NO_PROMETHEUS)


def _generate(tmp_path: Path, what: str, *options: str) -> Path:
    result = run_cli("monitoring", what, *options, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / ("dashboard.json" if what == "dashboard" else "rules.yml")
    path.write_text(result.stdout)
    return path


@needs_promtool
def test_promtool_accepts_the_generated_rules(tmp_path: Path) -> None:
    rules = _generate(tmp_path, "alerts")
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@needs_promtool
def test_every_alert_fires_and_resolves_in_promtool(tmp_path: Path) -> None:
    _generate(tmp_path, "alerts")
    shutil.copy(ROOT / "tests" / "data" / "alerts_test.yml", tmp_path)
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        line.split(":", 1)[1].strip()
        for line in (tmp_path / "alerts_test.yml").read_text().splitlines()
        if line.strip().startswith("alertname:")
    }
    generated = {
        line.split('"')[1]
        for line in (tmp_path / "rules.yml").read_text().splitlines()
        if line.strip().startswith("- alert:")
    }
    assert tested == generated, "every generated alert has a promtool test"


@needs_promtool
def test_thresholds_change_the_rules(tmp_path: Path) -> None:
    rules = _generate(
        tmp_path, "alerts", "--threshold", "pending_for=2s", "--threshold", "error_ratio=0.2"
    ).read_text()
    assert '"for": "2s"' not in rules  # YAML, not JSON
    assert 'for: "2s"' in rules
    assert "> 0.2" in rules


def test_a_wrong_threshold_names_what_to_write(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="one of pending_for"):
        parse_thresholds(["pending=2s"])
    with pytest.raises(ConfigurationError, match=r"takes a number >= 0, for example 0\.05"):
        parse_thresholds(["error_ratio=lots"])
    with pytest.raises(ConfigurationError, match="Prometheus duration such as 30s"):
        parse_thresholds(["pending_for=30"])
    assert parse_thresholds(["pending-for=1m"]) == AlertThresholds(pending_for="1m")
    result = run_cli("monitoring", "alerts", "--threshold", "nope", cwd=tmp_path)
    assert result.returncode == 78
    assert "--threshold 'nope'" in result.stderr


def test_every_runbook_link_has_its_section() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    for alert in rules()["groups"][0]["rules"]:
        page, anchor = alert["annotations"]["runbook"].split("#")
        assert page == "docs/monitoring.md"
        assert (
            f'<a id="{anchor}"></a>\n### {alert["alert"]} ({alert["labels"]["severity"]})' in text
        )


def test_the_dashboard_has_a_variable_per_database_and_instance(tmp_path: Path) -> None:
    model = json.loads(_generate(tmp_path, "dashboard").read_text())
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["database"]["multi"]
    assert variables["instance"]["multi"]
    targets = [t for p in model["panels"] for t in p.get("targets", [])]
    assert targets
    for target in targets:
        assert 'wellwon_db_database=~"$database"' in target["expr"], target["expr"]
        assert 'instance=~"$instance"' in target["expr"], target["expr"]
    titles = {p["title"] for p in model["panels"]}
    for wanted in (
        "Latency percentiles",
        "Errors by error.type",
        "Pending requests",
        "Breaker state",
        "Replica lag",
        "Cache hit ratio",
        "Slow queries",
    ):
        assert wanted in titles


# -- end to end: a real Prometheus scraping a real process --------------------------

needs_prometheus = pytest.mark.skipif(
    PROMTOOL is None or PROMETHEUS is None, reason=_NO_PROMETHEUS
)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _query(base: str, expr: str) -> list[Any]:
    answer = _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]  # type: ignore[no-any-return]


def _poll(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # the server is not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s; last: {last!r}")


@pytest.fixture
def monitored(servers: Servers, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The workload process on the session servers (and a standby of main) plus Prometheus.

    Yields Prometheus's URL and the workload's scrape target.
    """
    main_dsn = servers.main.create_database("monitoring")
    reference_dsn = servers.reference.create_database("monitoring")
    standby = PostgresServer.standby_of(servers.main, "monitoring-standby").start()
    app_port, prometheus_port = free_port(), free_port()
    env = {
        "POSTGRES_DSN": main_dsn,
        "POSTGRES_REFERENCE_DSN": reference_dsn,
        "POSTGRES_MAIN_REPLICA_DSN": standby.dsn("monitoring"),
        "PG_POOL_MIN_SIZE": "1",
        "PG_POOL_MAX_SIZE": "2",
        "PG_POOL_TIMEOUT_SEC": "0.3",
        "PG_POOL_LEASE_METRICS": "true",
        "PG_POOL_EXHAUSTION_WARN_SEC": "0.5",
        "PG_LOG_SLOW_QUERY_SEC": "0.1",
        "PG_REFERENCE_POOL_MIN_SIZE": "1",
        "PG_REFERENCE_POOL_MAX_SIZE": "2",
        "PG_MAIN_REPLICA_POOL_MIN_SIZE": "1",
        "PG_MAIN_REPLICA_POOL_MAX_SIZE": "2",
        "PG_MAIN_REPLICA_LAG_CHECK_SEC": "0.2",
        "PATH": "/usr/bin:/bin",
    }
    log = tmp_path / "workload.log"
    with log.open("w") as log_file:
        workload = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "metrics_workload.py"), str(app_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
            cwd=tmp_path,
        )
    prometheus = None
    try:
        assert workload.stdout is not None
        line = workload.stdout.readline()
        assert line.strip() == "ready", f"{line}{log.read_text()}"
        _generate(tmp_path, "alerts", "--threshold", "pending_for=2s")
        target = f"127.0.0.1:{app_port}"
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [rules.yml]\n"
            "scrape_configs:\n"
            f"  - {{job_name: app, static_configs: [{{targets: ['{target}']}}]}}\n"
        )
        prometheus = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        yield f"http://127.0.0.1:{prometheus_port}", target
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        try:
            workload.communicate(timeout=30)  # closing stdin ends the workload
        finally:
            workload.kill()
            standby.cleanup()


@pytest.mark.slow
@needs_prometheus
def test_prometheus_fires_the_exhaustion_alert_on_a_real_pool(
    monitored: tuple[str, str],
) -> None:
    base, target = monitored

    def firing() -> list[Any]:
        alerts = _get(f"{base}/api/v1/alerts")["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "WellwonDBPoolExhausted" and a["state"] == "firing"
        ]

    try:
        (alert,) = _poll("WellwonDBPoolExhausted firing", firing)
    except AssertionError as exc:
        targets = [
            (t["health"], t["lastError"])
            for t in _get(f"{base}/api/v1/targets")["data"]["activeTargets"]
        ]
        pending = _query(base, "db_client_connection_pending_requests")
        raise AssertionError(f"{exc}; targets {targets}; pending requests {pending}") from None
    assert alert["labels"]["wellwon_db_database"] == "main"
    assert alert["labels"]["instance"] == target
    assert alert["annotations"]["runbook"] == "docs/monitoring.md#pool-exhausted"

    def missing_series() -> set[str]:
        names = set(_get(f"{base}/api/v1/label/__name__/values")["data"])
        return referenced_series() - names

    def empty_panels() -> list[str]:
        return [title for title, expr in _panel_queries() if not _query(base, expr)]

    # Every series in Prometheus, every panel showing data (polled: a series
    # needs a scrape after its first sample, a rate two).
    _poll("every referenced series and panel", lambda: not missing_series() and not empty_panels())
    assert not missing_series()
    assert not empty_panels()


def _panel_queries() -> list[tuple[str, str]]:
    """Each dashboard query with its variables set as Grafana would for "All"."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$database", ".*")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "30s")
            )
            queries.append((f"{panel['title']} {target['refId']}", expr))
    return queries
