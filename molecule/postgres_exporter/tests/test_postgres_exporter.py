"""Verifies postgres_exporter against a real PostgreSQL (made by the postgresql
role in prepare.yml, pg_stat_statements included) on a converged lab host."""

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from exporter_checks import families, rule_metric_names, scrape
from test_dashboards import dashboard_metric_names

WG = "10.44.0.5"
PASSWORD = "molecule-only-monitor-password"
# Every password prepare.yml's postgresql role set with CREATE/ALTER ROLE.
ROLE_PASSWORDS = (
    PASSWORD,
    "molecule-only-migrator-password",
    "molecule-only-app-password",
)


def psql(host, sql):
    return host.check_output(f"runuser -u postgres -- psql -X -At -d paycore -c {sql!r}")


def metrics(host, address="127.0.0.1"):
    return scrape(host, 9187, address)


def test_running_and_enabled(host):
    service = host.service("prometheus-postgres-exporter")
    assert service.is_running
    assert service.is_enabled


def test_listens_on_localhost_and_wireguard_only(host):
    listening = host.check_output("ss -Hltn 'sport = :9187' | awk '{print $4}'").split()
    assert sorted(listening) == sorted(["127.0.0.1:9187", f"{WG}:9187"])


def test_connected_to_postgresql(host):
    text = metrics(host, WG)
    assert re.search(r"^pg_up 1$", text, re.M), "the exporter cannot reach PostgreSQL"


def test_connects_as_the_monitoring_role(host):
    out = host.check_output(
        "runuser -u postgres -- psql -d paycore -Atc "
        "\"SELECT count(*) FROM pg_stat_activity WHERE usename = 'paycore_monitor'\""
    )
    # Connections are per scrape; scrape once and look again if none is open.
    if out == "0":
        metrics(host)
    roles = host.check_output(
        "runuser -u postgres -- psql -d paycore -Atc "
        "\"SELECT string_agg(b.rolname, ',') FROM pg_auth_members m "
        "JOIN pg_roles b ON b.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
        "WHERE u.rolname = 'paycore_monitor'\""
    )
    assert "pg_monitor" in roles.split(",")


def test_extended_queries_served(host):
    text = metrics(host)
    served = families(text)
    for name in (
        "pg_postmaster_start_time_seconds",
        "pg_replication_lag",
        "pg_replication_is_replica",
        "pg_stat_user_tables_n_live_tup",
        "pg_stat_user_tables_n_dead_tup",
        "pg_stat_user_tables_seq_scan",
        "pg_stat_user_tables_size_bytes",
        "pg_stat_database_xact_commit",
        "pg_database_size_bytes",
        "pg_settings_max_connections",
    ):
        assert name in served, name
    # The ledger database's own table, with its real row count.
    assert re.search(
        r"^pg_stat_user_tables_n_live_tup"
        r'\{[^}]*datname="paycore"[^}]*relname="entries"[^}]*\} 100$',
        text,
        re.M,
    )
    assert "pg_exporter_user_queries_load_error" not in text or re.search(
        r"^pg_exporter_user_queries_load_error\{[^}]*\} 0$", text, re.M
    )


def test_serves_every_pg_family_the_dashboards_use(host):
    served = families(metrics(host))
    needed = {name for name in dashboard_metric_names() if name.startswith("pg_")}
    assert needed, "no pg_ metric found in the dashboards"
    needed |= rule_metric_names("pg_")
    assert needed - served == set()


def test_password_only_in_the_secret_file(host):
    secret = host.file("/etc/prometheus-postgres-exporter/password")
    assert secret.user == "root"
    assert secret.group == "prometheus"
    assert secret.mode == 0o640
    assert secret.content_string == PASSWORD
    assert PASSWORD not in host.file("/etc/default/prometheus-postgres-exporter").content_string
    pid = host.check_output("systemctl show prometheus-postgres-exporter -p MainPID --value")
    environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    cmdline = host.check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert PASSWORD not in environ
    assert PASSWORD not in cmdline


def test_unit_is_hardened(host):
    props = host.check_output(
        "systemctl show prometheus-postgres-exporter -p NoNewPrivileges -p ProtectSystem -p User"
    )
    assert "NoNewPrivileges=yes" in props
    assert "ProtectSystem=strict" in props
    assert "User=prometheus" in props


def test_statements_exported_per_role_with_their_text(host):
    """pg_stat_statements, as the ledger's role ran them in prepare.yml: calls
    and total time per statement, normalised text ($1 for the constant)."""
    text = metrics(host)
    calls = re.findall(
        r'^pg_stat_statements_calls\{([^}]*usename="paycore_app"[^}]*)\} (\S+)$', text, re.M
    )
    ours = [
        (labels, float(value)) for labels, value in calls if "FROM entries WHERE id > $1" in labels
    ]
    assert ours, calls
    assert ours[0][1] >= 5
    assert re.search(r'^pg_stat_statements_seconds_total\{[^}]*usename="paycore_app"', text, re.M)


def test_open_transactions_and_wraparound_are_served(host):
    text = metrics(host)
    for state in ("active", "idle in transaction"):
        assert re.search(
            rf'^pg_open_transactions_max_age_seconds\{{[^}}]*state="{state}"[^}}]*\}} \S+$',
            text,
            re.M,
        ), state
    ages = re.findall(r"^pg_wraparound_age\{([^}]*)\} (\S+)$", text, re.M)
    paycore = {labels for labels, _ in ages if 'datname="paycore"' in labels}
    assert any('kind="transaction"' in labels for labels in paycore)
    assert any('kind="multixact"' in labels for labels in paycore)


def test_open_transactions_of_the_ledgers_role_count_and_a_superusers_do_not(host):
    """A transaction of the runtime role shows in pg_open_transactions; the same
    as postgres (like the backup's snapshot session) is left out."""
    session = (
        "PGPASSWORD=molecule-only-app-password psql -X -h 127.0.0.1 -U paycore_app -d paycore"
        " -c 'BEGIN' -c 'SELECT 1' -c 'SELECT pg_sleep(30)' >/dev/null 2>&1 &"
    )
    host.check_output(f"bash -c {session!r}")
    try:
        deadline = 20
        for _ in range(deadline):
            active = re.search(
                r'^pg_open_transactions_count\{[^}]*state="active"[^}]*\} (\S+)$',
                metrics(host),
                re.M,
            )
            if active and float(active.group(1)) >= 1:
                break
            time.sleep(1)
        assert active and float(active.group(1)) >= 1
    finally:
        psql(
            host,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'paycore_app'",
        )
    # The superuser's transaction lasts 20 s; within it the count must reach 0
    # (a terminated backend of the app may take a moment to go on a busy host)
    # and would stay above 0 for good if the superuser's were counted.
    superuser = "runuser -u postgres -- psql -X -d paycore -c 'BEGIN' -c 'SELECT pg_sleep(20)'"
    host.check_output(f"bash -c {superuser + ' >/dev/null 2>&1 &'!r}")
    time.sleep(1)
    for _ in range(12):
        count = re.search(
            r'^pg_open_transactions_count\{[^}]*state="active"[^}]*\} (\S+)$', metrics(host), re.M
        )
        if float(count.group(1)) == 0:
            break
        time.sleep(1)
    assert float(count.group(1)) == 0


def test_no_statement_text_holds_a_password(host):
    """The postgresql role set three passwords with CREATE/ALTER ROLE: utility
    statements are not tracked, so no text in pg_stat_statements (nor the
    exporter's labels) carries them."""
    assert psql(host, "SHOW pg_stat_statements.track_utility") == "off"
    texts = psql(host, "SELECT string_agg(query, ' ') FROM pg_stat_statements")
    exported = metrics(host)
    for secret in ROLE_PASSWORDS:
        assert secret not in texts
        assert secret not in exported
