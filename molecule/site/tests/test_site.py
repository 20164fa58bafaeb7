"""End to end: a merchant calls the ledger through the edge and the tunnel, and
the monitoring sees it. Tests run in file order; later ones rely on the
traffic made by earlier ones."""

import json
import os
import shlex
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


def test_edge_survives_a_ledger_host_going_down(client, ledger_hosts, gateway):
    stopped = ledger_hosts[-1]
    stopped.check_output("systemctl stop paycore-ledger")
    try:
        statuses = [client.call("GET", "/v1/accounts").status for _ in range(20)]
        assert statuses == [200] * 20
    finally:
        stopped.check_output("systemctl start paycore-ledger")
    address = stopped.ansible.get_variables()["wireguard_address"]
    for _ in range(30):
        if gateway.run(f"curl -fsS http://{address}:8080/readyz").rc == 0:
            break
        time.sleep(1)
    else:
        pytest.fail(f"{stopped.backend.host} did not become ready again")
    # Back in service: the edge sends it requests again (after its fail_timeout).
    since = stopped.check_output("date +%s")
    for _ in range(30):
        client.call("GET", "/v1/accounts")
        logged = stopped.run(f"journalctl -u paycore-ledger --since @{since} -o cat")
        if '"route": "/v1/accounts"' in logged.stdout or '"route":"/v1/accounts"' in logged.stdout:
            return
        time.sleep(1)
    pytest.fail(f"{stopped.backend.host} never served a request through the edge again")


def prometheus(monitoring, path):
    return json.loads(monitoring.check_output(f"curl -fsS http://127.0.0.1:9090{path}"))


def query(monitoring, expr):
    """The instant vector or scalar result of a PromQL expression."""
    command = "curl -fsS http://127.0.0.1:9090/api/v1/query --data-urlencode " + shlex.quote(
        f"query={expr}"
    )
    return json.loads(monitoring.check_output(command))["data"]["result"]


def test_every_scrape_target_is_up(monitoring):
    targets = prometheus(monitoring, "/api/v1/targets")["data"]["activeTargets"]
    assert targets
    down = [
        (t["labels"]["job"], t["labels"]["instance"], t["lastError"])
        for t in targets
        if t["health"] != "up"
    ]
    assert not down


def test_prometheus_saw_the_merchant_requests(monitoring):
    payments = 'sum(http_requests_total{route="/v1/payments",method="POST",status="201"})'
    for _ in range(12):
        result = query(monitoring, payments)
        if result and float(result[0]["value"][1]) >= 1:
            return
        time.sleep(5)
    pytest.fail("Prometheus never saw the payments made through the edge")


def alerts_delivered(monitoring):
    """(alertname, status) pairs the webhook recorder got from Alertmanager."""
    record = monitoring.run("cat /var/tmp/webhook.jsonl")
    delivered = set()
    for line in record.stdout.splitlines():
        for alert in json.loads(line)["body"]["alerts"]:
            delivered.add((alert["labels"]["alertname"], alert["status"]))
    return delivered


def test_postgres_outage_is_alerted_and_the_service_recovers(client, database, monitoring):
    wanted = {("PostgresDown", "firing"), ("LedgerAvailabilityBudgetBurnFast", "firing")}
    # The cluster's own unit, and only once it no longer answers does the
    # outage count as started.
    database.check_output(f"systemctl stop {PG_UNIT}")
    deadline = time.monotonic() + 60
    while database.run("runuser -u postgres -- pg_isready -q").rc == 0:
        assert time.monotonic() < deadline, "PostgreSQL did not stop"
        time.sleep(1)
    try:
        deadline = time.monotonic() + 300
        while not wanted <= alerts_delivered(monitoring):
            # Merchant traffic during the outage is what burns the error budget.
            assert client.call("GET", "/v1/accounts").status == 503
            if time.monotonic() > deadline:
                pytest.fail(f"alerts delivered: {alerts_delivered(monitoring)}, wanted {wanted}")
            time.sleep(3)
    finally:
        database.check_output(f"systemctl start {PG_UNIT}")

    deadline = time.monotonic() + 60
    while client.call("GET", "/v1/accounts").status != 200:
        assert time.monotonic() < deadline, "the ledger did not recover without a restart"
        time.sleep(2)

    deadline = time.monotonic() + 180
    while ("PostgresDown", "resolved") not in alerts_delivered(monitoring):
        assert time.monotonic() < deadline, "PostgresDown was never resolved"
        time.sleep(5)


PORT_SCAN = """
import concurrent.futures, socket, sys

def is_open(port):
    with socket.socket() as s:
        s.settimeout(1)
        return port if s.connect_ex((sys.argv[1], port)) == 0 else None

with concurrent.futures.ThreadPoolExecutor(256) as pool:
    print(sorted(p for p in pool.map(is_open, range(1, 10001)) if p))
"""


def test_exposure_from_the_internet(merchant, gateway, ledger_hosts):
    """A TCP scan of ports 1-10000 from the merchant, our own containers only."""
    merchant.run(f"cat > /tmp/scan.py <<'EOF'\n{PORT_SCAN}EOF")
    gateway_ip = gateway.ansible.get_variables()["lab_ipv4"]
    assert merchant.check_output(f"python3 /tmp/scan.py {gateway_ip}") == "[443]"
    for ledger in ledger_hosts:
        ledger_ip = ledger.ansible.get_variables()["lab_ipv4"]
        assert merchant.check_output(f"python3 /tmp/scan.py {ledger_ip}") == "[]"


def test_reconcile_is_clean(ledger_hosts):
    result = ledger_hosts[0].run(
        "systemctl start paycore-ledger-reconcile.service && "
        "systemctl show paycore-ledger-reconcile.service -p Result --value"
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "success"


DASHBOARDS = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "roles/grafana/files/dashboards"
# Grafana's template variables, as Grafana would substitute them.
TEMPLATE_VARIABLES = {"$instance": ".+", "$__rate_interval": "5m", "$__range": "1h"}
# cAdvisor's binary is a GitHub download, which the lab cannot reach.
WITHOUT_DATA_IN_THE_LAB = {"services.json"}


def dashboard_expressions():
    for path in sorted(DASHBOARDS.glob("*.json")):
        if path.name in WITHOUT_DATA_IN_THE_LAB:
            continue
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in TEMPLATE_VARIABLES.items():
                    expr = expr.replace(variable, value)
                yield f"{path.stem}: {panel['title']}", expr


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


def test_dashboards_and_recording_rules_show_real_data(client, monitoring, database):
    """Runs last: by now there were an outage and a reconcile. Rates look back
    5 minutes, and a restarted ledger host forgot its counters, so the merchant
    traffic the panels show is made again here."""
    every_kind_of_merchant_traffic(client)
    database.check_output("systemctl start paycore-postgresql-backup.service")
    recorded = [
        f"paycore:{series}:{kind}{window}"
        for series, kind in [
            ("ledger_requests", "rate"),
            ("ledger_errors", "ratio_rate"),
            ("ledger_slow_requests", "ratio_rate"),
        ]
        for window in ("5m", "30m", "1h")
    ]
    expressions = [*dashboard_expressions(), *((name, name) for name in recorded)]
    empty = expressions
    deadline = time.monotonic() + 90  # a scrape and a rule evaluation or two
    while empty and time.monotonic() < deadline:
        empty = [(name, expr) for name, expr in empty if not query(monitoring, expr)]
        time.sleep(5)
    assert not empty, "\n".join(f"{name}: {expr}" for name, expr in empty)
