"""Helpers shared by the alerting scenario's verifiers (not a test module)."""

import json
import time

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
