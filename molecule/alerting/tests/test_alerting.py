"""Prometheus and Alertmanager on a converged monitoring host, end to end."""

import json
import re
import time

import pytest
import yaml

WG = "10.44.0.20"
RULE_FILES = ["ledger", "slo", "hosts", "postgres", "wireguard", "jobs", "prometheus"]


def api(host, url):
    script = (
        "import sys, urllib.request;"
        " print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    return json.loads(host.check_output(f"python3 -c '{script}' {url}"))


def eventually(check, timeout=120, step=3):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(step)


@pytest.mark.parametrize("service", ["prometheus", "prometheus-alertmanager"])
def test_services_running(host, service):
    assert host.service(service).is_running
    assert host.service(service).is_enabled


def test_prometheus_listens_on_wireguard_and_localhost(host):
    assert host.socket(f"tcp://{WG}:9090").is_listening
    assert host.socket("tcp://127.0.0.1:9090").is_listening
    assert not host.socket("tcp://0.0.0.0:9090").is_listening
    assert api(host, "http://127.0.0.1:9090/api/v1/status/buildinfo")["status"] == "success"


def test_alertmanager_listens_on_wireguard_and_localhost_without_cluster(host):
    assert host.socket(f"tcp://{WG}:9093").is_listening
    assert host.socket("tcp://127.0.0.1:9093").is_listening
    assert not host.socket("tcp://0.0.0.0:9093").is_listening
    assert not host.socket("tcp://0.0.0.0:9094").is_listening
    status = api(host, "http://127.0.0.1:9093/api/v2/status")
    assert status["cluster"]["status"] == "disabled"


def seconds(duration):
    units = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([ywdhms])", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def test_retention_covers_slo_windows(host):
    flags = api(host, "http://127.0.0.1:9090/api/v1/status/flags")["data"]
    # Prometheus normalises the flag (35d is shown as 5w).
    assert seconds(flags["storage.tsdb.retention.time"]) == 35 * 86400


def test_all_rule_groups_loaded(host):
    expected = set()
    for name in RULE_FILES:
        document = yaml.safe_load(host.file(f"/etc/prometheus/rules.d/{name}.yml").content_string)
        expected |= {group["name"] for group in document["groups"]}
    loaded = {
        group["name"] for group in api(host, "http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
    }
    assert expected and loaded == expected
    assert "paycore-slo-alerts" in loaded


def test_rules_evaluate_without_errors(host):
    def check():
        groups = api(host, "http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert all(rule.get("lastEvaluation", "").startswith("20") for rule in rules), (
            "not all rules evaluated yet"
        )
        assert [r["name"] for r in rules if r["health"] != "ok"] == []

    eventually(check)


def test_alertmanager_discovered(host):
    active = api(host, "http://127.0.0.1:9090/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"http://{WG}:9093/api/v2/alerts"]


def test_targets_up(host):
    def check():
        targets = api(host, "http://127.0.0.1:9090/api/v1/targets")["data"]["activeTargets"]
        assert {t["labels"]["job"] for t in targets} == {"prometheus", "alertmanager", "node"}
        assert {t["scrapeUrl"] for t in targets} == {
            f"http://{WG}:9090/metrics",
            f"http://{WG}:9093/metrics",
            f"http://{WG}:9100/metrics",
        }
        assert [(t["labels"]["job"], t["lastError"]) for t in targets if t["health"] != "up"] == []
        assert all(t["labels"]["instance"] == "paycore-alerting" for t in targets)

    eventually(check)


def delivered(host):
    if not host.file("/var/tmp/webhook.jsonl").exists:
        return []
    lines = host.file("/var/tmp/webhook.jsonl").content_string.splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("alertname", "receiver"),
    [("BackupStale", "ticket"), ("WireGuardHandshakeNeverEstablished", "pager")],
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


def test_config_files_not_world_readable(host):
    for path in ["/etc/prometheus/alertmanager.yml", "/etc/prometheus/prometheus.yml"]:
        config = host.file(path)
        assert config.user == "root"
        assert config.group == "prometheus"
        assert config.mode == 0o640


def test_alertmanager_unit_hardened(host):
    props = host.check_output(
        "systemctl show prometheus-alertmanager -p NoNewPrivileges -p ProtectSystem -p PrivateTmp"
    )
    assert "NoNewPrivileges=yes" in props
    assert "ProtectSystem=strict" in props
    assert "PrivateTmp=yes" in props
