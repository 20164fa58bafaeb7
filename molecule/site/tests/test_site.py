"""End to end: a merchant calls the ledger through the edge and the tunnel, and
the monitoring sees it. Tests run in file order; later ones rely on the
traffic made by earlier ones."""

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

CURRENCY = "GBP"
PG_UNIT = "postgresql@15-main"


def account_for(client, currency):
    created = client.call("POST", "/v1/accounts", {"currency": currency})
    assert created.status in (201, 409), created
    accounts = client.call("GET", "/v1/accounts").body["data"]
    (account,) = [a for a in accounts if a["currency"] == currency]
    return account


def test_health_through_the_edge(client):
    response = client.call("GET", "/healthz", api_key="")
    assert response.status == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_metrics_are_not_public(client):
    assert client.call("GET", "/metrics", api_key="").status == 404


def test_request_id_is_passed_through(client):
    response = client.call("GET", "/readyz", api_key="", headers={"X-Request-Id": "site-test-42"})
    assert response.status == 200
    assert response.headers["x-request-id"] == "site-test-42"


def test_unauthenticated_calls_are_refused(client):
    response = client.call("GET", "/v1/accounts", api_key="not-a-key-of-anyone-at-all")
    assert response.status == 401
    assert response.headers["content-type"].startswith("application/problem+json")


def test_merchant_walkthrough(client):
    account = account_for(client, CURRENCY)
    before = client.call("GET", f"/v1/accounts/{account['id']}").body["balance"]

    key = client.new_key()
    payment = client.call("POST", "/v1/payments", {"amount": 150_000, "currency": CURRENCY}, key)
    assert payment.status == 201, payment
    assert payment.body["status"] == "succeeded"

    retried = client.call("POST", "/v1/payments", {"currency": CURRENCY, "amount": 150_000}, key)
    assert retried.status == 201
    assert retried.headers.get("idempotent-replayed") == "true"
    assert retried.body == payment.body

    reused = client.call("POST", "/v1/payments", {"amount": 1, "currency": CURRENCY}, key)
    assert reused.status == 422
    assert reused.body["code"] == "idempotency_key_reused"

    refund = client.call(
        "POST", f"/v1/payments/{payment.body['id']}/refunds", {"amount": 50_000}, client.new_key()
    )
    assert refund.status == 201, refund
    payout = client.call(
        "POST", "/v1/payouts", {"amount": 30_000, "currency": CURRENCY}, client.new_key()
    )
    assert payout.status == 201, payout

    overdraft = client.call(
        "POST", "/v1/payouts", {"amount": before + 10**9, "currency": CURRENCY}, client.new_key()
    )
    assert overdraft.status == 422
    assert overdraft.body["code"] == "insufficient_funds"

    after = client.call("GET", f"/v1/accounts/{account['id']}").body["balance"]
    assert after == before + 150_000 - 50_000 - 30_000

    entries = client.call("GET", f"/v1/accounts/{account['id']}/entries?limit=3").body["data"]
    assert [e["amount"] for e in entries] == [30_000, 50_000, 150_000]

    paid = client.call("GET", f"/v1/payments/{payment.body['id']}").body
    assert paid["amount_refunded"] == 50_000


def docker(*args):
    """A Docker command on the machine running the scenario (the lab's "hypervisor")."""
    subprocess.run(["docker", *args], check=True, capture_output=True, text=True, timeout=120)


def wait_until(condition, seconds, interval, failure):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(failure() if callable(failure) else failure)
        time.sleep(interval)


def test_edge_survives_a_ledger_host_going_down(client, ledger_hosts, gateway):
    """The whole host goes away (its container is stopped, tunnel end and all)
    and comes back as after a reboot: systemd brings up WireGuard, the firewall
    and the ledger by themselves, and the edge sends it requests again."""
    stopped = ledger_hosts[-1]
    name = stopped.backend.host
    docker("stop", name)
    try:
        statuses = [client.call("GET", "/v1/accounts").status for _ in range(20)]
        assert statuses == [200] * 20
    finally:
        docker("start", name)
    address = stopped.ansible.get_variables()["wireguard_address"]
    wait_until(
        lambda: gateway.run(f"curl -fsS --max-time 2 http://{address}:8080/readyz").rc == 0,
        180,
        2,
        f"{name} did not come back on the tunnel after its restart",
    )
    assert stopped.run("nft list table inet paycore").rc == 0, "firewall not restored at boot"
    # Back in service: the edge sends it requests again (after its fail_timeout).
    since = stopped.check_output("date +%s")

    def served_through_the_edge():
        client.call("GET", "/v1/accounts")
        logged = stopped.run(f"journalctl -u paycore-ledger --since @{since} -o cat").stdout
        return '"route": "/v1/accounts"' in logged or '"route":"/v1/accounts"' in logged

    wait_until(served_through_the_edge, 60, 1, f"{name} never served a request again")


def prometheus(monitoring, path):
    return json.loads(monitoring.check_output(f"curl -fsS http://127.0.0.1:9090{path}"))


def query(monitoring, expr):
    """The instant vector or scalar result of a PromQL expression."""
    command = "curl -fsS http://127.0.0.1:9090/api/v1/query --data-urlencode " + shlex.quote(
        f"query={expr}"
    )
    return json.loads(monitoring.check_output(command))["data"]["result"]


def test_every_scrape_target_is_up(monitoring):
    """Every target, including those of the host restarted above, once
    Prometheus has scraped it again (scrapes are 15 s apart)."""

    def down_targets():
        targets = prometheus(monitoring, "/api/v1/targets")["data"]["activeTargets"]
        assert targets
        return [
            (t["labels"]["job"], t["labels"]["instance"], t["lastError"])
            for t in targets
            if t["health"] != "up"
        ]

    wait_until(lambda: not down_targets(), 120, 5, lambda: f"targets down: {down_targets()}")


def test_prometheus_saw_the_merchant_requests(monitoring):
    payments = 'sum(http_requests_total{route="/v1/payments",method="POST",status="201"})'
    for _ in range(12):
        result = query(monitoring, payments)
        if result and float(result[0]["value"][1]) >= 1:
            return
        time.sleep(5)
    pytest.fail("Prometheus never saw the payments made through the edge")


WEBHOOK_RECORD = "/var/tmp/webhook.jsonl"
OUTAGE_ALERTS = ("PostgresDown", "LedgerAvailabilityBudgetBurnFast")


def alerts_delivered(monitoring, after_line=0):
    """(alertname, status) pairs the webhook recorder got from Alertmanager,
    from the given line of its record on."""
    record = monitoring.run(f"tail -n +{after_line + 1} {WEBHOOK_RECORD}")
    delivered = set()
    for line in record.stdout.splitlines():
        for alert in json.loads(line)["body"]["alerts"]:
            delivered.add((alert["labels"]["alertname"], alert["status"]))
    return delivered


def ledger_processes(ledger_hosts):
    """Each ledger host's main process id and systemd's restart count for it."""
    return {
        host.backend.host: host.check_output(
            "systemctl show paycore-ledger -p MainPID -p NRestarts --value"
        ).split()
        for host in ledger_hosts
    }


@pytest.fixture(scope="module")
def outage_record_start(monitoring):
    """The webhook record's length before the outage: only what comes after counts."""
    lines = monitoring.run(f"cat {WEBHOOK_RECORD} 2>/dev/null | wc -l").stdout
    return int(lines.strip() or 0)


def test_postgres_outage_is_alerted_and_the_service_recovers(
    client, database, monitoring, ledger_hosts, outage_record_start
):
    firing = {(name, "firing") for name in OUTAGE_ALERTS}
    processes_before = ledger_processes(ledger_hosts)
    # The cluster's own unit, and only once it no longer answers does the
    # outage count as started.
    database.check_output(f"systemctl stop {PG_UNIT}")
    wait_until(
        lambda: database.run("runuser -u postgres -- pg_isready -q").rc != 0,
        60,
        1,
        "PostgreSQL did not stop",
    )
    try:

        def alerted():
            # Merchant traffic during the outage is what burns the error budget.
            assert client.call("GET", "/v1/accounts").status == 503
            return firing <= alerts_delivered(monitoring, outage_record_start)

        wait_until(
            alerted,
            300,
            3,
            lambda: (
                f"delivered: {alerts_delivered(monitoring, outage_record_start)}, wanted {firing}"
            ),
        )
    finally:
        database.check_output(f"systemctl start {PG_UNIT}")

    wait_until(
        lambda: client.call("GET", "/v1/accounts").status == 200,
        60,
        2,
        "the ledger did not recover",
    )
    assert ledger_processes(ledger_hosts) == processes_before, "a ledger process was restarted"
    wait_until(
        lambda: ("PostgresDown", "resolved") in alerts_delivered(monitoring, outage_record_start),
        180,
        5,
        "PostgresDown was never resolved",
    )


# The full-range TCP scanner of the network scenario (see its docstring).
PORT_SCAN = (Path(__file__).parents[2] / "shared/tcp_syn_scan.py").read_text()


def test_exposure_from_the_internet(merchant, gateway, ledger_hosts):
    """Every TCP port of every lab host, from the merchant: only 443 (and 80,
    ACME's http-01 challenges) on the gateway answer; every other port is
    dropped (filtered), none even refused."""
    addresses = {
        host: host.ansible.get_variables()["lab_ipv4"] for host in (gateway, *ledger_hosts)
    }
    # A host that is down would look like one with everything filtered.
    for address in addresses.values():
        assert merchant.run(f"ping -c 1 -W 2 {address}").rc == 0, f"{address} is not up"
    merchant.check_output(f"cat > /tmp/scan.py <<'EOF'\n{PORT_SCAN}\nEOF")
    found = json.loads(
        merchant.check_output(f"python3 /tmp/scan.py {' '.join(addresses.values())}")
    )
    expected = {
        address: {"open": [], "closed": 0, "filtered": 65535} for address in addresses.values()
    }
    expected[addresses[gateway]] = {"open": [80, 443], "closed": 0, "filtered": 65533}
    assert found == expected


UDP_ECHO = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.settimeout(int(sys.argv[2]))
    try:
        while True:
            data, peer = s.recvfrom(64)
            s.sendto(data, peer)
    except TimeoutError:
        pass
"""

UDP_PROBE = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(2)
    s.sendto(b"probe", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(64).decode())
    except OSError as error:
        print(type(error).__name__)
"""


def udp_answer(prober, host, address, port=40000):
    """What a UDP listener on every address of host answers prober."""
    host.run(f"cat > /tmp/udp-echo.py <<'EOF'\n{UDP_ECHO}EOF")
    prober.run(f"cat > /tmp/udp-probe.py <<'EOF'\n{UDP_PROBE}EOF")
    host.check_output(f"systemd-run --unit udp-echo-{port} python3 /tmp/udp-echo.py {port} 20")
    try:
        time.sleep(1)
        return prober.check_output(f"python3 /tmp/udp-probe.py {address} {port}")
    finally:
        host.run(f"systemctl stop udp-echo-{port}")


def test_udp_exposure_from_the_internet(merchant, gateway, ledger_hosts):
    """UDP: a listener on any other port is dropped on every host (a listener
    reached from its own host answers, so the probe itself works), while the
    gateway's WireGuard port is reached from the internet network: every peer's
    handshake arrived there from its address on that network."""
    for host in [gateway, *ledger_hosts]:
        address = host.ansible.get_variables()["lab_ipv4"]
        assert udp_answer(host, host, address) == "probe"
        assert udp_answer(merchant, host, address) == "TimeoutError", host.backend.host
    internet = {h.ansible.get_variables()["lab_ipv4"] for h in ledger_hosts}
    endpoints = gateway.check_output("wg show wg0 endpoints").splitlines()
    assert {line.split()[1].rsplit(":", 1)[0] for line in endpoints} == internet
    handshakes = gateway.check_output("wg show wg0 latest-handshakes").splitlines()
    assert all(int(line.split()[1]) > 0 for line in handshakes)


DASHBOARDS = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "roles/grafana/files/dashboards"
# Grafana's template variables, as Grafana would substitute them.
TEMPLATE_VARIABLES = {"$instance": ".+", "$__rate_interval": "5m", "$__range": "1h"}


def dashboard_expressions():
    """(dashboard: panel, expression) of every dashboard panel, those inside
    collapsed rows included."""
    for path in sorted(DASHBOARDS.glob("*.json")):
        top = json.loads(path.read_text())["panels"]
        for panel in [*top, *(inner for row in top for inner in row.get("panels", []))]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in TEMPLATE_VARIABLES.items():
                    expr = expr.replace(variable, value)
                yield f"{path.stem}: {panel['title']}", expr


def fed_by_cadvisor(expr):
    """cAdvisor's binary is a GitHub download the lab may not reach."""
    return "container_" in expr


def fed_by_patroni(expr):
    """Patroni runs only with two or more database hosts (this site has one;
    molecule/database_ha checks Patroni serves what these panels read)."""
    return "patroni_" in expr


def every_kind_of_merchant_traffic(client):
    """A payment, its replay, a reused key, a refund, a payout and a refusal."""
    key = client.new_key()
    payment = client.call("POST", "/v1/payments", {"amount": 5_000, "currency": CURRENCY}, key)
    assert payment.status == 201, payment
    assert (
        client.call("POST", "/v1/payments", {"amount": 5_000, "currency": CURRENCY}, key).status
        == 201
    )
    assert (
        client.call("POST", "/v1/payments", {"amount": 1, "currency": CURRENCY}, key).status == 422
    )
    refund_path = f"/v1/payments/{payment.body['id']}/refunds"
    assert client.call("POST", refund_path, {"amount": 1_000}, client.new_key()).status == 201
    payout = {"amount": 1_000, "currency": CURRENCY}
    assert client.call("POST", "/v1/payouts", payout, client.new_key()).status == 201
    overdraft = {"amount": 10**12, "currency": CURRENCY}
    assert client.call("POST", "/v1/payouts", overdraft, client.new_key()).status == 422


def test_dashboards_and_recording_rules_show_real_data(client, monitoring, database, ledger_hosts):
    """After the outage. Rates look back 5 minutes, and a restarted ledger host
    forgot its counters, so the merchant traffic the panels show is made again
    here; a backup and a reconcile run now rather than on their timers."""
    every_kind_of_merchant_traffic(client)
    database.check_output("systemctl start paycore-postgresql-backup.service")
    ledger_hosts[0].check_output("systemctl start paycore-ledger-reconcile.service")
    recorded = [
        f"paycore:{series}:{kind}{window}"
        for series, kind in [
            ("ledger_requests", "rate"),
            ("ledger_errors", "ratio_rate"),
            ("ledger_slow_requests", "ratio_rate"),
        ]
        for window in ("5m", "30m", "1h")
    ]
    panels = [
        (name, expr)
        for name, expr in dashboard_expressions()
        if not fed_by_cadvisor(expr) and not fed_by_patroni(expr)
    ]
    expressions = [*panels, *((name, name) for name in recorded)]
    assert_every_expression_has_data(monitoring, expressions)


def assert_every_expression_has_data(monitoring, expressions):
    empty = expressions
    deadline = time.monotonic() + 90  # a scrape and a rule evaluation or two
    while empty and time.monotonic() < deadline:
        empty = [(name, expr) for name, expr in empty if not query(monitoring, expr)]
        time.sleep(5)
    assert not empty, "\n".join(f"{name}: {expr}" for name, expr in empty)


def test_containers_dashboard_shows_real_data(monitoring, ledger_hosts):
    if not ledger_hosts[0].file("/usr/local/bin/cadvisor").exists:
        pytest.skip(
            "cAdvisor is not installed in this lab (its release is a GitHub download this "
            "machine cannot reach; set lab_upstream_downloads=true where it can)"
        )
    expressions = [(name, expr) for name, expr in dashboard_expressions() if fed_by_cadvisor(expr)]
    assert_every_expression_has_data(monitoring, expressions)


# Runs on a ledger host: GET /v1/accounts N times over 4 keep-alive
# connections to the local service (key in $KEY); prints how many were
# answered 200, or 429 once the merchant's rate limit (100/s) is spent: both
# are requests served without a server error, which is what the SLO counts.
MERCHANT_TRAFFIC = """
import concurrent.futures, http.client, os, sys

def calls(count):
    connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[2]), timeout=10)
    answered = 0
    for _ in range(count):
        headers = {"Authorization": "Bearer " + os.environ["KEY"]}
        connection.request("GET", "/v1/accounts", headers=headers)
        response = connection.getresponse()
        response.read()
        answered += response.status in (200, 429)
    return answered

with concurrent.futures.ThreadPoolExecutor(4) as pool:
    print(sum(pool.map(calls, [int(sys.argv[1])] * 4)))
"""
OUTAGE_ERRORS = (
    'sum(increase(http_requests_total{job="ledger",route=~"/v1/.+",status=~"5.."}[30m]))'
)
ERROR_RATIOS = '{__name__=~"paycore:ledger_errors:ratio_rate(5m|30m|1h|6h)"}'


def resume_merchant_traffic(monitoring, ledger_hosts, api_key):
    """Traffic at a production-like volume after the outage, straight to each
    ledger host's local port (the edge's per-address abuse guard would hold one
    client back; past the merchant's own rate limit the ledger answers 429,
    which is not an error either): 5xx become under 0.3% of the last 30 minutes' requests. A
    quiet lab would otherwise keep the fast-burn alert's 30-minute pair of
    windows above its 0.6% until the outage is 30 minutes old."""
    errors = float(query(monitoring, OUTAGE_ERRORS)[0]["value"][1])
    per_connection = int(errors / 0.003 / len(ledger_hosts) / 4) + 25
    for host in ledger_hosts:
        host.run(f"cat > /tmp/merchant-traffic.py <<'EOF'\n{MERCHANT_TRAFFIC}EOF")
        answered = host.check_output(
            f"KEY={shlex.quote(api_key)} python3 /tmp/merchant-traffic.py {per_connection} 8080"
        )
        assert int(answered) == 4 * per_connection, f"{host.backend.host}: {answered} not 5xx"


def test_outage_alerts_resolve_and_the_ledger_reconciles(
    client, monitoring, ledger_hosts, outage_record_start
):
    """Last, so the tests above fill the wait for PostgresDown to resolve; the
    fast-burn alert resolves once merchant traffic has resumed."""
    resume_merchant_traffic(monitoring, ledger_hosts, client.api_key)
    resolved = {(name, "resolved") for name in OUTAGE_ALERTS}
    wait_until(
        lambda: resolved <= alerts_delivered(monitoring, outage_record_start),
        180,
        10,
        lambda: (
            f"delivered: {alerts_delivered(monitoring, outage_record_start)}, wanted {resolved}; "
            f"error ratios: {query(monitoring, ERROR_RATIOS)}"
        ),
    )
    result = ledger_hosts[0].run(
        "systemctl start paycore-ledger-reconcile.service && "
        "systemctl show paycore-ledger-reconcile.service -p Result --value"
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "success"
