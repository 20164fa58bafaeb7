"""Verifies PostgreSQL and the ledger service sharing one converged host."""

import hashlib
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parent.parent))
SETTINGS = yaml.safe_load((SCENARIO / "vars" / "scenario.yml").read_text())
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", SCENARIO.parent.parent))
PG_UNIT = "postgresql@15-main"
PG_CONF = "/etc/postgresql/15/main"
TEXTFILE = "/var/lib/prometheus/node-exporter"
BACKUP_METRICS = f"{TEXTFILE}/paycore-postgresql"
LEDGER_METRICS = f"{TEXTFILE}/paycore-ledger"
TIMERS = (
    "paycore-postgresql-backup.timer",
    "paycore-postgresql-restore-check.timer",
    "paycore-ledger-reconcile.timer",
)


@pytest.fixture(scope="module")
def secrets():
    return {
        "owner": SETTINGS["postgresql_migrator_password"],
        "app": SETTINGS["postgresql_app_password"],
        "admin": SETTINGS["postgresql_admin_password"],
        "monitor": SETTINGS["postgresql_monitor_password"],
        "keys": [m["api_key"] for m in SETTINGS["ledger_service_bootstrap_merchants"]],
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


def sql_value(host, sql, db="paycore"):
    result = psql(host, sql, db=db)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def molecule_inventory():
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("needs Molecule's inventory (run through `molecule verify`)")
    return inventory


def playbook(path, *args, inventory=None, timeout=1200):
    """ansible-playbook on this scenario's hosts; (returncode, output)."""
    command = ["ansible-playbook", "-i", inventory or molecule_inventory(), str(path), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout + done.stderr


def test_services_running_and_enabled(host):
    for unit in (PG_UNIT, "paycore-ledger"):
        assert host.service(unit).is_running, unit
        assert host.service(unit).is_enabled, unit
    for timer in TIMERS:
        assert host.service(timer).is_enabled, timer
        assert host.run(f"systemctl is-active {timer}").stdout.strip() == "active", timer


def unit_property(host, unit, name):
    return host.check_output(f"systemctl show {unit} -p {name} --value").strip()


# Runs before the tests below start these jobs by hand: everything here was
# started by the timers (first run soon after the timer starts, 20 s and
# 60 s in this scenario).
def test_timers_fire_on_their_own_and_their_jobs_succeed(host):
    deadline = time.monotonic() + 180
    pending = set(TIMERS)
    while pending and time.monotonic() < deadline:
        for timer in sorted(pending):
            if unit_property(host, timer, "LastTriggerUSec") not in ("", "n/a", "0"):
                service = timer.replace(".timer", ".service")
                if unit_property(host, service, "ActiveState") != "activating":
                    pending.discard(timer)
        time.sleep(2)
    assert not pending, f"never triggered (or still running) within 180 s: {sorted(pending)}"
    for timer in TIMERS:
        service = timer.replace(".timer", ".service")
        assert unit_property(host, service, "Result") == "success", host.run(
            f"journalctl -u {service} -n 30 --no-pager"
        ).stdout
    for path, name in (
        (f"{TEXTFILE}/paycore_backup.prom", "paycore_backup_last_success_timestamp_seconds"),
        (
            f"{TEXTFILE}/paycore_backup_restore_check.prom",
            "paycore_backup_restore_check_last_success_timestamp_seconds",
        ),
        (f"{TEXTFILE}/paycore_reconcile.prom", "paycore_reconcile_ok"),
    ):
        assert metric(host, name, path) > 0


def test_cluster_has_data_checksums(host):
    assert sql_value(host, "SHOW data_checksums") == "on"


def test_minor_upgrades_are_taken_and_the_server_runs_them(host):
    # postgresql_upgrade_minor: true in this scenario.
    policy = host.check_output("apt-cache policy postgresql-15")
    installed = re.search(r"Installed: (\S+)", policy).group(1)
    candidate = re.search(r"Candidate: (\S+)", policy).group(1)
    assert installed == candidate, policy
    binary = host.check_output("/usr/lib/postgresql/15/bin/postgres --version")
    assert binary.endswith(" " + sql_value(host, "SHOW server_version")), binary


def test_max_connections_follow_the_ledger_hosts(host):
    # No `ledger` group here: this one host, 2 workers x pool of 10, + 2 for
    # one-off commands, + 20 reserved.
    assert sql_value(host, "SHOW max_connections") == str(2 * 10 + 2 + 20)


def test_listening_only_on_loopback(host):
    listeners = host.check_output("ss -Hltn").splitlines()
    local = [line.split()[3] for line in listeners]
    pg = [a for a in local if a.endswith(":5432")]
    ledger = [a for a in local if a.endswith(":8080")]
    assert pg and set(pg) <= {"127.0.0.1:5432", "[::1]:5432"}, pg
    # One SO_REUSEPORT listener per worker process, all on loopback.
    assert len(ledger) == 2 and set(ledger) == {"127.0.0.1:8080"}, ledger


def test_units_order_after_wireguard_only_when_listening_on_it(host):
    # Neither listens on a WireGuard address here (molecule/ledger_service: both do).
    assert not host.file(f"/etc/systemd/system/{PG_UNIT}.service.d/paycore-wireguard.conf").exists
    assert "wg-quick" not in unit_property(host, PG_UNIT, "After")
    assert "wg-quick" not in unit_property(host, "paycore-ledger", "After")


def test_ledger_unit_keeps_restarting_instead_of_hitting_the_start_limit(host):
    assert unit_property(host, "paycore-ledger", "StartLimitIntervalUSec") in ("0", "infinity")
    assert unit_property(host, "paycore-ledger", "RestartUSec") == "5s"
    assert unit_property(host, "paycore-ledger", "Restart") == "on-failure"


def test_pg_hba_allows_exactly_the_expected_clients(host):
    hba = host.file(f"{PG_CONF}/pg_hba.conf").content_string
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert ["local", "all", "postgres", "peer"] in rules
    for rule in rules:
        if rule[0] == "host":
            assert rule[-1] == "scram-sha-256", rule
            assert rule[3] in ("127.0.0.1/32", "::1/128"), rule
    # No `ledger` group in this inventory: a single host keeps the loopback rules.
    assert [
        "host",
        "paycore",
        "paycore_owner,paycore_app,paycore_admin",
        "127.0.0.1/32",
        "scram-sha-256",
    ] in rules
    assert ["host", "paycore,postgres", "paycore_monitor", "127.0.0.1/32", "scram-sha-256"] in rules
    assert not any(r[-1] in ("trust", "md5", "password") for r in rules)
    assert sql_value(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"


def test_roles_authenticate_with_scram(host, secrets):
    for user, key in (
        ("paycore_app", "app"),
        ("paycore_admin", "admin"),
        ("paycore_monitor", "monitor"),
    ):
        assert psql(host, "SELECT 1", user, secrets[key]).stdout.strip() == "1"
    wrong = psql(host, "SELECT 1", "paycore_app", "not-the-password")
    assert wrong.rc != 0 and "password authentication failed" in wrong.stderr
    assert sql_value(host, "SELECT pg_has_role('paycore_monitor', 'pg_monitor', 'member')") == "t"


def schema_public(host, db="paycore"):
    return sql_value(
        host,
        "SELECT nspowner::regrole"
        " || ' ' || has_schema_privilege('paycore_owner', 'public', 'CREATE')"
        " || ' ' || has_schema_privilege('paycore_app', 'public', 'CREATE')"
        " || ' ' || has_schema_privilege('paycore_app', 'public', 'USAGE')"
        " FROM pg_namespace WHERE nspname = 'public'",
        db=db,
    )


def test_owner_role_owns_schema_public_and_alone_creates_in_it(host):
    assert schema_public(host) == "paycore_owner true false true"


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
    admin = host.file("/etc/paycore/ledger-admin.url")
    assert (admin.user, admin.group, admin.mode) == ("root", "paycore-ledger-admin", 0o640)
    assert host.user("paycore-ledger").shell == "/usr/sbin/nologin"
    assert host.file("/opt/paycore/ledger/bin/paycore-ledger").exists
    # No compiler was needed on the host.
    assert not host.exists("gcc") and not host.exists("cc")


def test_each_metrics_writer_writes_only_its_own_files(host):
    directory = host.file(TEXTFILE)
    assert directory.user == "root" and not directory.mode & 0o022
    assert "user:" not in host.check_output(f"getfacl -cp {TEXTFILE}").replace("user::", "")
    links = {
        "paycore_backup.prom": "paycore-postgresql/paycore_backup.prom",
        "paycore_backup_restore_check.prom": "paycore-postgresql/paycore_backup_restore_check.prom",
        "paycore_reconcile.prom": "paycore-ledger/paycore_reconcile.prom",
    }
    for name, target in links.items():
        link = host.file(f"{TEXTFILE}/{name}")
        assert link.is_symlink and link.linked_to == f"{TEXTFILE}/{target}", name
        assert host.check_output(f"stat -c %U {TEXTFILE}/{name}") == "root"
    for user, own, other in (
        ("postgres", BACKUP_METRICS, LEDGER_METRICS),
        ("paycore-ledger", LEDGER_METRICS, BACKUP_METRICS),
    ):
        assert host.file(own).user == user
        as_user = f"runuser -u {user} -- "
        assert host.run(as_user + f"touch {own}/.probe && rm {own}/.probe").rc == 0, user
        # Nothing new in the shared directory, nothing in the other writer's.
        assert host.run(as_user + f"touch {TEXTFILE}/forged.prom").rc != 0, user
        assert host.run(as_user + f"ln -sf /dev/null {TEXTFILE}/paycore_reconcile.prom").rc != 0
        for path in host.check_output(f"ls -1 {other}").split():
            assert host.run(as_user + f"sh -c 'echo x >> {other}/{path}'").rc != 0, (user, path)
        assert host.run(as_user + f"touch {other}/forged.prom").rc != 0, user


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
    assert host.run("curl -fsS --retry 10 --retry-connrefused http://127.0.0.1:8080/readyz").rc == 0
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


@pytest.fixture(scope="module")
def restore_inventory(host, tmp_path_factory):
    """This scenario's single host plays both parts the restore playbook addresses."""
    molecule_inventory()
    name = host.backend.host
    groups = tmp_path_factory.mktemp("restore") / "groups.yml"
    groups.write_text(
        yaml.safe_dump({"database": {"hosts": {name: None}}, "ledger": {"hosts": {name: None}}})
    )
    return ["-i", str(groups)]


RESTORE = PROJECT / "playbooks/postgresql-restore.yml"


def databases(host):
    return psql(host, "SELECT datname FROM pg_database", db="postgres").stdout.split()


def test_a_failed_restore_starts_the_ledger_again_and_changes_nothing(host, restore_inventory):
    before = row_counts(host)
    # A backup whose checksum matches but whose dump pg_restore cannot read.
    bogus = "/var/backups/postgresql/29991231T235959Z"
    host.check_output(
        f"install -d -o postgres -m 0700 {bogus}"
        f" && head -c 4096 /dev/urandom > {bogus}/paycore.dump"
        f" && cd {bogus} && sha256sum paycore.dump > SHA256SUMS && touch rowcounts.txt"
    )
    try:
        rc, output = playbook(
            RESTORE,
            *restore_inventory,
            "-e",
            "postgresql_restore_confirm=yes",
            "-e",
            "postgresql_restore_backup=29991231T235959Z",
        )
    finally:
        host.run(f"rm -rf {bogus}")
    assert rc != 0, output[-3000:]
    assert "The restore failed" in output, output[-3000:]
    assert host.service("paycore-ledger").is_running
    for timer in TIMERS[:2]:
        assert host.run(f"systemctl is-active {timer}").stdout.strip() == "active", timer
    after = row_counts(host)
    # The reconcile timer (hourly) may have recorded a run meanwhile.
    after.pop("reconcile_runs"), before.pop("reconcile_runs")
    assert after == before
    assert sql_value(host, "SELECT datallowconn FROM pg_database WHERE datname = 'paycore'") == "t"
    # What the failed run left; the next run drops it first.
    assert "paycore_restoring" in databases(host)


def test_restore_playbook_brings_back_the_newest_backup(host, secrets, restore_inventory):
    assert host.run("systemctl start paycore-postgresql-backup.service").rc == 0
    before = row_counts(host)
    refused_rc, refused = playbook(RESTORE, *restore_inventory)
    assert refused_rc != 0
    assert "postgresql_restore_confirm=yes" in refused
    rc, output = playbook(RESTORE, *restore_inventory, "-e", "postgresql_restore_confirm=yes")
    assert rc == 0, output[-3000:]
    after = row_counts(host)
    # The playbook ends with a reconcile of the restored ledger, which is recorded.
    assert after.pop("reconcile_runs") == before.pop("reconcile_runs") + 1
    assert after == before
    names = databases(host)
    assert any(d.startswith("paycore_before_") for d in names), names
    assert "paycore_restoring" not in names, names
    # The restored database is set up as the role sets up the live one.
    assert schema_public(host) == "paycore_owner true false true"
    for timer in TIMERS[:2]:
        assert host.run(f"systemctl is-active {timer}").stdout.strip() == "active", timer
    # The service serves from the restored database, without a restart by hand.
    test_payment_through_the_api_updates_the_balance(host, secrets)


def file_digest(host, path):
    return hashlib.sha256(host.file(path).content).hexdigest()


ROLE_ONLY = SCENARIO / "postgresql.yml"


def test_settings_postgresql_cannot_parse_never_replace_the_live_file(host):
    live = f"{PG_CONF}/conf.d/60-paycore.conf"
    before = file_digest(host, live)
    rc, output = playbook(
        ROLE_ONLY, "-e", json.dumps({"postgresql_settings": {"work_mem": "lots"}})
    )
    assert rc != 0, output[-3000:]
    assert 'invalid value for parameter "work_mem"' in output, output[-3000:]
    assert file_digest(host, live) == before
    assert host.service(PG_UNIT).is_running


def test_a_pg_hba_conf_postgresql_cannot_parse_is_put_back(host, secrets):
    live = f"{PG_CONF}/pg_hba.conf"
    before = file_digest(host, live)
    # A role name with a space shifts every field of its rules.
    rc, output = playbook(ROLE_ONLY, "-e", json.dumps({"postgresql_app_role": "paycore app"}))
    assert rc != 0, output[-3000:]
    assert "PostgreSQL refused the new configuration" in output, output[-3000:]
    assert "pg_hba.conf line" in output, output[-3000:]
    assert file_digest(host, live) == before
    assert sql_value(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    assert psql(host, "SELECT 1", "paycore_app", secrets["app"]).stdout.strip() == "1"


def test_changed_settings_are_reloaded_and_restarted_only_when_needed(host):
    started = sql_value(host, "SELECT pg_postmaster_start_time()")
    # Takes effect on reload: no restart.
    reload_only = {"log_min_duration_statement": "250ms"}
    rc, output = playbook(ROLE_ONLY, "-e", json.dumps({"postgresql_settings": reload_only}))
    assert rc == 0, output[-3000:]
    assert sql_value(host, "SHOW log_min_duration_statement") == "250ms"
    assert sql_value(host, "SELECT pg_postmaster_start_time()") == started
    # Needs a restart, which the handler sees once the reload has been read.
    needs_restart = {**reload_only, "max_locks_per_transaction": "128"}
    rc, output = playbook(ROLE_ONLY, "-e", json.dumps({"postgresql_settings": needs_restart}))
    assert rc == 0, output[-3000:]
    assert sql_value(host, "SHOW max_locks_per_transaction") == "128"
    assert sql_value(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert sql_value(host, "SELECT pg_postmaster_start_time()") != started
    # Back to the scenario's settings.
    rc, output = playbook(ROLE_ONLY)
    assert rc == 0, output[-3000:]
    assert sql_value(host, "SHOW max_locks_per_transaction") == "64"
    assert sql_value(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_ledger_is_back_after_the_restarts(host, secrets):
    test_payment_through_the_api_updates_the_balance(host, secrets)


def test_no_secret_in_any_ansible_output(secrets):
    """The scenario's every Ansible run, from the first converge (with all its
    changes, -v and --diff) on, is logged (ANSIBLE_LOG_PATH, molecule.yml)."""
    log_path = os.environ.get("ANSIBLE_LOG_PATH")
    if not log_path or not Path(log_path).is_file():
        pytest.skip("needs the scenario's Ansible log (run through `molecule verify`)")
    log = Path(log_path).read_text(errors="replace")
    # The first converge is in it, with its changes.
    converge = log.find("PLAY [Converge]")
    assert converge >= 0, "the converge is not in the log"
    first_recap = re.search(r"PLAY RECAP.*?changed=(\d+)", log[converge:], re.S)
    assert first_recap and int(first_recap.group(1)) > 0, "the first converge changed nothing?"
    for value in (
        secrets["owner"],
        secrets["app"],
        secrets["admin"],
        secrets["monitor"],
        *secrets["keys"],
    ):
        assert value not in log
