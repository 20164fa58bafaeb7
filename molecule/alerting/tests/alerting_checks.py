"""Helpers shared by the alerting scenario's verifiers (not a test module)."""

import json
import time

WG = "10.44.0.20"
RULE_FILES = ["ledger", "slo", "hosts", "postgres", "wireguard", "jobs", "prometheus", "edge"]


def fetch(host, url):
    script = (
        "import sys, urllib.request;"
        " print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    return host.check_output(f"python3 -c '{script}' {url}")


def api(host, url):
    return json.loads(fetch(host, url))


def eventually(check, timeout=120, step=3):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(step)


WEBHOOK_RECORD = "/var/tmp/webhook.jsonl"
INSTANCE = "paycore-alerting"


def post(host, url, body):
    """POSTs JSON to a URL from inside the host; returns the HTTP status."""
    script = (
        "import sys, urllib.request;"
        " req = urllib.request.Request(sys.argv[1], data=sys.stdin.buffer.read(),"
        " headers={'Content-Type': 'application/json'});"
        " print(urllib.request.urlopen(req, timeout=5).status)"
    )
    command = f"python3 -c \"{script}\" {url} <<'EOF'\n{json.dumps(body)}\nEOF"
    return int(host.check_output(command))


def delivered(host):
    """What Alertmanager posted to the webhook recorder, in order."""
    if not host.file(WEBHOOK_RECORD).exists:
        return []
    lines = host.file(WEBHOOK_RECORD).content_string.splitlines()
    return [json.loads(line) for line in lines]


def delivered_alerts(posts, status="firing"):
    """(receiver, alert) of every alert in the posts with that status."""
    return [
        (post["body"]["receiver"], alert)
        for post in posts
        for alert in post["body"]["alerts"]
        if alert["status"] == status
    ]


def alertmanager_alerts(host):
    """Every alert Alertmanager holds: active, suppressed (inhibited or silenced)."""
    return api(host, "http://127.0.0.1:9093/api/v2/alerts")
