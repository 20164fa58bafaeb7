"""The drills of docs/backup-restore.md, in order, on one converged cluster:
a leader killed under traffic, its return, a restore to a point in time after
a mistaken DROP DATABASE, bad restore input refused before anything changes,
and every database host lost and rebuilt from the object store alone.
Figures (failover time, data lost, restore times) go to drills.json in the
scenario's ephemeral directory and to the test output (DRILL lines); the tests
assert what must hold (no acknowledged payment lost, none doubled, reconcile
clean), never how fast."""

import json
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    DATABASE_HOSTS,
    EPHEMERAL,
    GATEWAY,
    PATRONI,
    PROJECT,
    SETTINGS,
    Traffic,
    dexec,
    leader,
    member_names,
    playbook,
    psql,
    reconcile,
    record,
    recreate,
    run,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from exporter_checks import families, rule_metric_names
from test_dashboards import dashboard_metric_names

STATE = {}  # what a drill leaves for the next one


def fetch(container, url):
    """An HTTP GET inside a container (not every host has curl)."""
    script = f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"
    return dexec(container, f"python3 -c {shlex.quote(script)}").stdout


def settled_payments(merchant, calls):
    """Every call answered or replayed to 201: key -> payment id (exactly one each)."""
    session = merchant.session()
    final = {}
    for call in calls:
        if call.key in final:
            continue
        answered = [c for c in calls if c.key == call.key and c.status == 201]
        final[call.key] = answered[0].payment if answered else merchant.settle(session, call)
    return final


def stored(payment_ids):
    """The payments of these ids in the ledger (read on the leader): id -> amount."""
    ids = [p for p in payment_ids if p]
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", p) for p in ids), ids
    listed = ",".join(ids)  # checked above: letters, digits, underscores
    query = "SELECT id || ' ' || amount FROM payments WHERE id = ANY(string_to_array('{}', ','))"
    rows = psql(leader(), query.format(listed))
    return {line.split()[0]: int(line.split()[1]) for line in rows.splitlines() if line}


def assert_exactly_once(payments, amounts):
    """Each key's payment is in the ledger once, with its amount; no amount twice."""
    assert len(set(payments.values())) == len(payments), "two keys share a payment"
    found = stored(payments.values())
    for key, payment in payments.items():
        assert found.get(payment) == amounts[key], (key, payment, found.get(payment))
    low, high = int(min(amounts.values())), int(max(amounts.values()))
    in_range = f"FROM payments WHERE amount BETWEEN {low} AND {high}"  # two ints
    doubled = psql(leader(), f"SELECT amount {in_range} GROUP BY amount HAVING count(*) > 1")
    assert doubled == "", f"amounts posted twice: {doubled}"
    count = int(psql(leader(), f"SELECT count(*) {in_range}"))
    assert count == len(set(amounts.values())), (count, len(amounts))


def replication_lag(container):
    """How far the standby's disk is behind the leader's WAL: bytes, seconds.
    Under synchronous_mode the commits in that gap are not answered yet; an
    asynchronous standby (paycore_database_synchronous: false) lags as much,
    and a failover at that instant would lose them acknowledged."""
    row = psql(
        container,
        "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)), 0)::bigint"
        " || ' ' || coalesce(max(extract(epoch FROM flush_lag)), 0) FROM pg_stat_replication",
    )
    size, seconds = row.split()
    return int(size), float(seconds)


def assert_reconciles():
    done = reconcile(leader())
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["ok"] is True


def test_cluster_is_highly_available():
    """Two members streaming synchronously, three etcd members, WAL in the object store."""
    members = member_names()
    roles = sorted(m["role"] for m in members.values())
    assert roles == ["leader", "sync_standby"], members
    health = dexec(
        GATEWAY,
        "ETCDCTL_API=3 etcdctl --endpoints http://10.44.0.1:2379 endpoint health --cluster 2>&1",
    )
    assert health.stdout.count("is healthy") == 3, health.stdout + health.stderr
    info = json.loads(
        dexec(
            leader(), "runuser -u postgres -- pgbackrest --stanza=paycore --output=json info"
        ).stdout
    )[0]
    assert info["status"]["code"] == 0, info["status"]
    assert info["cipher"] == "aes-256-cbc"
    assert len(info["backup"]) >= 1
    # Segments written before the stanza existed (bootstrap) failed once;
    # every one since reached the store.
    archived = psql(
        leader(),
        "SELECT archived_count > 0 AND (last_failed_time IS NULL"
        " OR last_archived_time > last_failed_time) FROM pg_stat_archiver",
    )
    assert archived == "t"


def test_the_single_host_site_kept_its_data_through_the_conversion(merchant):
    """docs/backup-restore.md, "From one host to two", steps 2 to 4 (the converge,
    on the single-host site prepare.yml deployed): every payment taken before
    is in the ledger with its amount, its key still answers with it, reconcile
    is clean, payments are taken after, and the old server cannot start again."""
    before = json.loads((EPHEMERAL / "single-host-payments.json").read_text())
    assert len(before) == 20, before
    # Step 4, as the page says it.
    listed = dexec(DATABASE_HOSTS[0], f"{PATRONI} list").stdout
    assert "| Leader" in listed and "| Sync Standby" in listed, listed
    expected = {p["payment"]: p["amount"] for p in before.values()}
    assert stored(expected) == expected
    session = merchant.session()
    for key, taken in before.items():
        answer = merchant.get(session, f"/v1/payments/{taken['payment']}")
        assert answer.status_code == 200, (key, answer.status_code, answer.text)
        assert answer.json()["amount"] == taken["amount"], (key, answer.json())
        again = merchant.pay(session, key=key, amount=taken["amount"])
        assert (again.status, again.payment) == (201, taken["payment"]), key
    assert_reconciles()
    after = [merchant.pay(session) for _ in range(5)]
    assert [c.status for c in after] == [201] * 5
    assert set(stored(c.payment for c in after)) == {c.payment for c in after}
    # The host that held the data: its old cluster disabled, and wanted by
    # nothing at boot (drill 2 boots the killed leader again).
    took_over = DATABASE_HOSTS[0]  # the single-host site's database host
    start = dexec(took_over, "grep -v '^#' /etc/postgresql/15/main.before-patroni/start.conf")
    assert start.stdout.strip() == "disabled"
    wanted = "ls /run/systemd/generator/postgresql.service.wants/ 2>/dev/null || true"
    wants = dexec(took_over, wanted)
    assert wants.stdout.strip() == ""
    record(
        "single_host_conversion",
        {"payments_before": len(before), "present_after": len(expected), "taken_after": len(after)},
    )


def test_slow_queries_are_tracked_on_every_member():
    """pg_stat_statements is preloaded under Patroni as it was on the single
    server Patroni took over (postgres-exporter reads it on the leader)."""
    for member in DATABASE_HOSTS:
        assert "pg_stat_statements" in psql(member, "SHOW shared_preload_libraries")
    assert int(psql(leader(), "SELECT count(*) FROM pg_stat_statements")) > 0


def test_patroni_serves_the_families_the_dashboards_use():
    """What the dashboards and the rules read from Patroni and etcd, they serve."""
    served = set()
    for name in DATABASE_HOSTS:
        served |= families(fetch(name, "http://127.0.0.1:8008/metrics"))
    served |= families(fetch(GATEWAY, "http://10.44.0.1:2379/metrics"))
    needed = {n for n in dashboard_metric_names() if n.startswith("patroni_")}
    assert needed, "no patroni_ metric in the dashboards"
    needed |= rule_metric_names("patroni_") | rule_metric_names("etcd_")
    assert needed - served == set()


def test_drill1_leader_killed_under_traffic(merchant):
    """Kill the leader's container under keyed traffic through the edge; time the
    first write after it; replay the unanswered; nothing lost, nothing doubled."""
    victim = leader()
    assert victim in DATABASE_HOSTS
    with Traffic(merchant, workers=4, interval=0.5):
        wait_until(
            lambda: sum(c.status == 201 for c in merchant.calls) >= 20,
            120,
            0.5,
            "20 payments before the kill",
        )
        # The exposure of the asynchronous choice, under this traffic: how far
        # the standby trails the leader (docs/backup-restore.md, its RPO).
        lags = [replication_lag(victim) for _ in range(10)]
        acknowledged_before = [c for c in merchant.calls if c.status == 201]
        issued = time.monotonic()
        run("docker", "kill", victim)
        # A request that started before `docker kill` returned may still have
        # been answered by the old leader: only later ones count.
        killed = time.monotonic()
        first = wait_until(
            lambda: min(
                (c.ended for c in list(merchant.calls) if c.status == 201 and c.started >= killed),
                default=None,
            ),
            240,
            0.2,
            "the first payment answered 201 after the kill",
        )
        time.sleep(5)  # traffic goes on after the switch
    calls = list(merchant.calls)
    after = [c for c in calls if c.started >= killed]
    failed = [c for c in calls if c.status != 201]
    record(
        "drill1_failover",
        {
            "killed": victim,
            "seconds_from_kill_to_first_write": round(first - issued, 1),
            "calls": len(calls),
            "acknowledged_before_kill": len(acknowledged_before),
            "unanswered_or_5xx": len(failed),
            "statuses_after_kill": sorted({c.status for c in after}),
        },
    )
    # A request caught in the switch ends as a 503 with Retry-After (or no
    # answer at all, when the host that had it died), never as a 500. (429:
    # the edge's rate limit, when the retries of the switch come in a burst.)
    assert not [c for c in calls if c.status not in (0, 201, 429, 502, 503, 504)], sorted(
        {c.status for c in calls}
    )
    payments = settled_payments(merchant, calls)
    amounts = {c.key: c.amount for c in calls}
    assert_exactly_once(payments, amounts)
    record("drill1_payments", {"keys": len(payments), "lost": 0, "doubled": 0})
    span = max(c.ended for c in acknowledged_before) - min(c.started for c in acknowledged_before)
    rate = len(acknowledged_before) / span if span > 0 else 0.0
    worst = max(seconds for _, seconds in lags)
    record(
        "async_rpo_estimate",
        {
            "standby_behind_bytes_max": max(size for size, _ in lags),
            "standby_behind_seconds_max": round(worst, 4),
            "samples": len(lags),
            "payments_per_second": round(rate, 1),
            "payments_at_risk_at_that_rate": round(worst * rate, 2),
        },
    )
    assert_reconciles()
    assert leader() != victim
    STATE["victim"] = victim
    STATE["payments"] = payments
    STATE["amounts"] = amounts


def test_drill2_killed_host_rejoins_as_replica():
    """The killed host boots again and follows the new leader by itself."""
    victim = STATE["victim"]
    started = time.monotonic()
    run("docker", "start", victim)

    def streaming():
        member = member_names().get(victim)
        leaders = [m for m in member_names().values() if m["role"] == "leader"]
        return (
            member is not None
            and member["role"] in ("replica", "sync_standby")
            and member["state"] in ("running", "streaming")
            and leaders
            and member.get("timeline") == leaders[0].get("timeline")
            and member.get("lag", 1) == 0
        )

    wait_until(streaming, 300, 2, f"{victim} streaming from the new leader")
    rewound = dexec(
        victim, "journalctl -u patroni --no-pager | grep -c -i 'pg_rewind' || true"
    ).stdout
    record(
        "drill2_rejoin",
        {
            "host": victim,
            "seconds_from_start_to_streaming": round(time.monotonic() - started, 1),
            "patroni_log_lines_about_pg_rewind": int(rewound.strip() or 0),
        },
    )
    wait_until(
        lambda: sorted(m["role"] for m in member_names().values()) == ["leader", "sync_standby"],
        120,
        2,
        "a synchronous standby again",
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["-e", "postgresql_restore_target_time='2001-01-01 00:00:00+00'"], "outside the archive"),
        (
            ["-e", "postgresql_pgbackrest_cipher_pass=not-the-key-of-these-backups"],
            "do not decrypt",
        ),
        (["-e", "postgresql_pgbackrest_s3_endpoint=paycore-database_ha-nowhere"], "cannot be read"),
    ],
    ids=["target-outside-archive", "wrong-key", "object-store-unreachable"],
)
def test_bad_restore_input_stops_before_touching_the_cluster(merchant, extra, expected):
    before = leader()
    code, output, seconds = playbook(
        "postgresql-restore.yml", "-e", "postgresql_restore_confirm=yes", *extra
    )
    assert code != 0
    assert expected in output, output[-3000:]
    assert "Nothing was changed" in output
    assert "Stop paycore-ledger" not in output
    assert leader() == before
    session = merchant.session()
    assert merchant.pay(session).status == 201
    record(f"bad_input_{expected.replace(' ', '_')}", {"seconds_to_refuse": seconds})


def test_drill3_point_in_time_recovery_after_a_mistaken_drop(merchant):
    """Note T; take payments; DROP DATABASE as the superuser; restore to T."""
    session = merchant.session()
    target = psql(
        leader(), "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    )
    time.sleep(1)
    after_target = [merchant.pay(session) for _ in range(5)]
    assert [c.status for c in after_target] == [201] * 5
    psql(leader(), "DROP DATABASE paycore WITH (FORCE)", db="postgres")
    assert merchant.pay(session).status in (500, 502, 503, 504)

    code, output, seconds = playbook(
        "postgresql-restore.yml",
        "-e",
        "postgresql_restore_confirm=yes",
        "-e",
        f"postgresql_restore_target_time='{target}'",
    )
    assert code == 0, output[-5000:]
    assert set(stored(STATE["payments"].values())) == set(STATE["payments"].values())
    assert stored(c.payment for c in after_target) == {}
    assert_reconciles()
    wait_until(
        lambda: sorted(m["role"] for m in member_names().values()) == ["leader", "sync_standby"],
        300,
        2,
        "both members back after the restore",
    )
    record(
        "drill3_pitr",
        {
            "target": target,
            "restore_playbook_seconds": seconds,
            "payments_before_target_present": len(STATE["payments"]),
            "payments_after_target_absent": len(after_target),
        },
    )


def test_drill4_every_database_host_lost_and_rebuilt_from_object_storage(merchant):
    """Both database hosts (and the ledger on them) destroyed; fresh hosts of the
    same names rebuilt from the object store alone. Measures the data lost."""
    session = merchant.session()
    # Acknowledged payments just before the loss (the drill also rebuilds a
    # cluster that an earlier failure left down: then there are none).
    calls = [c for c in (merchant.pay(session) for _ in range(10)) if c.status == 201]
    lost_at = time.monotonic()
    for name in DATABASE_HOSTS:
        run("docker", "rm", "-f", name)
    for name in DATABASE_HOSTS:
        recreate(name)

    steps = {}
    for name, args in [
        ("network.yml", ["--limit", ",".join([GATEWAY, *DATABASE_HOSTS])]),
        ("postgresql-restore.yml", ["-e", "postgresql_restore_confirm=yes"]),
        ("database.yml", []),
        ("ledger.yml", []),
    ]:
        code, output, seconds = playbook(name, *args)
        assert code == 0, f"{name}:\n{output[-5000:]}"
        steps[name] = seconds
    writes_again = merchant.pay(session)
    assert writes_again.status == 201
    rebuilt = time.monotonic() - lost_at

    present = [
        c for c in calls if merchant.get(session, f"/v1/payments/{c.payment}").status_code == 200
    ]
    lost = [c for c in calls if c not in present]
    window = round(lost_at - min(c.ended for c in lost), 1) if lost else 0.0
    record(
        "drill4_rebuild",
        {
            "seconds_from_loss_to_first_write": round(rebuilt, 1),
            "playbook_seconds": steps,
            "acknowledged_in_the_last_seconds_before_the_loss": len(calls),
            "lost": len(lost),
            "data_lost_seconds": window,
            "archive_timeout_seconds": 60,
        },
    )
    # The WAL archive's bound: only what was acknowledged within the last
    # archive_timeout (plus pgBackRest's push) can be missing.
    assert window <= 60 + 30, window
    # Everything else of the ledger came back: drill 1's payments.
    earlier = STATE.get("payments", {})
    assert set(stored(earlier.values())) == set(earlier.values())
    # The lost ones are taken again by their keys, once each.
    for call in lost:
        merchant.settle(session, call)
    assert_reconciles()
    wait_until(
        lambda: sorted(m["role"] for m in member_names().values()) == ["leader", "sync_standby"],
        300,
        2,
        "two members after the rebuild",
    )


def test_the_restore_check_restores_from_the_object_store():
    """The daily restore check, started by hand on the leader: it restores the
    object store into a scratch copy and reconciles it."""
    started = time.monotonic()
    dexec(leader(), "systemctl start paycore-postgresql-backup.service", timeout=600)
    dexec(leader(), "systemctl start paycore-postgresql-restore-check.service", timeout=900)
    metrics = dexec(
        leader(), "cat /var/lib/prometheus/node-exporter/paycore_backup_restore_check.prom"
    ).stdout
    assert "paycore_backup_restore_check_last_success_timestamp_seconds" in metrics
    journal = dexec(
        leader(), "journalctl -u paycore-postgresql-restore-check --no-pager -o cat | tail -n 20"
    ).stdout
    assert '"ok": true' in journal, journal
    record(
        "restore_check", {"backup_and_restore_check_seconds": round(time.monotonic() - started, 1)}
    )


def test_no_secret_in_any_ansible_output():
    log = (EPHEMERAL / "ansible.log").read_text(errors="replace")
    secrets = [
        SETTINGS[name]
        for name in (
            "postgresql_migrator_password",
            "postgresql_app_password",
            "postgresql_superuser_password",
            "postgresql_replication_password",
            "postgresql_patroni_rest_password",
            "postgresql_pgbackrest_cipher_pass",
            "postgresql_pgbackrest_s3_key_secret",
        )
    ]
    assert log, "no Ansible log"
    for value in secrets:
        assert value not in log


def test_figures(capsys):
    """All the drill figures in one place: printed into the scenario's log and
    kept beside it (.cache/database_ha-drills.json) after destroy."""
    figures = json.loads((EPHEMERAL / "drills.json").read_text())
    text = json.dumps(figures, indent=2, sort_keys=True)
    (PROJECT / ".cache").mkdir(exist_ok=True)
    (PROJECT / ".cache" / "database_ha-drills.json").write_text(text + "\n")
    with capsys.disabled():
        print(f"\ndrill figures:\n{text}")
    assert {"drill1_failover", "drill2_rejoin", "drill3_pitr", "drill4_rebuild"} <= set(figures)
