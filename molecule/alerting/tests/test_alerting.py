"""Prometheus and Alertmanager together, end to end: a metric on a scrape
target, a PayCore rule, a route by severity, a receiver."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alerting_checks import eventually


def delivered(host):
    if not host.file("/var/tmp/webhook.jsonl").exists:
        return []
    lines = host.file("/var/tmp/webhook.jsonl").content_string.splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("alertname", "receiver"),
    [
        ("BackupStale", "ticket"),
        ("WireGuardHandshakeNeverEstablished", "pager"),
        # prepare.yml's malformed textfile (docs/monitoring.md: "a broken file raises an alert").
        ("NodeTextfileScrapeError", "ticket"),
    ],
)
def test_alert_fires_and_reaches_the_receiver_for_its_severity(host, alertname, receiver):
    """Textfile metric -> node-exporter -> Prometheus rule -> Alertmanager route -> webhook."""

    def check():
        posts = [
            (post["path"], post["body"]["receiver"], alert)
            for post in delivered(host)
            for alert in post["body"]["alerts"]
            if alert["labels"]["alertname"] == alertname and alert["status"] == "firing"
        ]
        assert posts, f"{alertname} not delivered yet"
        path, name, alert = posts[0]
        assert (path, name) == (f"/{receiver}", receiver)
        assert alert["annotations"]["runbook_url"].endswith(f"#{alertname.lower()}")
        assert alert["annotations"]["summary"]

    eventually(check, timeout=180)
