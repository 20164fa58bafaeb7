"""The ledger service on its own host, with PostgreSQL on another: what the
split adds to molecule/postgresql (both on one host)."""

import json
import os
import shlex
import uuid
from pathlib import Path

import pytest
import testinfra
import yaml

DB_IP = "172.30.46.10"
APP_IP = "172.30.46.20"
SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parent.parent))
SETTINGS = yaml.safe_load((SCENARIO / "molecule.yml").read_text())["provisioner"]["inventory"]
SECRETS = SETTINGS["group_vars"]["all"]
API_KEY = SECRETS["ledger_service_bootstrap_merchants"][0]["api_key"]

db = testinfra.get_host("docker://paycore-ledger_service-db")
app = testinfra.get_host("docker://paycore-ledger_service-app")


def listeners(host, port):
    lines = host.check_output(f"ss -Hltn 'sport = :{port}'").splitlines()
    return {line.split()[3] for line in lines}


def db_query(sql, **params):
    """Runs `sql` as postgres on the database host; :'name' takes params[name]."""
    variables = " ".join(f"-v {name}={shlex.quote(str(v))}" for name, v in params.items())
    command = f"runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -d paycore {variables}"
    return db.check_output(f"echo {shlex.quote(sql)} | {command}")


def connect(host, user, password, address=DB_IP):
    """psql on `host` to the ledger database at `address`; (rc, output)."""
    command = (
        f"PGPASSWORD={shlex.quote(password)} PGCONNECT_TIMEOUT=5 psql -X -At "
        f"-h {address} -U {user} -d paycore -c 'SELECT current_user'"
    )
    result = host.run(command)
    return result.rc, result.stdout + result.stderr


def api(method, path, body=None, key=None):
    command = ["curl", "-sS", "-w", r"\n%{http_code}", "-X", method]
    command += ["-H", f"Authorization: Bearer {API_KEY}"]
    if key:
        command += ["-H", f"Idempotency-Key: {key}"]
    if body is not None:
        command += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    command.append(f"http://127.0.0.1:8080{path}")
    text, _, status = app.check_output(shlex.join(command)).rpartition("\n")
    return int(status), json.loads(text)


def test_database_listens_on_loopback_and_its_address_only():
    assert listeners(db, 5432) <= {"127.0.0.1:5432", "[::1]:5432", f"{DB_IP}:5432"}
    assert f"{DB_IP}:5432" in listeners(db, 5432)


def test_pg_hba_admits_the_owner_and_runtime_roles_from_the_ledger_host_only():
    rules = [
        line.split()
        for line in db.file("/etc/postgresql/15/main/pg_hba.conf").content_string.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    remote = [rule for rule in rules if rule[0] == "host" and "paycore_app" in rule[2]]
    clients = "paycore_owner,paycore_app"
    assert remote == [["host", "paycore", clients, f"{APP_IP}/32", "scram-sha-256"]]


def test_ledger_host_connects_with_scram_as_the_runtime_role():
    rc, output = connect(app, "paycore_app", SECRETS["postgresql_app_password"])
    assert rc == 0, output
    assert output.strip() == "paycore_app"


@pytest.mark.parametrize(
    ("host", "user", "password_var", "address"),
    [
        (app, "paycore_app", None, DB_IP),  # a wrong password
        (app, "paycore_monitor", "postgresql_monitor_password", DB_IP),  # a local-only role
        (db, "paycore_app", "postgresql_app_password", DB_IP),  # not from the ledger host
        (db, "paycore_app", "postgresql_app_password", "127.0.0.1"),  # no local clients here
    ],
)
def test_everything_else_is_refused(host, user, password_var, address):
    password = SECRETS[password_var] if password_var else "not-the-password"
    rc, output = connect(host, user, password, address)
    assert rc != 0
    assert "no pg_hba.conf entry" in output or "password authentication failed" in output, output


def test_ledger_host_runs_no_database_server():
    assert not app.package("postgresql-15").is_installed
    assert not listeners(app, 5432)


def test_service_listens_on_loopback_and_its_address_only():
    service = app.service("paycore-ledger")
    assert service.is_running and service.is_enabled
    assert listeners(app, 8080) == {"127.0.0.1:8080", f"{APP_IP}:8080"}


def test_migrations_were_run_from_the_ledger_host_as_the_owner():
    applied = db_query("SELECT version FROM schema_migrations ORDER BY version").split()
    shipped = app.check_output(
        "ls /opt/paycore/ledger/lib/python3*/site-packages/paycore_ledger/sql/"
        " | grep -c '^[0-9].*[.]sql$'"
    )
    assert len(applied) == int(shipped) >= 4
    owners = db_query("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    assert owners.split() == ["paycore_owner"]


def test_a_payment_through_the_api_is_in_the_remote_database():
    status, account = api("POST", "/v1/accounts", {"currency": "EUR"})
    if status == 409:  # a rerun of verify
        account = next(a for a in api("GET", "/v1/accounts")[1]["data"] if a["currency"] == "EUR")
    else:
        assert status == 201, account
    payment = {"amount": 4_200, "currency": "EUR"}
    status, created = api("POST", "/v1/payments", payment, uuid.uuid4().hex)
    assert status == 201, created
    stored = db_query("SELECT balance FROM accounts WHERE id = :'id'", id=account["id"])
    assert int(stored) == api("GET", f"/v1/accounts/{account['id']}")[1]["balance"] >= 4_200


def test_reconcile_on_the_ledger_host_checks_the_remote_database():
    result = app.run("systemctl start paycore-ledger-reconcile.service")
    assert result.rc == 0, app.run("journalctl -u paycore-ledger-reconcile -n 30").stdout
    metrics = app.file("/var/lib/prometheus/node-exporter/paycore_reconcile.prom").content_string
    assert "paycore_reconcile_ok 1" in metrics
    assert int(db_query("SELECT count(*) FROM reconcile_runs")) >= 1
