"""End-to-end checks of the tunnel, the TLS edge and the firewalls.

Every host is reached with testinfra's docker backend; requests to the edge
and the port scans run on the outsider, i.e. from "the internet".
"""

import json
import time
import uuid

import pytest
import testinfra

GATEWAY_IP = "172.30.45.10"
PEER_IP = "172.30.45.20"
GATEWAY_WG = "10.44.0.1"
PEER_WG = "10.44.0.2"
EDGE = f"https://{GATEWAY_IP}"

gateway = testinfra.get_host("docker://paycore-network-gateway")
peer = testinfra.get_host("docker://paycore-network-peer")
outsider = testinfra.get_host("docker://paycore-network-outsider")

# Runs on the outsider: concurrent TCP connects, prints the open ports as JSON.
SCAN = r"""
import asyncio, json, sys
host, last = sys.argv[1], int(sys.argv[2])
async def probe(port, sem):
    async with sem:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.5)
        except Exception:
            return None
        w.close()
        return port
async def main():
    sem = asyncio.Semaphore(800)
    found = await asyncio.gather(*(probe(p, sem) for p in range(1, last + 1)))
    print(json.dumps([p for p in found if p]))
asyncio.run(main())
"""


def wait_for(check, timeout=90, interval=2):
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def latest_handshakes(host):
    out = host.check_output("wg show wg0 latest-handshakes")
    return [int(line.split()[1]) for line in out.splitlines() if line.strip()]


def curl(*args):
    """HTTPS request from the outsider; returns (status, headers, body)."""
    cmd = "curl -sk -o /tmp/body -D /tmp/headers -w '%{http_code}' " + " ".join(args)
    status = int(outsider.check_output(cmd))
    headers = {}
    for line in outsider.check_output("cat /tmp/headers").splitlines()[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return status, headers, outsider.check_output("cat /tmp/body")


def ping(host, address):
    return host.run(f"ping -c 1 -W 2 {address}").rc == 0


# --- tunnel ------------------------------------------------------------------


def test_private_keys_stay_private():
    for host in (gateway, peer):
        key = host.file("/etc/wireguard/wg0.key")
        assert key.mode == 0o600 and key.user == "root"
        assert "PrivateKey" not in host.check_output("cat /etc/wireguard/wg0.conf")


def test_userspace_implementation_chosen_where_kernel_has_none():
    if gateway.run("test -d /sys/module/wireguard").rc == 0:
        pytest.skip("kernel has WireGuard here: the userspace fallback is not used")
    for host in (gateway, peer):
        assert host.run("pgrep -x wireguard-go").rc == 0
        env = host.check_output("systemctl show wg-quick@wg0 -p Environment --value")
        assert "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go" in env


def test_handshake_on_both_sides():
    assert ping(peer, GATEWAY_WG) or wait_for(lambda: ping(peer, GATEWAY_WG), 30)
    for host in (gateway, peer):
        assert wait_for(lambda h=host: min(latest_handshakes(h), default=0) > 0, 30)


def test_gateway_listens_and_peer_keeps_alive():
    assert gateway.check_output("wg show wg0 listen-port") == "51820"
    assert peer.check_output("wg show wg0 persistent-keepalive").split()[1] == "25"
    assert peer.check_output("wg show wg0 endpoints").split()[1] == f"{GATEWAY_IP}:51820"


def test_ping_both_ways():
    assert ping(peer, GATEWAY_WG)
    assert ping(gateway, PEER_WG)


@pytest.mark.parametrize("restarted", ["gateway", "peer"])
def test_tunnel_returns_after_restart(restarted):
    host = gateway if restarted == "gateway" else peer
    before = time.time()
    host.check_output("systemctl restart wg-quick@wg0")
    assert (
        host.service("wg-quick@wg0").is_running
        or host.run("systemctl is-active wg-quick@wg0").rc == 0
    )
    # The peer's keepalives and handshake retries bring it back without help.
    assert wait_for(lambda: max(latest_handshakes(host), default=0) >= int(before), 150, 3)
    assert ping(gateway, PEER_WG) and ping(peer, GATEWAY_WG)


def test_syncconf_keeps_sessions():
    """Re-applying the config with wg syncconf leaves the session in place."""
    before = latest_handshakes(gateway)
    gateway.check_output("/usr/local/sbin/paycore-wg-sync wg0")
    assert gateway.check_output("wg show wg0 public-key") == gateway.check_output(
        "cat /etc/wireguard/wg0.pub"
    )
    assert latest_handshakes(gateway) == before
    assert ping(gateway, PEER_WG)


def test_peer_metrics_written():
    path = "/var/lib/prometheus/node-exporter/paycore_wireguard.prom"
    assert wait_for(lambda: gateway.file(path).exists, 40)
    # Refresh now (the timer's last run may predate the handshakes of the
    # restart tests); this runs the unit with its sandboxing.
    gateway.check_output("systemctl start paycore-wireguard-metrics.service")
    peer_key = peer.check_output("cat /etc/wireguard/wg0.pub")
    text = gateway.check_output(f"cat {path}")
    for name in (
        "paycore_wireguard_peer_latest_handshake_seconds",
        "paycore_wireguard_peer_receive_bytes",
        "paycore_wireguard_peer_transmit_bytes",
    ):
        line = next(line for line in text.splitlines() if line.startswith(name + "{"))
        assert f'interface="wg0",peer="{peer_key}"' in line
        assert float(line.rsplit(" ", 1)[1]) > 0
    private = gateway.check_output("cat /etc/wireguard/wg0.key")
    assert private not in text
    assert gateway.check_output("systemctl is-enabled paycore-wireguard-metrics.timer") == "enabled"


# --- edge --------------------------------------------------------------------


def test_https_reaches_backend_on_peer_with_request_id():
    request_id = f"test-{uuid.uuid4()}"
    status, headers, body = curl(f"-H 'X-Request-Id: {request_id}'", f"{EDGE}/v1/payments")
    assert status == 200
    echoed = json.loads(body)
    assert echoed["backend"] == "echo" and echoed["path"] == "/v1/payments"
    assert echoed["headers"]["x-request-id"] == request_id
    assert echoed["headers"]["x-forwarded-for"] == "172.30.45.30"
    assert headers["x-request-id"] == request_id
    assert headers["strict-transport-security"].startswith("max-age=63072000")


def test_request_id_generated_when_absent():
    status, headers, body = curl(f"{EDGE}/healthz")
    assert status == 200
    generated = json.loads(body)["headers"]["x-request-id"]
    assert len(generated) == 32 and headers["x-request-id"] == generated


@pytest.mark.parametrize("path", ["/metrics", "/", "/admin", "/v1"])
def test_only_api_paths_are_public(path):
    status, headers, body = curl(f"{EDGE}{path}")
    assert status == 404
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 404


def test_tls_versions():
    assert outsider.run(f"curl -sk --tlsv1.1 --tls-max 1.1 {EDGE}/healthz").rc != 0
    assert outsider.run(f"curl -sk --tlsv1.2 --tls-max 1.2 -o /dev/null {EDGE}/healthz").rc == 0
    assert outsider.run(f"curl -sk --tlsv1.3 -o /dev/null {EDGE}/healthz").rc == 0


def test_body_over_limit_is_413_problem():
    outsider.check_output("head -c 1100000 /dev/zero > /tmp/big")
    status, headers, body = curl("-X POST --data-binary @/tmp/big", f"{EDGE}/v1/payments")
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 413 and problem["code"] == "body_too_large"
    assert {"type", "title", "detail"} <= problem.keys()
    # Just under the limit goes through.
    outsider.check_output("head -c 1000000 /dev/zero > /tmp/ok")
    time.sleep(1)
    status, _, body = curl("-X POST --data-binary @/tmp/ok", f"{EDGE}/v1/payments")
    assert status == 200 and json.loads(body)["body_bytes"] == 1000000


def test_rate_limit_is_429_problem():
    time.sleep(3)  # let the bucket refill after earlier tests
    # Stop at the first 429, keeping its headers and body.
    codes = outsider.check_output(
        "for i in $(seq 60); do "
        "c=$(curl -sk -o /tmp/body -D /tmp/headers -w '%{http_code}' "
        f"{EDGE}/healthz); echo $c; [ $c = 429 ] && break; done"
    ).split()
    assert codes[0] == "200" and codes[-1] == "429"
    headers = outsider.check_output("cat /tmp/headers").lower()
    assert "content-type: application/problem+json" in headers
    assert "retry-after: 1" in headers
    assert json.loads(outsider.check_output("cat /tmp/body"))["code"] == "rate_limited"
    time.sleep(3)


def test_access_log_is_json():
    line = gateway.check_output("tail -n 1 /var/log/nginx/paycore-edge.access.log")
    entry = json.loads(line)
    assert {"request_id", "status", "upstream_addr", "request_time"} <= entry.keys()


# --- firewall ----------------------------------------------------------------


def scan(address):
    outsider.check_output(f"cat > /tmp/scan.py <<'EOF'\n{SCAN}\nEOF")
    return json.loads(outsider.check_output(f"python3 /tmp/scan.py {address} 10000"))


def test_gateway_exposes_only_https():
    assert scan(GATEWAY_IP) == [443]


def test_peer_exposes_nothing():
    # The backend listens on 0.0.0.0:8080; only the firewall keeps it private.
    assert peer.socket("tcp://0.0.0.0:8080").is_listening
    assert scan(PEER_IP) == []


def test_peer_service_reachable_through_tunnel_only():
    fetch = (
        "python3 -c 'import urllib.request as u; u.urlopen(\"http://{}:8080/healthz\", timeout=5)'"
    )
    assert gateway.run(fetch.format(PEER_WG)).rc == 0
    assert gateway.run(fetch.format(PEER_IP)).rc != 0


def test_rulesets_persist_and_default_deny():
    for host in (gateway, peer):
        assert host.check_output("systemctl is-enabled nftables") == "enabled"
        ruleset = host.check_output("nft list table inet paycore")
        assert "hook input priority filter; policy drop;" in ruleset
        assert "hook forward priority filter; policy drop;" in ruleset
        assert host.run("nft -c -f /etc/nftables.conf").rc == 0
    assert "dport 8080" not in gateway.check_output("nft list table inet paycore")
    assert 'iifname "wg0" ip saddr 10.44.0.0/24 tcp dport 8080 accept' in peer.check_output(
        "nft list table inet paycore"
    )
