"""Drills, in order, on the scenario's hosts once test_network.py is done
(each leaves the edge serving, until the last): a plain restart of the
gateway; the gateway stopped (the homelab pages); the gateway replaced by
the documented procedure, run as written in docs/network.md; every homelab
host stopped (the new gateway pages). A merchant on the outsider calls
/healthz through the edge twice a second, verifying TLS; the webhook
recorder on the outsider is the pager. Figures go to the run's summary."""

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from network_helpers import (
    FIGURES,
    GATEWAY_IP,
    docker,
    gateway,
    gateway2,
    http_get,
    latest_handshakes,
    outsider,
    peer,
    peer2,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[3]
RECORD = "/var/tmp/webhook.jsonl"
MERCHANT_LOG = "/tmp/merchant.log"
# Twice a second, TLS verified for the public name (the outsider trusts the
# ACME CA), 2 s at most each: one line "unix-time status" per request.
MERCHANT_LOOP = (
    "while :; do t=$(date +%s.%N); "
    "c=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "
    f"--resolve api.paycore.test:443:{GATEWAY_IP} https://api.paycore.test/healthz); "
    f'echo "$t $c" >> {MERCHANT_LOG}; sleep 0.5; done'
)


class Merchant:
    def __init__(self, serving=True):
        self.serving = serving  # the edge serves when it starts: wait for a first 200

    def __enter__(self):
        outsider.run(f"systemctl stop merchant; rm -f {MERCHANT_LOG}")
        loop = shlex.quote(MERCHANT_LOOP)
        outsider.check_output(f"systemd-run --unit merchant /bin/bash -c {loop}")
        if self.serving:
            assert wait_for(lambda: any(c == 200 for _, c in self.results()), 30, 1)
        return self

    def __exit__(self, *exc):
        outsider.run("systemctl stop merchant")

    @staticmethod
    def results():
        text = outsider.run(f"cat {MERCHANT_LOG}").stdout
        return [(float(t), int(c)) for t, c in (line.split() for line in text.splitlines())]

    def served_again(self, since, stable=10):
        """Time of the first 200 after the last failure since `since`, once
        the edge has answered 200 for `stable` seconds in a row (None before)."""
        results = [(t, c) for t, c in self.results() if t >= since]
        failures = [t for t, c in results if c != 200]
        after = [t for t, c in results if c == 200 and (not failures or t > failures[-1])]
        if not after or results[-1][0] - after[0] < stable:
            return None
        return after[0]

    def failed_requests(self, since):
        return sum(c != 200 for t, c in self.results() if t >= since)


def pages(since, alertname, status="firing"):
    """(arrival time, instance) of each pager notification carrying the alert."""
    found = []
    for line in outsider.run(f"cat {RECORD}").stdout.splitlines():
        entry = json.loads(line)
        if entry["time"] < since or entry["path"] != "/pager":
            continue
        for alert in entry["body"]["alerts"]:
            if alert["labels"]["alertname"] == alertname and alert["status"] == status:
                found.append((entry["time"], alert["labels"].get("instance")))
    return found


def group_interval_s():
    """The pager route's group_interval (roles/alertmanager's default, e.g. 5m)."""
    defaults = (ROOT / "roles" / "alertmanager" / "defaults" / "main.yml").read_text()
    value = re.search(r"^alertmanager_group_interval: (\d+)([sm])$", defaults, re.M)
    return int(value.group(1)) * (60 if value.group(2) == "m" else 1)


def page_patience(start, alertname, usual):
    """How long a page of `alertname` may take from `start`. Alertmanager keeps
    an (alertname, instance) group that has notified until its resolution has
    gone out, at the group's next tick: if an earlier drill paged the same
    alert (a restart slower than its `for:` under load), the new page waits
    for that tick, up to group_interval after the earlier page."""
    interval = group_interval_s()
    earlier = [t for t, _ in pages(start - interval, alertname) if t < start]
    if not earlier:
        return usual
    print(f"{alertname} paged {start - max(earlier):.0f} s before this drill: its group is open")
    return max(usual, max(earlier) + interval + usual - start)


def every_peer_handshaked(host, since):
    """Every peer of the gateway `host` has completed a handshake since `since`."""
    if host.run("wg show wg0 latest-handshakes").rc != 0:
        return False  # the tunnel is not up yet
    handshakes = latest_handshakes(host)
    return len(handshakes) == 2 and min(handshakes.values()) >= int(since)


def measure(name, seconds):
    FIGURES[name] = round(seconds, 1)
    print(f"{name}: {seconds:.1f} s")


def test_plain_gateway_restart():
    """The gateway host restarts (EC2 reboot): systemd brings back WireGuard,
    the firewall and nginx; the peers' probe makes them handshake again."""
    with Merchant() as merchant:
        start = time.time()
        docker("restart", "paycore-network-gateway")
        assert wait_for(lambda: every_peer_handshaked(gateway, start), 180, 1)
        measure("gateway restart: every peer's handshake", time.time() - start)
        assert wait_for(lambda: merchant.served_again(start), 180, 1)
        measure("gateway restart: first 200 through the edge", merchant.served_again(start) - start)


def test_homelab_pages_when_the_gateway_stops():
    """The gateway goes away: the homelab's Prometheus (GatewayDown, its
    exporters unreachable through the tunnel) pages through the homelab's
    Alertmanager, with the production `for:` and group wait."""
    start = time.time()
    docker("stop", "paycore-network-gateway")
    try:
        patience = page_patience(start, "GatewayDown", 360)
        assert wait_for(lambda: pages(start, "GatewayDown"), patience, 2), "GatewayDown never paged"
        arrived, instance = pages(start, "GatewayDown")[0]
        assert instance == "paycore-network-gateway"
        measure("gateway stopped: homelab page (GatewayDown)", arrived - start)
    finally:
        started = time.time()
        docker("start", "paycore-network-gateway")
    with Merchant(serving=False) as merchant:
        assert wait_for(lambda: merchant.served_again(0, stable=2), 180, 1)
        back = merchant.served_again(0, stable=2)
        measure("gateway started again (after 2 min down): first 200", back - started)


def documented_procedure(marker):
    """The shell commands of the block that follows `<!-- marker -->` in
    docs/network.md, one per command (comments dropped, continuations joined)."""
    text = (ROOT / "docs" / "network.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)```", text, re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def run_documented(command):
    env = {**os.environ, "INVENTORY": os.environ["MOLECULE_INVENTORY_FILE"]}
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_replacement_keeps_the_tunnel():
    """docs/network.md, "Replacing the gateway", run as written: the blank
    replacement is configured beside the gateway in service (its own address;
    the WireGuard key from the secret store, the certificate taken over), then
    the public address moves to it and the old one stops. The peers were not
    touched: they reconnect to the same public key by themselves."""
    configure, cutover = documented_procedure("drill: replace-gateway")
    started = time.time()
    run_documented(configure)
    measure("replacement: configuring it beside the gateway (site.yml)", time.time() - started)
    # Same identity in the tunnel, same certificate, before the cutover.
    assert gateway2.check_output("cat /etc/wireguard/wg0.pub") == gateway.check_output(
        "cat /etc/wireguard/wg0.pub"
    )
    serial = "openssl x509 -noout -serial -in /etc/letsencrypt/live/api.paycore.test/cert.pem"
    assert gateway2.check_output(serial) == gateway.check_output(serial)
    peer_confs = [host.check_output("sha256sum /etc/wireguard/wg0.conf") for host in (peer, peer2)]

    with Merchant() as merchant:
        start = time.time()
        run_documented(cutover)
        assert wait_for(lambda: every_peer_handshaked(gateway2, start), 180, 1)
        measure("replacement: every peer's handshake with the new gateway", time.time() - start)
        assert wait_for(lambda: merchant.served_again(start), 180, 1)
        back = merchant.served_again(start)
        measure("replacement: merchant-visible downtime from the cutover", back - start)
        FIGURES["replacement: failed merchant requests (2/s)"] = merchant.failed_requests(start)
    assert [host.check_output("sha256sum /etc/wireguard/wg0.conf") for host in (peer, peer2)] == (
        peer_confs
    )
    running = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", "paycore-network-gateway"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert running.stdout.strip() == "false", "the old gateway still runs"


def watchdog_heard(host):
    metrics = http_get(host, "http://127.0.0.1:9095/metrics") or ""
    return "\npaycore_watchdog_last_received_timestamp_seconds " in metrics


def test_gateway_pages_when_the_homelab_goes_dark():
    """Every homelab host stops (power or uplink lost): nothing there can
    page. The new gateway's dead man's switch, armed by the homelab's
    Watchdog since the cutover, pages through the gateway's own Alertmanager."""
    assert wait_for(lambda: watchdog_heard(gateway2), 180, 2), "no Watchdog reached the new gateway"
    start = time.time()
    docker("stop", "paycore-network-peer", "paycore-network-peer2")
    assert wait_for(lambda: pages(start, "HomelabWatchdogMissing"), 420, 2), "no page from outside"
    arrived, instance = pages(start, "HomelabWatchdogMissing")[0]
    assert instance == "paycore-network-gateway2"
    measure("homelab stopped: page from the gateway (HomelabWatchdogMissing)", arrived - start)
    probe = pages(start, "EdgeProbeFailed")
    if probe:
        measure("homelab stopped: page from the gateway (EdgeProbeFailed)", probe[0][0] - start)
