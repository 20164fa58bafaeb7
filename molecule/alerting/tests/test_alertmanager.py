"""The alertmanager role on the alerting scenario's monitoring host."""

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alerting_checks import (
    WG,
    alertmanager_alerts,
    api,
    delivered,
    delivered_alerts,
    eventually,
    fetch,
    post,
)

CONFIG = "/etc/prometheus/alertmanager.yml"


def test_alertmanager_running(host):
    assert host.service("prometheus-alertmanager").is_running
    assert host.service("prometheus-alertmanager").is_enabled


def test_alertmanager_listens_on_wireguard_and_localhost_without_cluster(host):
    assert host.socket(f"tcp://{WG}:9093").is_listening
    assert host.socket("tcp://127.0.0.1:9093").is_listening
    assert not host.socket("tcp://0.0.0.0:9093").is_listening
    assert not host.socket("tcp://0.0.0.0:9094").is_listening
    status = api(host, "http://127.0.0.1:9093/api/v2/status")
    assert status["cluster"]["status"] == "disabled"


def test_receivers_and_where_they_deliver(host):
    config = yaml.safe_load(host.file("/etc/prometheus/alertmanager.yml").content_string)
    receivers = {r["name"]: set(r) - {"name"} for r in config["receivers"]}
    # The Watchdog goes to its own receiver only: the dead man's switch on the
    # gateway where there is one; none here, so it goes nowhere (never to the pager).
    assert receivers == {
        "pager": {"webhook_configs"},
        "ticket": {"webhook_configs"},
        "watchdog": set(),
    }


def test_config_file_not_world_readable(host):
    config = host.file("/etc/prometheus/alertmanager.yml")
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)


def test_alertmanager_unit_hardened(host):
    props = host.check_output(
        "systemctl show prometheus-alertmanager -p NoNewPrivileges -p ProtectSystem -p PrivateTmp"
    )
    assert "NoNewPrivileges=yes" in props
    assert "ProtectSystem=strict" in props
    assert "PrivateTmp=yes" in props


def synthetic(name, severity, instance, ends):
    return {
        "labels": {"alertname": name, "severity": severity, "instance": instance},
        "annotations": {"summary": "posted by test_alertmanager.py"},
        "endsAt": ends.isoformat(),
    }


def test_postgres_down_holds_back_the_database_alerts(host):
    """The inhibit rules as Alertmanager applies them: alerts posted to its API
    for one database host. PostgresDown holds back the other PostgreSQL alerts
    and LedgerQueriesSlow of that host; an alert of another kind (HostRebooted)
    and the same alerts on another host are not held back."""
    now = datetime.now(UTC)
    names = [
        ("PostgresDown", "critical", "db-test"),
        ("PostgresConnectionsNearLimit", "warning", "db-test"),
        ("LedgerQueriesSlow", "warning", "db-test"),
        ("HostRebooted", "warning", "db-test"),
        ("PostgresConnectionsNearLimit", "warning", "db-other"),
    ]
    alerts = [synthetic(*name, now + timedelta(minutes=10)) for name in names]
    assert post(host, "http://127.0.0.1:9093/api/v2/alerts", alerts) == 200
    try:

        def check():
            held = {
                (a["labels"]["alertname"], a["labels"]["instance"]): a
                for a in alertmanager_alerts(host)
                if a["annotations"].get("summary") == "posted by test_alertmanager.py"
            }
            assert len(held) == len(names), sorted(held)
            source = held[("PostgresDown", "db-test")]
            states = {
                key: (a["status"]["state"], a["status"]["inhibitedBy"]) for key, a in held.items()
            }
            assert states == {
                ("PostgresDown", "db-test"): ("active", []),
                ("PostgresConnectionsNearLimit", "db-test"): (
                    "suppressed",
                    [source["fingerprint"]],
                ),
                ("LedgerQueriesSlow", "db-test"): ("suppressed", [source["fingerprint"]]),
                ("HostRebooted", "db-test"): ("active", []),
                ("PostgresConnectionsNearLimit", "db-other"): ("active", []),
            }

        eventually(check, timeout=60)
    finally:
        resolved = [synthetic(*name, datetime.now(UTC)) for name in names]
        post(host, "http://127.0.0.1:9093/api/v2/alerts", resolved)


def reload_succeeded(host):
    metrics = fetch(host, "http://127.0.0.1:9093/metrics")
    return "alertmanager_config_last_reload_successful 1" in metrics.splitlines()


def test_a_failed_reload_is_alerted_while_alertmanager_keeps_routing(host):
    """A broken configuration reloaded by hand: Alertmanager keeps the previous
    one, reports the failure, Prometheus raises AlertmanagerConfigReloadFailed
    and the still-running configuration delivers it to the ticket receiver."""
    start = len(delivered(host))
    host.check_output(f"cp -p {CONFIG} /root/alertmanager.yml.good")
    host.check_output(
        f"printf 'route: [\\n' >> {CONFIG} && systemctl reload prometheus-alertmanager"
    )
    try:

        def check():
            tickets = [
                alert["labels"]["instance"]
                for receiver, alert in delivered_alerts(delivered(host)[start:])
                if alert["labels"]["alertname"] == "AlertmanagerConfigReloadFailed"
                and receiver == "ticket"
            ]
            assert "paycore-alerting" in tickets, tickets

        eventually(check, timeout=180)
        assert host.service("prometheus-alertmanager").is_running
    finally:
        host.check_output(f"cp -p /root/alertmanager.yml.good {CONFIG}")
        host.check_output("systemctl reload prometheus-alertmanager")
    deadline = time.monotonic() + 30
    while not reload_succeeded(host) and time.monotonic() < deadline:
        time.sleep(2)
    assert reload_succeeded(host), "the restored configuration did not load"


def test_failing_notifications_are_alerted_and_delivered_once_the_receiver_is_back(host):
    """The webhook receiver stops: Alertmanager's next notification fails,
    Prometheus raises AlertmanagerNotificationsFailing (critical) from
    alertmanager_notifications_failed_total; when the receiver is back,
    Alertmanager's retries deliver it to the pager receiver."""
    start = len(delivered(host))
    host.check_output("systemctl stop webhook-recorder")
    try:
        now = datetime.now(UTC)
        trigger = synthetic("HostRebooted", "warning", "notify-test", now + timedelta(minutes=10))
        assert post(host, "http://127.0.0.1:9093/api/v2/alerts", [trigger]) == 200

        def firing_in_prometheus():
            alerts = api(host, "http://127.0.0.1:9090/api/v1/alerts")["data"]["alerts"]
            assert any(
                a["labels"]["alertname"] == "AlertmanagerNotificationsFailing"
                and a["labels"].get("integration") == "webhook"
                and a["state"] == "firing"
                for a in alerts
            ), "AlertmanagerNotificationsFailing not firing yet"

        eventually(firing_in_prometheus, timeout=180)
    finally:
        host.check_output("systemctl start webhook-recorder")

    def paged():
        names = [
            alert["labels"]["alertname"]
            for receiver, alert in delivered_alerts(delivered(host)[start:])
            if receiver == "pager"
        ]
        assert "AlertmanagerNotificationsFailing" in names, names

    try:
        eventually(paged, timeout=240)
    finally:
        resolved = synthetic("HostRebooted", "warning", "notify-test", datetime.now(UTC))
        post(host, "http://127.0.0.1:9093/api/v2/alerts", [resolved])
