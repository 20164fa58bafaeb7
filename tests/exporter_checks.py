"""Helpers for the exporter scenarios' testinfra tests (molecule/*/tests): scrape
an exporter on the lab host, and the metric names the alert rules expect."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

PROMETHEUS_ROLE = Path(__file__).resolve().parent.parent / "roles" / "prometheus"

# Prints a URL's body from inside the lab host (python3 is in the lab image).
FETCH = (
    "python3 -c 'import sys, urllib.request; "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())'"
)


def scrape(host, port: int, address: str = "127.0.0.1") -> str:
    return host.check_output(f"{FETCH} http://{address}:{port}/metrics")


def families(text: str) -> set[str]:
    """Metric names present in a Prometheus text exposition."""
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def rule_metric_names(prefix: str) -> set[str]:
    """Metric names with this prefix that the rules (roles/prometheus, rendered
    with the role's defaults) read in their expressions."""
    from test_alert_rules import rendered_rules
    from test_dashboards import metric_names

    names = set()
    for rule in rendered_rules():
        names |= metric_names(rule["expr"])
    return {name for name in names if name.startswith(prefix)}


def alerted_node_collectors() -> set[str]:
    """The node-exporter collectors NodeCollectorFailed watches (prometheus role defaults)."""
    defaults = yaml.safe_load((PROMETHEUS_ROLE / "defaults" / "main.yml").read_text())
    return set(defaults["prometheus_alert_node_collectors"])
