"""Prometheus and Alertmanager together, end to end: a metric on a scrape
target, a PayCore rule, a route by severity, a receiver."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alerting_checks import (
    INSTANCE,
    alertmanager_alerts,
    api,
    delivered,
    delivered_alerts,
    eventually,
)


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


def test_a_host_down_holds_back_the_alerts_about_it(host):
    """node-exporter stops: HostDown (critical) pages. The "ledger" target on the
    same instance (converge.yml) goes down with it, so LedgerApiDown fires in
    Prometheus too, but Alertmanager's inhibit rule holds it back: it is
    suppressed by HostDown and never reaches a receiver."""
    start = len(delivered(host))
    host.check_output("systemctl stop prometheus-node-exporter")
    try:

        def check():
            held = {
                a["labels"]["alertname"]: a
                for a in alertmanager_alerts(host)
                if a["labels"].get("instance") == INSTANCE
            }
            assert "HostDown" in held and "LedgerApiDown" in held, sorted(held)
            assert held["HostDown"]["status"]["state"] == "active"
            assert held["LedgerApiDown"]["status"]["state"] == "suppressed"
            assert held["LedgerApiDown"]["status"]["inhibitedBy"] == [
                held["HostDown"]["fingerprint"]
            ]
            paged = [
                (receiver, alert["labels"]["instance"])
                for receiver, alert in delivered_alerts(delivered(host)[start:])
                if alert["labels"]["alertname"] == "HostDown"
            ]
            assert ("pager", INSTANCE) in paged

        eventually(check, timeout=180)
        firing = api(host, "http://127.0.0.1:9090/api/v1/alerts")["data"]["alerts"]
        assert any(
            a["labels"]["alertname"] == "LedgerApiDown" and a["state"] == "firing" for a in firing
        ), "the rule itself must fire: only its delivery is held back"
        time.sleep(15)  # several group intervals' worth of chances to leak through
        names = {
            alert["labels"]["alertname"] for _, alert in delivered_alerts(delivered(host)[start:])
        }
        assert "LedgerApiDown" not in names
    finally:
        host.check_output("systemctl start prometheus-node-exporter")
