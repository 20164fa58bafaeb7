"""Helpers for the exporter scenarios' testinfra tests (molecule/*/tests): scrape
an exporter on the lab host, and the metric names the alert rules expect."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

PROMETHEUS_ROLE = Path(__file__).resolve().parent.parent / "roles" / "prometheus"
RULES = PROMETHEUS_ROLE / "templates" / "rules"

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
    """Names with this prefix that the alert rules (roles/prometheus) use."""
    text = "\n".join(p.read_text() for p in RULES.glob("*.j2"))
    return set(re.findall(rf"\b({prefix}[A-Za-z0-9_]+)", text))


def alerted_node_collectors() -> set[str]:
    """The node-exporter collectors NodeCollectorFailed watches (prometheus role defaults)."""
    defaults = yaml.safe_load((PROMETHEUS_ROLE / "defaults" / "main.yml").read_text())
    return set(defaults["prometheus_alert_node_collectors"])
