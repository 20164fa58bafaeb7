"""Verifies PostgreSQL and the ledger service sharing one converged host."""

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parent.parent))
CONVERGE = SCENARIO / "converge.yml"
PG_UNIT = "postgresql@15-main"
TEXTFILE = "/var/lib/prometheus/node-exporter"


@pytest.fixture(scope="module")
def secrets():
    play = yaml.safe_load(CONVERGE.read_text())[0]["vars"]
    return {
        "owner": play["postgresql_migrator_password"],
        "app": play["postgresql_app_password"],
        "monitor": play["postgresql_monitor_password"],
        "keys": [m["api_key"] for m in play["ledger_service_bootstrap_merchants"]],
    }


def psql(host, sql, user="postgres", password=None, db="paycore"):
    if user == "postgres":
        cmd = f"runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -d {db} -c {sql!r}"
    else:
        cmd = (
            f"PGPASSWORD={password} psql -X -At -v ON_ERROR_STOP=1 "
            f"-h 127.0.0.1 -U {user} -d {db} -c {sql!r}"
        )
    return host.run(cmd)


def test_services_running_and_enabled(host):
    for unit in (PG_UNIT, "paycore-ledger"):
        assert host.service(unit).is_running, unit
        assert host.service(unit).is_enabled, unit
    for timer in (
        "paycore-postgresql-backup.timer",
        "paycore-postgresql-restore-check.timer",
        "paycore-ledger-reconcile.timer",
    ):
        assert host.service(timer).is_enabled, timer
        assert host.run(f"systemctl is-active {timer}").stdout.strip() == "active", timer


def test_cluster_has_data_checksums(host):
    assert psql(host, "SHOW data_checksums").stdout.strip() == "on"


def test_listening_only_on_loopback(host):
    listeners = host.check_output("ss -Hltn").splitlines()
    local = [line.split()[3] for line in listeners]
    pg = [a for a in local if a.endswith(":5432")]
    ledger = [a for a in local if a.endswith(":8080")]
    assert pg and set(pg) <= {"127.0.0.1:5432", "[::1]:5432"}, pg
    # One SO_REUSEPORT listener per worker process, all on loopback.
    assert len(ledger) == 2 and set(ledger) == {"127.0.0.1:8080"}, ledger


def test_pg_hba_allows_exactly_the_expected_clients(host):
    hba = host.file("/etc/postgresql/15/main/pg_hba.conf").content_string
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert ["local", "all", "postgres", "peer"] in rules
    for rule in rules:
        if rule[0] == "host":
            assert rule[-1] == "scram-sha-256", rule
            assert rule[3] in ("127.0.0.1/32", "::1/128"), rule
    assert [
        "host",
        "paycore",
        "paycore_owner,paycore_app",
        "127.0.0.1/32",
        "scram-sha-256",
    ] in rules
    assert ["host", "paycore,postgres", "paycore_monitor", "127.0.0.1/32", "scram-sha-256"] in rules
    assert not any(r[-1] in ("trust", "md5", "password") for r in rules)
    errors = psql(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL")
    assert errors.stdout.strip() == "0"


def test_roles_authenticate_with_scram(host, secrets):
    for user, key in (("paycore_app", "app"), ("paycore_monitor", "monitor")):
        assert psql(host, "SELECT 1", user, secrets[key]).stdout.strip() == "1"
    wrong = psql(host, "SELECT 1", "paycore_app", "not-the-password")
    assert wrong.rc != 0 and "password authentication failed" in wrong.stderr
    assert (
        psql(host, "SELECT pg_has_role('paycore_monitor', 'pg_monitor', 'member')").stdout.strip()
        == "t"
    )


def test_runtime_role_cannot_run_ddl(host, secrets):
    result = psql(host, "CREATE TABLE molecule_probe (id int)", "paycore_app", secrets["app"])
    assert result.rc != 0
    assert "permission denied for schema public" in result.stderr


def test_runtime_role_cannot_update_or_delete_entries(host, secrets):
    update = psql(host, "UPDATE entries SET amount = amount + 1", "paycore_app", secrets["app"])
    assert update.rc != 0 and "permission denied for table entries" in update.stderr
    delete = psql(host, "DELETE FROM entries", "paycore_app", secrets["app"])
    assert delete.rc != 0 and "permission denied for table entries" in delete.stderr


def test_ledger_env_and_secret_file_permissions(host):
    for path in ("/etc/paycore/ledger.env", "/etc/paycore/ledger-database.url"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "paycore-ledger", 0o640), path
    assert host.user("paycore-ledger").shell == "/usr/sbin/nologin"
    assert host.file("/opt/paycore/ledger/bin/paycore-ledger").exists
    # No compiler was needed on the host.
    assert not host.exists("gcc") and not host.exists("cc")


def api(host, method, path, key, body=None, idem=None):
    cmd = (
        f"curl -sS -o /tmp/api.out -w '%{{http_code}}' -X {method} -H 'Authorization: Bearer {key}'"
    )
    if body is not None:
        cmd += f" -H 'Content-Type: application/json' -d '{json.dumps(body)}'"
    if idem:
        cmd += f" -H 'Idempotency-Key: {idem}'"
    status = int(host.check_output(cmd + f" http://127.0.0.1:8080{path}"))
    return status, json.loads(host.file("/tmp/api.out").content_string or "null")


def test_payment_through_the_api_updates_the_balance(host, secrets):
    key = secrets["keys"][0]
    assert host.run("curl -fsS http://127.0.0.1:8080/readyz").rc == 0
    status, body = api(host, "POST", "/v1/accounts", key, {"currency": "NGN"})
    assert status in (201, 409), body
    status, accounts = api(host, "GET", "/v1/accounts", key)
    assert status == 200
    account = next(a for a in accounts["data"] if a["currency"] == "NGN")
    before = account["balance"]
    idem = str(uuid.uuid4())
    status, payment = api(
        host, "POST", "/v1/payments", key, {"amount": 1500, "currency": "NGN"}, idem
    )
    assert status == 201 and payment["status"] == "succeeded", payment
    replay_status, replay = api(
        host, "POST", "/v1/payments", key, {"amount": 1500, "currency": "NGN"}, idem
    )
    assert replay_status == 201 and replay["id"] == payment["id"]
    status, after = api(host, "GET", f"/v1/accounts/{account['id']}", key)
    assert status == 200 and after["balance"] == before + 1500
    assert api(host, "GET", "/v1/accounts", "sk_wrong_key_000000000000000000")[0] == 401


def metric(host, name, path):
    text = host.file(path).content_string
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert match, f"{name} not in {path}:\n{text}"
    return float(match.group(1))


def test_backup_is_taken_and_restores_with_matching_row_counts(host):
    start = int(host.check_output("date +%s"))
    backup = host.run("systemctl start paycore-postgresql-backup.service")
    assert backup.rc == 0, host.run("journalctl -u paycore-postgresql-backup -n 30").stdout
    assert (
        metric(
            host, "paycore_backup_last_success_timestamp_seconds", f"{TEXTFILE}/paycore_backup.prom"
        )
        >= start
    )
    assert metric(host, "paycore_backup_last_size_bytes", f"{TEXTFILE}/paycore_backup.prom") > 0
    newest = host.check_output("ls -1 /var/backups/postgresql | sort | tail -n 1")
    counts = host.file(f"/var/backups/postgresql/{newest}/rowcounts.txt").content_string
    assert re.search(r"^entries [1-9]\d*$", counts, re.M), counts
    check = host.run("systemctl start paycore-postgresql-restore-check.service")
    assert check.rc == 0, host.run("journalctl -u paycore-postgresql-restore-check -n 30").stdout
    assert (
        metric(
            host,
            "paycore_backup_restore_check_last_success_timestamp_seconds",
            f"{TEXTFILE}/paycore_backup_restore_check.prom",
        )
        >= start
    )
    assert "row counts match" in host.check_output(
        "journalctl -u paycore-postgresql-restore-check -n 5 --no-pager"
    )


def test_restore_check_fails_on_a_tampered_backup(host):
    newest = host.check_output("ls -1 /var/backups/postgresql | sort | tail -n 1")
    counts = f"/var/backups/postgresql/{newest}/rowcounts.txt"
    host.run(f"cp {counts} /root/rowcounts.bak && sed -i 's/^entries .*/entries 999999/' {counts}")
    try:
        assert host.run("systemctl start paycore-postgresql-restore-check.service").rc != 0
    finally:
        host.run(f"cp /root/rowcounts.bak {counts} && chown postgres:postgres {counts}")
        host.run("systemctl reset-failed paycore-postgresql-restore-check.service")


def test_backups_are_pruned_to_keep(host):
    for _ in range(2):
        host.run("sleep 1.1; systemctl start paycore-postgresql-backup.service")
    assert len(host.check_output("ls -1 /var/backups/postgresql").split()) == 2


def test_reconcile_timer_job_runs_clean(host):
    result = host.run("systemctl start paycore-ledger-reconcile.service")
    assert result.rc == 0, host.run("journalctl -u paycore-ledger-reconcile -n 30").stdout
    assert metric(host, "paycore_reconcile_ok", f"{TEXTFILE}/paycore_reconcile.prom") == 1
    assert metric(host, "paycore_reconcile_problems", f"{TEXTFILE}/paycore_reconcile.prom") == 0


def row_counts(host):
    """Every ledger table's row count, by the role's own query."""
    query = "/usr/local/lib/paycore/postgresql/rowcounts.sql"
    output = host.check_output(f"runuser -u postgres -- psql -X -At -d paycore -f {query}")
    return {table: int(count) for table, count in (line.split() for line in output.splitlines())}


def test_restore_playbook_brings_back_the_newest_backup(host, secrets, tmp_path):
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("needs Molecule's inventory (run through `molecule verify`)")
    assert host.run("systemctl start paycore-postgresql-backup.service").rc == 0
    before = row_counts(host)
    # This scenario's single host plays both parts the playbook addresses.
    name = host.backend.host
    groups = tmp_path / "groups.yml"
    groups.write_text(
        yaml.safe_dump({"database": {"hosts": {name: None}}, "ledger": {"hosts": {name: None}}})
    )
    playbook = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "playbooks/postgresql-restore.yml"
    command = ["ansible-playbook", "-i", inventory, "-i", str(groups), str(playbook)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert refused.returncode != 0
    assert "postgresql_restore_confirm=yes" in refused.stdout + refused.stderr
    restored = subprocess.run(
        [*command, "-e", "postgresql_restore_confirm=yes"],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert restored.returncode == 0, (restored.stdout + restored.stderr)[-3000:]
    after = row_counts(host)
    # The playbook ends with a reconcile of the restored ledger, which is recorded.
    assert after.pop("reconcile_runs") == before.pop("reconcile_runs") + 1
    assert after == before
    databases = psql(host, "SELECT datname FROM pg_database", db="postgres").stdout.split()
    assert any(d.startswith("paycore_before_") for d in databases), databases
    # The service serves from the restored database, without a restart by hand.
    test_payment_through_the_api_updates_the_balance(host, secrets)


@pytest.fixture(scope="module")
def reconverge():
    """The converge playbook run again with ansible-playbook, output captured."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("needs Molecule's inventory (run through `molecule verify`)")
    result = subprocess.run(
        ["ansible-playbook", "-i", inventory, "--diff", "-v", str(CONVERGE)],
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def test_no_secret_in_converge_output(reconverge, secrets):
    for value in (secrets["owner"], secrets["app"], secrets["monitor"], *secrets["keys"]):
        assert value not in reconverge


def test_converge_again_changes_nothing(reconverge):
    recap = re.findall(r"^\S+\s*: ok=\d+\s+changed=(\d+)", reconverge, re.M)
    assert recap and all(n == "0" for n in recap), reconverge[-2000:]
