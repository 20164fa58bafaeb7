"""The gateway's dead man's switch (roles/watchdog_receiver): what counts as a
heartbeat, what it exposes, and that it remembers the last one across a
restart. The script runs here on a free loopback port."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SCRIPT = (
    Path(__file__).resolve().parent.parent
    / "roles/watchdog_receiver/files/paycore-watchdog-receiver"
)


def notification(status="firing", alertname="Watchdog"):
    return {
        "version": "4",
        "status": status,
        "receiver": "watchdog",
        "alerts": [{"status": status, "labels": {"alertname": alertname, "severity": "none"}}],
    }


@pytest.fixture
def receiver(tmp_path):
    def start():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {"STATE_DIRECTORY": str(tmp_path), "PATH": "/usr/bin:/bin"}
        process = subprocess.Popen([sys.executable, str(SCRIPT), f"127.0.0.1:{port}"], env=env)
        base = f"http://127.0.0.1:{port}"
        for _ in range(50):
            try:
                urllib.request.urlopen(f"{base}/metrics", timeout=1)  # noqa: S310 (http on loopback)
                break
            except OSError:
                time.sleep(0.1)
        started.append(process)
        return base

    started = []
    yield start
    for process in started:
        process.terminate()
        process.wait(5)


def post(base, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/watchdog", data=data, method="POST")  # noqa: S310 (http on loopback)
    try:
        return urllib.request.urlopen(request, timeout=5).status  # noqa: S310 (http on loopback)
    except urllib.error.HTTPError as error:
        return error.code


def metrics(base):
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()  # noqa: S310 (http on loopback)
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))


def test_only_a_firing_watchdog_is_a_heartbeat(receiver):
    base = receiver()
    # Not armed before the first heartbeat: no series, so no alert on a new gateway.
    assert "paycore_watchdog_last_received_timestamp_seconds" not in metrics(base)
    assert post(base, notification(status="resolved")) == 200
    assert post(base, notification(alertname="HostDown")) == 200
    assert post(base, None, raw=b"not json") == 400
    assert post(base, {"alerts": "none"}) == 400
    assert "paycore_watchdog_last_received_timestamp_seconds" not in metrics(base)
    before = time.time()
    assert post(base, notification()) == 200
    seen = metrics(base)
    assert float(seen["paycore_watchdog_last_received_timestamp_seconds"]) >= before - 1
    assert seen['paycore_watchdog_notifications_total{outcome="received"}'] == "1"
    assert seen['paycore_watchdog_notifications_total{outcome="ignored"}'] == "2"
    assert seen['paycore_watchdog_notifications_total{outcome="rejected"}'] == "2"


def test_the_last_heartbeat_survives_a_restart(receiver):
    base = receiver()
    assert post(base, notification()) == 200
    last = metrics(base)["paycore_watchdog_last_received_timestamp_seconds"]
    again = receiver()
    assert metrics(again)["paycore_watchdog_last_received_timestamp_seconds"] == last
