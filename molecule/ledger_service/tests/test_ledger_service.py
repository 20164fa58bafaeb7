"""The ledger service on its own host, with PostgreSQL on another: what the
split adds to molecule/postgresql (both on one host)."""

import json
import os
import re
import shlex
import subprocess
import tarfile
import time
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


def test_pg_hba_admits_the_owner_runtime_and_admin_roles_from_the_ledger_host_only():
    rules = [
        line.split()
        for line in db.file("/etc/postgresql/15/main/pg_hba.conf").content_string.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    remote = [rule for rule in rules if rule[0] == "host" and "paycore_app" in rule[2]]
    clients = "paycore_owner,paycore_app,paycore_admin"
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
        (db, "paycore_admin", "postgresql_admin_password", DB_IP),  # not from the ledger host
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


def test_webhook_delivery_worker_runs_hardened_and_claims_from_the_database():
    worker = app.service("paycore-ledger-webhooks")
    assert worker.is_running and worker.is_enabled
    props = app.check_output(
        "systemctl show paycore-ledger-webhooks -p User -p NoNewPrivileges -p ProtectSystem"
        " -p PrivateTmp -p CapabilityBoundingSet -p NRestarts"
    )
    assert {
        "User=paycore-ledger",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "NRestarts=0",
    } <= set(props.splitlines())
    # Its own metrics, on loopback only; it claims deliveries as the runtime role.
    assert listeners(app, 9466) == {"127.0.0.1:9466"}
    metrics = app.check_output("curl -sS http://127.0.0.1:9466/metrics")
    assert "paycore_webhook_attempts_total" in metrics
    journal = app.check_output("journalctl -u paycore-ledger-webhooks --no-pager -o cat")
    assert "webhook delivery worker started" in journal
    assert "cannot claim deliveries" not in journal


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


def test_retention_purges_run_as_the_admin_role_from_their_timer():
    assert app.service("paycore-ledger-purge.timer").is_enabled
    assert app.service("paycore-ledger-purge.timer").is_running
    old_key = uuid.uuid4().hex
    db_query(
        "INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path, state,"
        " status_code, response_body, created_at) SELECT id, :'key', '\\x00', 'POST',"
        " '/v1/payments', 'completed', 201, '{}', now() - interval '3 days' FROM merchants LIMIT 1",
        key=old_key,
    )
    assert db_query("SELECT count(*) FROM idempotency_keys WHERE key = :'key'", key=old_key) == "1"
    result = app.run("systemctl start paycore-ledger-purge.service")
    assert result.rc == 0, app.run("journalctl -u paycore-ledger-purge -n 30").stdout
    assert db_query("SELECT count(*) FROM idempotency_keys WHERE key = :'key'", key=old_key) == "0"
    assert unit_property(app, "paycore-ledger-purge.service", "Result") == "success"


def test_admin_url_is_roots_only_and_the_runtime_role_cannot_administer():
    admin_file = app.file("/etc/paycore/ledger-admin.url")
    assert (admin_file.user, admin_file.group, admin_file.mode) == (
        "root",
        "paycore-ledger-admin",
        0o640,
    )
    assert "paycore-ledger-admin" not in app.check_output("id paycore-ledger")
    assert "paycore_admin" in admin_file.content_string
    assert "paycore_admin" not in app.file("/etc/paycore/ledger-database.url").content_string
    unread = app.run("runuser -u paycore-ledger -- cat /etc/paycore/ledger-admin.url")
    assert unread.rc != 0
    # The runtime role's URL, as the service has it: no new merchants.
    insert = app.run(
        'psql -X -At -v ON_ERROR_STOP=1 "$(cat /etc/paycore/ledger-database.url)"'
        " -c \"INSERT INTO merchants (id, name) VALUES ('mch_molecule_sneaky', 'sneaky')\""
    )
    assert insert.rc != 0 and "permission denied for table merchants" in insert.stderr
    # An admin command with the runtime role's credentials: one line saying which to use.
    refused = app.run(
        "set -a; . /etc/paycore/ledger.env; /opt/paycore/ledger/bin/paycore-ledger"
        " merchants create --name molecule-refused"
    )
    assert refused.rc == 1 and "Traceback" not in refused.stderr
    assert "admin role's credentials" in refused.stderr, refused.stderr


def test_an_operator_creates_a_merchant_with_the_admin_command():
    name = f"molecule-operator-{uuid.uuid4().hex[:8]}"
    result = app.run(f"paycore-ledger-admin merchants create --name {name}")
    assert result.rc == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["merchant_id"].startswith("mch_") and created["api_key"]
    status, _ = api_with(created["api_key"], "GET", "/v1/accounts")
    assert status == 200
    revoked = app.run(f"paycore-ledger-admin merchants revoke-key {created['key_id']}")
    assert revoked.rc == 0, revoked.stderr
    assert api_with(created["api_key"], "GET", "/v1/accounts")[0] == 401


def api_with(key, method, path):
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]
    command += ["-H", f"Authorization: Bearer {key}", f"http://127.0.0.1:8080{path}"]
    return int(app.check_output(shlex.join(command))), None


def unit_property(host, unit, name):
    return host.check_output(f"systemctl show {unit} -p {name} --value").strip()


def test_reconcile_timer_fires_on_its_own():
    # First run 20 s after the timer starts in this scenario (5 min by default).
    deadline = time.monotonic() + 180
    timer, service = "paycore-ledger-reconcile.timer", "paycore-ledger-reconcile.service"
    while time.monotonic() < deadline:
        fired = unit_property(app, timer, "LastTriggerUSec") not in ("", "n/a", "0")
        if fired and unit_property(app, service, "ActiveState") != "activating":
            break
        time.sleep(2)
    else:
        pytest.fail(f"{timer} did not fire within 180 s")
    assert unit_property(app, service, "Result") == "success", app.run(
        f"journalctl -u {service} -n 30 --no-pager"
    ).stdout


def test_both_units_start_after_the_wireguard_interface_they_listen_on():
    dropin = "/etc/systemd/system/postgresql@15-main.service.d/paycore-wireguard.conf"
    assert db.file(dropin).contains("^After=wg-quick@wg0.service$")
    assert "wg-quick@wg0.service" in unit_property(db, "postgresql@15-main", "After")
    assert "wg-quick@wg0.service" in unit_property(db, "postgresql@15-main", "Wants")
    assert "wg-quick@wg0.service" in unit_property(app, "paycore-ledger", "After")
    assert unit_property(app, "paycore-ledger", "StartLimitIntervalUSec") in ("0", "infinity")


def test_max_connections_are_sized_for_the_ledger_hosts():
    # One ledger host: 2 workers x pool of 10, + 2 for one-off commands, + 20 reserved.
    assert db_query("SHOW max_connections") == str(2 * 10 + 2 + 20)


def test_reconcile_writes_only_its_own_metrics_file():
    textfile = "/var/lib/prometheus/node-exporter"
    link = app.file(f"{textfile}/paycore_reconcile.prom")
    assert link.is_symlink
    assert link.linked_to == f"{textfile}/paycore-ledger/paycore_reconcile.prom"
    assert app.file(f"{textfile}/paycore-ledger").user == "paycore-ledger"
    forged = app.run(f"runuser -u paycore-ledger -- touch {textfile}/paycore_backup.prom")
    assert forged.rc != 0
    assert not app.exists("getfacl") or "user:paycore-ledger" not in app.check_output(
        f"getfacl -cp {textfile}"
    )


def test_wheels_were_fetched_for_the_hosts_python_and_platform():
    """Dependency wheels are the host's (CPython 3.11, x86_64, glibc 2.36 here),
    fetched binary-only whatever the controller's Python."""
    probe = app.check_output(
        "python3 -c 'import os, platform, sys;"
        ' print("cp%d%d-%s-%s" % (*sys.version_info[:2], platform.machine(),'
        ' os.confstr("CS_GNU_LIBC_VERSION").replace(" ", "")))\''
    )
    wheelhouse = Path.home() / ".cache/paycore/wheelhouse"
    builds = sorted(wheelhouse.glob(f"*-{probe}.tar"), key=lambda p: p.stat().st_mtime)
    assert builds, f"no build for {probe} in {wheelhouse}"
    with tarfile.open(builds[-1]) as archive:
        wheels = [Path(name).name for name in archive.getnames() if name.endswith(".whl")]
    python_tag = probe.split("-")[0]
    for wheel in wheels:
        tags = wheel[: -len(".whl")].split("-")[-3:]
        assert tags[0] in ("py3", python_tag) or tags[1] == "abi3", wheel
        assert tags[2] == "any" or "manylinux" in tags[2], wheel
    assert any(w.startswith("asyncpg-") for w in wheels), wheels


def ansible(*args, timeout=600):
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("needs Molecule's inventory (run through `molecule verify`)")
    command = ["ansible-playbook", "-i", inventory, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout + done.stderr


def test_a_host_with_too_old_a_python_is_refused_early():
    fake = "/usr/local/bin/python3.10-molecule"
    probe = {"version": [3, 10], "implementation": "cpython", "machine": "x86_64"}
    script = f"#!/bin/sh\necho {shlex.quote(json.dumps({**probe, 'libc': 'glibc 2.35'}))}\n"
    app.check_output(f"printf '%s' {shlex.quote(script)} > {fake} && chmod 0755 {fake}")
    try:
        rc, output = ansible(
            str(SCENARIO / "converge.yml"),
            "--limit",
            "paycore-ledger_service-app",
            "-e",
            f"ledger_service_python={fake}",
        )
    finally:
        app.run(f"rm -f {fake}")
    assert rc != 0
    assert "cannot run the ledger service: it needs CPython 3.11 or newer" in output, output[-3000:]
    # It stopped at the check: nothing was built, copied or restarted.
    assert "Build the wheelhouse" not in output


def test_migrations_run_once_per_play_run_also_with_serial(tmp_path):
    """Two inventory names for the ledger host, one at a time (serial: 1):
    the migrations run on the first only."""
    again = "paycore-ledger_service-app-again"
    extra = tmp_path / "again.yml"
    extra.write_text(
        yaml.safe_dump(
            {
                "ledger": {
                    "hosts": {
                        again: {
                            "ansible_connection": "community.docker.docker",
                            "ansible_host": "paycore-ledger_service-app",
                        }
                    }
                }
            }
        )
    )
    play = tmp_path / "migrate.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Migrate, one host at a time",
                    "hosts": "ledger",
                    "serial": 1,
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Migrate",
                            "ansible.builtin.include_role": {
                                "name": "ledger_service",
                                "tasks_from": "migrate",
                            },
                        }
                    ],
                }
            ]
        )
    )
    rc, output = ansible("-i", str(extra), str(play))
    assert rc == 0, output[-3000:]
    assert re.search(r"^ok: \[paycore-ledger_service-app\]", output, re.M), output[-3000:]
    assert re.search(rf"^skipping: \[{again}\]", output, re.M), output[-3000:]


def test_a_code_change_and_its_rollback_are_both_deployed():
    """A code change keeps the version; deploying it, then the code before it
    again (docs/alerts.md: "roll back"), runs each on the host in turn, and
    leaves no earlier build behind."""
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        pytest.skip("needs the scenario's copy of service/ (run through `molecule verify`)")
    source = Path(ephemeral, "service", "src", "paycore_ledger", "__init__.py")
    installed = (
        "/opt/paycore/ledger/bin/python -c 'import pathlib, paycore_ledger;"
        " print(pathlib.Path(paycore_ledger.__file__).read_text())'"
    )
    converge = (str(SCENARIO / "converge.yml"), "--limit", "paycore-ledger_service-app")
    original = source.read_text()
    marker = f"# deployed by test {uuid.uuid4().hex}"
    try:
        source.write_text(f"{original}{marker}\n")
        rc, output = ansible(*converge)
        assert rc == 0, output[-3000:]
        assert marker in app.check_output(installed)
    finally:
        source.write_text(original)
    rc, output = ansible(*converge)
    assert rc == 0, output[-3000:]
    assert marker not in app.check_output(installed)
    assert app.service("paycore-ledger").is_running
    # Only the build installed stays on the host.
    build = app.file("/opt/paycore/ledger/paycore-build").content_string.strip()
    assert app.check_output("ls -A /opt/paycore/wheelhouse").split() == [build]


def test_no_secret_in_any_ansible_output():
    """The scenario's every Ansible run, from the first converge (with all its
    changes, -v and --diff) on, is logged (ANSIBLE_LOG_PATH, molecule.yml)."""
    log_path = os.environ.get("ANSIBLE_LOG_PATH")
    if not log_path or not Path(log_path).is_file():
        pytest.skip("needs the scenario's Ansible log (run through `molecule verify`)")
    log = Path(log_path).read_text(errors="replace")
    converge = log.find("PLAY [Converge the database host]")
    assert converge >= 0, "the converge is not in the log"
    first_recap = re.search(r"PLAY RECAP.*?changed=(\d+)", log[converge:], re.S)
    assert first_recap and int(first_recap.group(1)) > 0, "the first converge changed nothing?"
    secrets = [
        SECRETS["postgresql_migrator_password"],
        SECRETS["postgresql_app_password"],
        SECRETS["postgresql_admin_password"],
        SECRETS["postgresql_monitor_password"],
        API_KEY,
    ]
    for value in secrets:
        assert value not in log
