"""``wellwon-db monitoring dashboard|alerts``: the Grafana dashboard and the alert rules."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Final

from wellwon_db.cli._alert_rules import AlertThresholds, rules, rules_yaml
from wellwon_db.cli._dashboard import dashboard, dashboard_json
from wellwon_db.errors import ConfigurationError
from wellwon_db.telemetry import _catalog as m

__all__ = ["add_monitoring_parser", "referenced_series", "run_monitoring"]

_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_DURATION: Final = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def add_monitoring_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``monitoring`` command and its ``dashboard`` and ``alerts`` subcommands."""
    monitoring = commands.add_parser(
        "monitoring", help="print the Grafana dashboard or the Prometheus alert rules"
    )
    actions = monitoring.add_subparsers(dest="monitoring_command", required=True, metavar="WHAT")
    actions.add_parser(
        "dashboard",
        help="the Grafana dashboard JSON (import it; choose the Prometheus data source)",
    )
    alerts = actions.add_parser(
        "alerts",
        help="the Prometheus rule file (YAML) with every alert",
        description="The alert rules; see docs/monitoring.md for what each means.",
    )
    names = ", ".join(field.name for field in dataclasses.fields(AlertThresholds))
    alerts.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"change where an alert fires (repeatable); NAME is one of: {names}",
    )


def run_monitoring(what: str, threshold_options: list[str]) -> int:
    """Print the dashboard or the rules to stdout; exit code 0.

    Raises :class:`ConfigurationError` for a malformed ``--threshold``.
    """
    if what == "dashboard":
        sys.stdout.write(dashboard_json())
    else:
        sys.stdout.write(rules_yaml(parse_thresholds(threshold_options)))
    return 0


def parse_thresholds(options: list[str]) -> AlertThresholds:
    """``NAME=VALUE`` options applied over the default :class:`AlertThresholds`.

    Raises :class:`ConfigurationError` naming the option for an unknown name, a
    value that is not a number (ratios, seconds) or not a Prometheus duration.
    """
    fields = {field.name: field for field in dataclasses.fields(AlertThresholds)}
    changes: dict[str, object] = {}
    for option in options:
        name, sep, value = option.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ConfigurationError(
                f"--threshold {option!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}"
            )
        if fields[name].type in (float, "float"):
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not number >= 0:
                raise ConfigurationError(
                    f"--threshold {option!r}: {name} takes a number >= 0, for example "
                    f"{getattr(AlertThresholds(), name)}"
                ) from None
            changes[name] = number
        else:
            if not _DURATION.match(value.strip()):
                raise ConfigurationError(
                    f"--threshold {option!r}: {name} takes a Prometheus duration such as "
                    "30s, 5m or 1h"
                )
            changes[name] = value.strip()
    return dataclasses.replace(AlertThresholds(), **changes)  # type: ignore[arg-type]


def referenced_series() -> set[str]:
    """Every series name the dashboard and the rules use (for checking against a scrape)."""
    known = {metric.prometheus for metric in m.ALL}
    known |= {
        f"{metric.prometheus}{suffix}"
        for metric in m.ALL
        if metric.kind == "histogram"
        for suffix in ("_bucket", "_sum", "_count")
    }
    texts = [
        target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])
    ]
    texts += [alert["expr"] for alert in rules()["groups"][0]["rules"]]
    return {name for text in texts for name in _NAME.findall(text) if name in known}
