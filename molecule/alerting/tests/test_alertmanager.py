"""The alertmanager role on the alerting scenario's monitoring host."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alerting_checks import WG, api


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


def test_every_receiver_delivers_somewhere(host):
    config = yaml.safe_load(host.file("/etc/prometheus/alertmanager.yml").content_string)
    receivers = {r["name"]: set(r) - {"name"} for r in config["receivers"]}
    assert receivers == {"pager": {"webhook_configs"}, "ticket": {"webhook_configs"}}


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
