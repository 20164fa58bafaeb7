"""The prometheus role on the alerting scenario's monitoring host."""

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alerting_checks import RULE_FILES, WG, api, eventually


def test_prometheus_running(host):
    assert host.service("prometheus").is_running
    assert host.service("prometheus").is_enabled


def test_prometheus_listens_on_wireguard_and_localhost(host):
    assert host.socket(f"tcp://{WG}:9090").is_listening
    assert host.socket("tcp://127.0.0.1:9090").is_listening
    assert not host.socket("tcp://0.0.0.0:9090").is_listening
    assert api(host, "http://127.0.0.1:9090/api/v1/status/buildinfo")["status"] == "success"


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
        jobs = {t["labels"]["job"] for t in targets}
        # "ledger": converge.yml's stand-in target for the inhibition test.
        assert jobs == {"prometheus", "alertmanager", "node", "ledger"}
        assert {t["scrapeUrl"] for t in targets} == {
            f"http://{WG}:9090/metrics",
            f"http://{WG}:9093/metrics",
            f"http://{WG}:9100/metrics",
        }
        assert [(t["labels"]["job"], t["lastError"]) for t in targets if t["health"] != "up"] == []
        assert all(t["labels"]["instance"] == "paycore-alerting" for t in targets)

    eventually(check)


def test_recorded_slo_series_exist(host):
    """The series the Overview dashboard reads are recorded (no ledger traffic
    here: the error rate is 0, not missing)."""

    def check():
        result = api(host, "http://127.0.0.1:9090/api/v1/query?query=paycore:ledger_errors:rate5m")
        assert [float(r["value"][1]) for r in result["data"]["result"]] == [0.0]

    eventually(check)


def test_config_file_not_world_readable(host):
    config = host.file("/etc/prometheus/prometheus.yml")
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)
