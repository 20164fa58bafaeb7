"""End-to-end checks of the tunnel, the TLS edge and the firewalls.

Every host is reached with testinfra's docker backend; requests to the edge
and the port scans run on the outsider, i.e. from "the internet". Some tests
re-run a role on one host with other settings (`apply_role`), the way an
operator would, and check what it does and what it refuses to do.
"""

import datetime
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from network_helpers import (
    EDGE,
    ERROR_LOG,
    GATEWAY_IP,
    GATEWAY_WG,
    METRICS,
    OUTSIDER_IP,
    PEER2_IP,
    PEER2_WG,
    PEER_IP,
    PEER_WG,
    PORT_SCAN,
    apply_role,
    both_backends_serve,
    connects,
    curl,
    docker,
    gateway,
    http_get,
    latest_handshakes,
    outsider,
    peer,
    peer2,
    ping,
    recap,
    settle_rate_limit,
    task_output,
    wait_for,
)

# --- tunnel ------------------------------------------------------------------


def test_private_keys_stay_private():
    for host in (gateway, peer, peer2):
        key = host.file("/etc/wireguard/wg0.key")
        assert key.mode == 0o600 and key.user == "root"
        assert "PrivateKey" not in host.check_output("cat /etc/wireguard/wg0.conf")


def test_userspace_implementation_chosen_where_kernel_has_none():
    if gateway.run("test -d /sys/module/wireguard").rc == 0:
        pytest.skip("kernel has WireGuard here: the userspace fallback is not used")
    for host in (gateway, peer, peer2):
        assert host.run("pgrep -x wireguard-go").rc == 0
        env = host.check_output("systemctl show wg-quick@wg0 -p Environment --value")
        assert "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go" in env


def test_handshake_on_both_sides():
    for host, address in ((peer, GATEWAY_WG), (peer2, GATEWAY_WG)):
        assert ping(host, address) or wait_for(lambda h=host, a=address: ping(h, a), 30)
    for host in (gateway, peer, peer2):
        assert wait_for(lambda h=host: min(latest_handshakes(h).values(), default=0) > 0, 30)
    assert len(latest_handshakes(gateway)) == 2


def test_gateway_listens_and_peers_keep_alive():
    assert gateway.check_output("wg show wg0 listen-port") == "51820"
    for host in (peer, peer2):
        assert host.check_output("wg show wg0 persistent-keepalive").split()[1] == "25"
        assert host.check_output("wg show wg0 endpoints").split()[1] == f"{GATEWAY_IP}:51820"


def test_ping_both_ways_and_between_peers_through_the_gateway():
    assert ping(peer, GATEWAY_WG) and ping(gateway, PEER_WG)
    assert ping(peer2, GATEWAY_WG) and ping(gateway, PEER2_WG)
    # Homelab to homelab: relayed by the gateway (its forward chain).
    assert ping(peer, PEER2_WG) and ping(peer2, PEER_WG)


@pytest.mark.parametrize("restarted", ["gateway", "peer"])
def test_tunnel_returns_after_restart(restarted):
    host = gateway if restarted == "gateway" else peer
    before = time.time()
    host.check_output("systemctl restart wg-quick@wg0")
    assert host.run("systemctl is-active wg-quick@wg0").rc == 0
    # No traffic is sent to help: the peers' own timers bring the tunnel back.
    # A restarted peer handshakes at once; after a gateway restart each peer
    # keeps its old session until that is 120 s old (WireGuard's
    # REKEY_AFTER_TIME), then rekeys at its next keepalive: at most 145 s.
    assert wait_for(lambda: min(latest_handshakes(host).values(), default=0) >= int(before), 200, 1)
    # With the peers' probe (wireguard_peer_probe_interval) a restarted
    # gateway has every peer back within about 20 s, not up to 145 s.
    print(f"{restarted} restart: every handshake again after {time.time() - before:.0f} s")
    assert ping(gateway, PEER_WG) and ping(peer, GATEWAY_WG)
    assert ping(gateway, PEER2_WG)


def test_syncconf_keeps_sessions():
    """Re-applying the config with wg syncconf leaves the session in place."""
    before = latest_handshakes(gateway)
    gateway.check_output("/usr/local/sbin/paycore-wg-sync wg0")
    assert gateway.check_output("wg show wg0 public-key") == gateway.check_output(
        "cat /etc/wireguard/wg0.pub"
    )
    assert latest_handshakes(gateway) == before
    assert ping(gateway, PEER_WG)


def test_new_mtu_restarts_the_tunnel_once():
    """An [Interface] change (here the MTU) is applied by one restart of
    wg-quick; syncconf alone would write it and never apply it."""
    for mtu in (1380, 1420):  # then back to the scenario's value
        rc, out = apply_role("wireguard", "paycore-network-peer", {"wireguard_mtu": mtu})
        assert rc == 0, out
        assert f"mtu {mtu} " in peer.check_output("ip link show wg0")
        assert "changed: [paycore-network-peer]" in task_output(out, "Restart the tunnel")
        assert "changed:" not in task_output(out, "Sync wireguard")
        assert wait_for(lambda: ping(peer, GATEWAY_WG), 30, 1)
    assert wait_for(lambda: ping(gateway, PEER_WG), 30, 1)


def test_tunnel_addresses_must_be_unique_and_inside_the_network():
    conf = peer.check_output("sha256sum /etc/wireguard/wg0.conf")
    rc, out = apply_role("wireguard", "paycore-network-peer", {"wireguard_address": GATEWAY_WG})
    assert rc != 0 and f"share {GATEWAY_WG}" in out, out
    rc, out = apply_role("wireguard", "paycore-network-peer", {"wireguard_network": "10.99.0.0/24"})
    assert rc != 0 and f"{PEER_WG} is outside 10.99.0.0/24" in out, out
    assert peer.check_output("sha256sum /etc/wireguard/wg0.conf") == conf


def test_gateway_key_comes_from_the_secret_store():
    """The gateway's private key is the one given (wireguard_private_key, from
    the stand-in secret store prepare.yml filled), never generated, and the
    peers know its public key; a malformed key is refused without being shown."""
    secrets = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "secrets"
    given = (secrets / "wireguard_gateway_private_key").read_text().strip()
    assert gateway.check_output("cat /etc/wireguard/wg0.key") == given
    public = gateway.check_output("cat /etc/wireguard/wg0.pub")
    assert gateway.check_output("wg show wg0 public-key") == public
    assert f"PublicKey = {public}" in peer.check_output("cat /etc/wireguard/wg0.conf")
    bad = "Zm9v" * 11  # 44 characters, but not a key
    rc, out = apply_role("wireguard", "paycore-network-gateway", {"wireguard_private_key": bad})
    assert rc != 0 and "is not a WireGuard private key" in out, out
    assert bad not in out
    assert gateway.check_output("cat /etc/wireguard/wg0.key") == given


def test_peer_metrics_written():
    assert wait_for(lambda: gateway.file(METRICS).exists, 40)
    # Refresh now (the timer's last run may predate the handshakes of the
    # restart tests); this runs the unit with its sandboxing.
    gateway.check_output("systemctl start paycore-wireguard-metrics.service")
    text = gateway.check_output(f"cat {METRICS}")
    for host in (peer, peer2):
        peer_key = host.check_output("cat /etc/wireguard/wg0.pub")
        for name in (
            "paycore_wireguard_peer_latest_handshake_seconds",
            "paycore_wireguard_peer_receive_bytes",
            "paycore_wireguard_peer_transmit_bytes",
        ):
            line = next(
                line
                for line in text.splitlines()
                if line.startswith(name + "{") and f'peer="{peer_key}"' in line
            )
            assert 'interface="wg0"' in line
            assert float(line.rsplit(" ", 1)[1]) > 0
    private = gateway.check_output("cat /etc/wireguard/wg0.key")
    assert private not in text
    assert gateway.check_output("systemctl is-enabled paycore-wireguard-metrics.timer") == "enabled"


def test_metrics_unit_fails_when_wg_fails():
    """A failing `wg` fails the unit and leaves the last file in place, rather
    than replacing it with one that has no series."""
    gateway.check_output("systemctl start paycore-wireguard-metrics.service")
    before = gateway.check_output(f"sha256sum {METRICS}")
    # The unit's PATH has /usr/local/bin ahead of /usr/bin.
    gateway.check_output("printf '#!/bin/sh\\nexit 1\\n' > /usr/local/bin/wg")
    gateway.check_output("chmod 0755 /usr/local/bin/wg")
    try:
        failed = gateway.run("systemctl start paycore-wireguard-metrics.service")
    finally:
        gateway.check_output("rm -f /usr/local/bin/wg")
    assert failed.rc != 0
    assert gateway.check_output(f"sha256sum {METRICS}") == before
    gateway.check_output("systemctl reset-failed paycore-wireguard-metrics.service")
    gateway.check_output("systemctl start paycore-wireguard-metrics.service")


# --- edge --------------------------------------------------------------------


def test_https_reaches_backend_on_peer_with_request_id():
    request_id = f"test-{uuid.uuid4()}"
    status, headers, body = curl(f"-H 'X-Request-Id: {request_id}'", f"{EDGE}/v1/payments")
    assert status == 200
    echoed = json.loads(body)
    assert echoed["backend"] == "echo" and echoed["path"] == "/v1/payments"
    assert echoed["headers"]["x-request-id"] == request_id
    assert echoed["headers"]["x-forwarded-for"] == OUTSIDER_IP
    assert headers["x-request-id"] == request_id
    assert headers["strict-transport-security"].startswith("max-age=63072000")
    assert headers["x-content-type-options"] == "nosniff"


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
    assert headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["status"] == 404


def test_tls_versions():
    assert outsider.run(f"curl -sk --tlsv1.1 --tls-max 1.1 {EDGE}/healthz").rc != 0
    assert outsider.run(f"curl -sk --tlsv1.2 --tls-max 1.2 -o /dev/null {EDGE}/healthz").rc == 0
    assert outsider.run(f"curl -sk --tlsv1.3 -o /dev/null {EDGE}/healthz").rc == 0


def test_edge_listens_on_ipv6_only_where_the_kernel_has_it():
    has_ipv6 = gateway.file("/proc/net/if_inet6").exists
    assert ("[::]:443" in gateway.check_output("ss -ltnH")) == has_ipv6


def test_body_over_limit_is_413_problem():
    outsider.check_output("head -c 1100000 /dev/zero > /tmp/big")
    status, headers, body = curl("-X POST --data-binary @/tmp/big", f"{EDGE}/v1/payments")
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-content-type-options"] == "nosniff"
    problem = json.loads(body)
    # The ledger's own code for the same condition.
    assert problem["status"] == 413 and problem["code"] == "payload_too_large"
    assert problem["type"].endswith("/payload-too-large")
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
    assert "x-content-type-options: nosniff" in headers
    assert json.loads(outsider.check_output("cat /tmp/body"))["code"] == "rate_limited"
    time.sleep(3)


def test_access_log_is_json():
    line = gateway.check_output("tail -n 1 /var/log/nginx/paycore-edge.access.log")
    entry = json.loads(line)
    assert {"request_id", "status", "upstream_addr", "request_time"} <= entry.keys()


def test_ledger_503_passes_through_and_takes_no_backend_out():
    """A 503 of the ledger's own (database_unavailable, ledger_busy) reaches the
    client with its Retry-After, is not retried elsewhere, and leaves both
    backends in rotation."""
    settle_rate_limit()
    request_id = f"busy-{uuid.uuid4()}"
    status, headers, body = curl(f"-H 'X-Request-Id: {request_id}'", f"{EDGE}/v1/status/503")
    assert status == 503
    assert json.loads(body)["backend"] == "echo"  # the backend's answer, not the edge's
    assert headers["retry-after"] == "1"
    logged = gateway.check_output(
        f'grep -F \'"request_id":"{request_id}"\' /var/log/nginx/paycore-edge.access.log'
    )
    assert "," not in json.loads(logged)["upstream_addr"]  # one backend tried
    assert both_backends_serve()


def test_no_backend_answering_is_503_problem_with_retry_after():
    settle_rate_limit()
    for host in (peer, peer2):
        host.check_output("systemctl stop paycore-echo-backend")
    try:
        status, headers, body = curl(f"{EDGE}/v1/accounts")
    finally:
        for host in (peer, peer2):
            host.check_output("systemctl start paycore-echo-backend")
    assert status == 503
    assert headers["content-type"] == "application/problem+json"
    assert headers["retry-after"] == "1"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["strict-transport-security"].startswith("max-age=")
    assert json.loads(body)["code"] == "upstream_unavailable"
    # Both were taken out for fail_timeout (10 s) and come back by themselves.
    assert wait_for(both_backends_serve, 40, 2)


def test_edge_fails_over_fast_when_a_backend_host_vanishes():
    """peer2 is frozen (docker pause): its wireguard-go stops, so packets into
    the tunnel vanish without an answer or a reset, as when a host dies, while
    nginx holds idle keepalive connections to it. The site scenario's check:
    sequential GETs with curl --max-time 20 all succeed. Here also: at most one
    waits out proxy_read_timeout (10 s) on a connection left over from before,
    the backend is then out for every worker, and it is back in rotation soon
    after it returns."""
    settle_rate_limit()
    # Idle connections to both backends in the workers' pools.
    outsider.check_output(
        f"for i in $(seq 8); do curl -sk -o /dev/null {EDGE}/v1/warm/$i & done; wait"
    )
    time.sleep(2)
    log_lines = int(gateway.check_output(f"wc -l < {ERROR_LOG}"))
    docker("pause", "paycore-network-peer2")
    results = []
    try:
        for i in range(20):
            run = outsider.run(
                "curl -sk --max-time 20 -o /tmp/failover -w '%{http_code} %{time_total}' "
                f"{EDGE}/v1/failover/{i}"
            )
            status, seconds = run.stdout.split()
            body = outsider.check_output("cat /tmp/failover") if status == "200" else ""
            results.append((int(status), float(seconds), body))
            time.sleep(0.25)
    finally:
        docker("unpause", "paycore-network-peer2")
    summary = [(status, round(seconds, 2)) for status, seconds, _ in results]
    print("failover (status, seconds):", summary)
    assert [status for status, _, _ in results] == [200] * 20, summary
    assert {json.loads(body)["server"] for _, _, body in results} == {PEER_WG}
    seconds = [s for _, s, _ in results]
    assert max(seconds) < 13, summary
    assert sum(s > 3 for s in seconds) <= 1, summary
    errors = gateway.check_output(f"tail -n +{log_lines + 1} {ERROR_LOG}")
    disabled = [line for line in errors.splitlines() if "temporarily disabled" in line]
    assert any(PEER2_WG in line for line in disabled), errors
    # Back in rotation after fail_timeout, by itself.
    assert wait_for(both_backends_serve, 60, 2)


def served_certificate_info(host=outsider, address=GATEWAY_IP):
    """Issuer, serial and whether it verifies (the outsider trusts Pebble's
    root, as any host trusts Let's Encrypt's) of the certificate the edge serves."""
    out = host.check_output(
        f"openssl s_client -connect {address}:443 -servername api.paycore.test "
        "-verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -issuer -serial"
    )
    return dict(line.split("=", 1) for line in out.splitlines())


def test_certificate_from_acme_is_trusted():
    """converge.yml obtained the edge's certificate from Pebble (Let's
    Encrypt's stand-in) over a real http-01 exchange on port 80; a client that
    trusts the ACME CA verifies it for the public name, without -k."""
    info = served_certificate_info()
    assert "Pebble" in info["issuer"], info
    run = outsider.run(
        "curl -sS -o /dev/null -w '%{http_code}' --resolve api.paycore.test:443:172.30.45.10 "
        "https://api.paycore.test/healthz"
    )
    assert run.rc == 0 and run.stdout == "200", run.stderr
    assert gateway.check_output("systemctl is-enabled certbot.timer") == "enabled"


def test_plain_http_serves_acme_challenges_only():
    """Port 80 answers http-01 challenges (a file in the webroot) and refuses
    everything else with a problem, never a redirect."""
    gateway.check_output(
        "install -d /var/lib/paycore-acme/.well-known/acme-challenge && "
        "echo token-content > /var/lib/paycore-acme/.well-known/acme-challenge/t0ken"
    )
    try:
        answer = outsider.check_output(
            f"curl -sS http://{GATEWAY_IP}/.well-known/acme-challenge/t0ken"
        )
    finally:
        gateway.check_output("rm -f /var/lib/paycore-acme/.well-known/acme-challenge/t0ken")
    assert answer == "token-content"
    status, headers, body = curl_http(f"http://{GATEWAY_IP}/v1/accounts")
    assert status == 400 and "location" not in headers
    assert json.loads(body)["code"] == "https_required"


def curl_http(url):
    cmd = f"curl -s --max-time 20 -o /tmp/body -D /tmp/headers -w '%{{http_code}}' {url}"
    status = int(outsider.check_output(cmd))
    lines = outsider.check_output("cat /tmp/headers").splitlines()[1:]
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines) if v}
    return status, headers, outsider.check_output("cat /tmp/body")


def test_certificate_renews_for_real():
    """certbot renews through Pebble (forced: the certificate is far from
    expiring) and its deploy hook tests and reloads nginx: the new
    certificate is served, with no restart."""
    before = served_certificate_info()
    nginx_pid = gateway.check_output("cat /run/nginx.pid")
    gateway.check_output("certbot renew --force-renewal --no-random-sleep-on-renew -q")
    assert wait_for(lambda: served_certificate_info()["serial"] != before["serial"], 20, 1)
    assert gateway.check_output("cat /run/nginx.pid") == nginx_pid


def test_no_certificate_stops_the_play():
    """No silent fallback: a given pair with edge_tls_source acme, or given
    without the pair, stops the play before anything changes."""
    files = "sha256sum /etc/nginx/nginx.conf"
    before = gateway.check_output(files)
    for extra, message in (
        (
            {"edge_tls_source": "given"},
            "It needs both edge_tls_certificate and edge_tls_private_key",
        ),
        (
            {"edge_tls_certificate": "x", "edge_tls_private_key": "y"},
            "use them with edge_tls_source: given",
        ),
    ):
        rc, out = apply_role("edge", "paycore-network-gateway", extra)
        assert rc != 0 and message in " ".join(out.split()), out
    assert gateway.check_output(files) == before


def _self_signed(common_name):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = time.time()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(now - 60, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def served_certificate():
    """The certificate the edge presents, base64 only (no PEM line breaks)."""
    script = f'import ssl; print(ssl.get_server_certificate(("{GATEWAY_IP}", 443)))'
    return "".join(outsider.check_output(f"python3 -c '{script}'").split())


def test_given_certificate_must_match_its_key():
    """A certificate and key that do not belong together (or a key that cannot
    be read) fail the role before anything is written; a matching pair is
    installed and served after a tested reload. The key never shows."""
    certificate, key = _self_signed("api.paycore.test")
    _, other_key = _self_signed("other.paycore.test")
    files = "sha256sum /etc/nginx/nginx.conf; ls -A /etc/nginx/tls"
    before = gateway.check_output(files)
    for bad_key, message in (
        (other_key, "does not match edge_tls_private_key"),
        ("not a key", "is not an unencrypted PEM private key"),
    ):
        rc, out = apply_role(
            "edge",
            "paycore-network-gateway",
            {
                "edge_tls_source": "given",
                "edge_tls_certificate": certificate,
                "edge_tls_private_key": bad_key,
            },
        )
        assert rc != 0 and message in out, out
        assert bad_key.splitlines()[1 if "BEGIN" in bad_key else 0] not in out
        assert gateway.check_output(files) == before
    assert curl(f"{EDGE}/healthz")[0] == 200

    rc, out = apply_role(
        "edge",
        "paycore-network-gateway",
        {
            "edge_tls_source": "given",
            "edge_tls_certificate": certificate,
            "edge_tls_private_key": key,
        },
    )
    assert rc == 0, out
    assert key.splitlines()[1] not in out
    assert "ok: [paycore-network-gateway]" in task_output(out, "Test the nginx configuration")
    assert wait_for(lambda: served_certificate() == "".join(certificate.split()), 10, 1)
    # Back to the site's ACME certificate (the drills after this verify it).
    rc, out = apply_role("edge", "paycore-network-gateway")
    assert rc == 0, out
    assert wait_for(lambda: "Pebble" in served_certificate_info()["issuer"], 10, 1)


# --- firewall ----------------------------------------------------------------


def test_firewall_never_shuts_out_ansible():
    """With an SSH connection from outside firewall_admin_cidrs (192.0.2.0/24
    here) the role fails before changing anything; from inside, the saved
    ruleset admits SSH from the admin networks only, never from the address
    Ansible happened to connect from."""
    before = peer.check_output("sha256sum /etc/nftables.conf")
    rc, out = apply_role(
        "firewall", "paycore-network-peer", environment={"SSH_CLIENT": "198.51.100.7 40022 22"}
    )
    assert rc != 0 and "from 198.51.100.7" in out and "firewall_admin_cidrs" in out, out
    assert peer.check_output("sha256sum /etc/nftables.conf") == before
    rc, out = apply_role(
        "firewall", "paycore-network-peer", environment={"SSH_CLIENT": "192.0.2.7 40022 22"}
    )
    assert rc == 0, out
    assert "changed=0" in recap(out, "paycore-network-peer")
    ruleset = peer.check_output("nft list table inet paycore")
    assert "192.0.2.7" not in ruleset
    ssh_rules = [line.strip() for line in ruleset.splitlines() if "dport 22 " in line]
    assert ssh_rules == ["ip saddr 192.0.2.0/24 tcp dport 22 accept"]


def test_exposure_from_the_internet():
    """Every TCP port of every host, from the outsider: only 443 (and 80, for
    ACME's http-01 challenges) on the gateway answer; every other port is
    dropped (filtered), none even refused."""
    targets = (GATEWAY_IP, PEER_IP, PEER2_IP)
    # A host that is down would look like one with everything filtered.
    for address in targets:
        assert outsider.run(f"ping -c 1 -W 2 {address}").rc == 0, f"{address} is not up"
    outsider.check_output(f"cat > /tmp/scan.py <<'EOF'\n{PORT_SCAN}\nEOF")
    # The backends listen on 0.0.0.0:8080; only the firewall keeps them private.
    assert peer.socket("tcp://0.0.0.0:8080").is_listening
    found = json.loads(outsider.check_output(f"python3 /tmp/scan.py {' '.join(targets)}"))
    assert found == {
        GATEWAY_IP: {"open": [80, 443], "closed": 0, "filtered": 65533},
        PEER_IP: {"open": [], "closed": 0, "filtered": 65535},
        PEER2_IP: {"open": [], "closed": 0, "filtered": 65535},
    }


def test_exposure_from_the_gateway():
    """Least trust across the tunnel: a scan of every TCP port of both homelab
    hosts from the gateway itself (its tunnel address) finds only the ledger
    port. The first peer is also the monitoring host: its Prometheus,
    Alertmanager, node-exporter and the other peer's exporters listen on the
    tunnel address but admit only the monitoring host."""
    targets = (PEER_WG, PEER2_WG)
    for address in targets:
        assert ping(gateway, address), f"{address} does not answer through the tunnel"
    assert peer.socket(f"tcp://{PEER_WG}:9090").is_listening
    assert peer2.socket(f"tcp://{PEER2_WG}:9100").is_listening
    gateway.check_output(f"cat > /tmp/scan.py <<'EOF'\n{PORT_SCAN}\nEOF")
    # wireguard-go drops packets when thousands arrive at once: fewer in
    # flight, and more time for each answer, than across the Docker bridge.
    found = json.loads(
        gateway.check_output(
            f"SCAN_WINDOW=1024 SCAN_TIMEOUT=1.0 python3 /tmp/scan.py {' '.join(targets)}"
        )
    )
    for address in targets:
        # Nothing open but the ledger port, nothing closed: the rest filtered.
        assert set(found[address]["open"]) <= {8080}, found
        assert found[address]["closed"] == 0, found
        assert len(found[address]["open"]) + found[address]["filtered"] == 65535, found
        if not found[address]["open"]:
            # Under load the userspace tunnel drops a probe now and then (one
            # SYN per port, no retry), which reads as filtered: a connection
            # tells whether the ledger port is open after all.
            assert wait_for(lambda a=address: connects(gateway, a, 8080), 20, 2), found
    # The monitoring host still scrapes both (Prometheus's own view).
    targets = json.loads(http_get(peer, "http://127.0.0.1:9090/api/v1/targets"))
    health = {
        (t["labels"]["job"], t["labels"]["instance"]): t["health"]
        for t in targets["data"]["activeTargets"]
    }
    assert health[("node", "paycore-network-peer2")] == "up", health
    assert health[("node", "paycore-network-gateway")] == "up", health


def test_peer_service_reachable_through_tunnel_only():
    fetch = (
        "python3 -c 'import urllib.request as u; u.urlopen(\"http://{}:8080/healthz\", timeout=5)'"
    )
    assert gateway.run(fetch.format(PEER_WG)).rc == 0
    assert gateway.run(fetch.format(PEER_IP)).rc != 0


def test_rulesets_persist_and_default_deny():
    for host in (gateway, peer, peer2):
        assert host.check_output("systemctl is-enabled nftables") == "enabled"
        ruleset = host.check_output("nft list table inet paycore")
        assert "hook input priority filter; policy drop;" in ruleset
        assert "hook forward priority filter; policy drop;" in ruleset
        assert "ct state established,related accept" in ruleset
        assert host.run("nft -c -f /etc/nftables.conf").rc == 0
    assert "dport 8080" not in gateway.check_output("nft list table inet paycore")
    # The ledger port admits the gateway and the monitoring host, nothing else.
    assert f'iifname "wg0" ip saddr {{ {GATEWAY_WG}, {PEER_WG} }} tcp dport 8080 accept' in (
        peer2.check_output("nft list table inet paycore")
    )
