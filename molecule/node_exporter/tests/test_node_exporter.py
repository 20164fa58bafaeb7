"""Verifies the node_exporter role on a converged lab host (cadvisor: test_cadvisor.py)."""

import re
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from exporter_checks import FETCH, alerted_node_collectors, families, rule_metric_names, scrape
from test_dashboards import dashboard_metric_names

WG = "10.44.0.5"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def metrics(host, address="127.0.0.1", port=9100):
    return scrape(host, port, address)


def test_node_exporter_running(host):
    service = host.service("prometheus-node-exporter")
    assert service.is_running
    assert service.is_enabled


def test_listens_on_localhost_and_wireguard_only(host):
    listening = host.check_output("ss -Hltn 'sport = :9100' | awk '{print $4}'").split()
    assert sorted(listening) == sorted(["127.0.0.1:9100", f"{WG}:9100"])


def test_not_reachable_on_the_docker_network_address(host):
    eth = host.interface("eth0").addresses[0]
    assert host.run(f"{FETCH} http://{eth}:9100/metrics").rc != 0


def test_serves_on_both_addresses(host):
    assert "node_cpu_seconds_total" in metrics(host)
    assert "node_cpu_seconds_total" in metrics(host, WG)


def test_unit_is_hardened(host):
    props = host.check_output(
        "systemctl show prometheus-node-exporter"
        " -p NoNewPrivileges -p ProtectSystem -p PrivateTmp -p User"
    )
    assert "NoNewPrivileges=yes" in props
    assert "ProtectSystem=strict" in props
    assert "PrivateTmp=yes" in props
    assert "User=prometheus" in props


def test_serves_the_families_rules_and_dashboards_use(host):
    served = families(metrics(host))
    needed = {
        "node_cpu_seconds_total",
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_memory_MemAvailable_bytes",
        "node_textfile_scrape_error",
        "node_load5",
        "node_network_receive_bytes_total",
    }
    needed |= {name for name in dashboard_metric_names() if name.startswith("node_")}
    needed |= rule_metric_names("node_")
    assert needed - served == set()


# What this lab container lacks (no DMI table, sensors, md RAID, NVMe, RAPL,
# schedstat): node-exporter reports these collectors as failed for lack of data.
NO_DATA_IN_THE_LAB = {"dmi", "hwmon", "mdadm", "nvme", "rapl", "schedstat"}


def test_the_collectors_paycore_reads_succeed(host):
    """NodeCollectorFailed stays quiet on a healthy host: every collector it
    watches succeeds here, systemd (D-Bus through the hardened unit) included;
    the others report 0 only for lack of data in a container."""
    text = metrics(host)
    results = dict(
        re.findall(r'^node_scrape_collector_success\{collector="([^"]+)"\} (\S+)$', text, re.M)
    )
    failing = {name for name, value in results.items() if value != "1"}
    assert alerted_node_collectors() <= set(results)
    assert failing & alerted_node_collectors() == set()
    assert failing <= NO_DATA_IN_THE_LAB
    assert results.get("timex") == "1", "timex reads the clock state (HostClockNotSynchronised)"


def test_timex_reads_the_clock_under_the_hardened_unit(host):
    """ProtectClock=yes (the shared sandbox) denies adjtimex(2); node-exporter's
    unit allows the read-only call, while it keeps no capability (so it still
    cannot set the clock)."""
    props = host.check_output(
        "systemctl show prometheus-node-exporter -p ProtectClock -p CapabilityBoundingSet"
    )
    assert "ProtectClock=no" in props
    assert "CapabilityBoundingSet=\n" in props + "\n"
    text = metrics(host)
    assert re.search(r"^node_timex_sync_status [01]$", text, re.M)
    assert re.search(r"^node_timex_maxerror_seconds \S+$", text, re.M)


def test_systemd_restart_counts_for_services_only(host):
    text = metrics(host)
    restarts = re.findall(r'^node_systemd_service_restart_total\{name="([^"]+)"\} \S+$', text, re.M)
    assert "prometheus-node-exporter.service" in restarts
    units = set(re.findall(r'^node_systemd_unit_state\{name="([^"]+)"', text, re.M))
    assert units and all(unit.endswith(".service") for unit in units), sorted(units)[:5]


def test_textfile_directory_permissions(host):
    directory = host.file(TEXTFILE_DIR)
    assert directory.is_directory
    assert directory.user == "root"
    assert directory.group == "paycore-metrics"
    assert directory.mode == 0o3775


def test_writers_joined_the_group_and_missing_ones_are_skipped(host):
    assert "paycore-metrics" in host.user("paycore-backup").groups
    assert not host.user("no-such-user").exists


def test_a_writer_publishes_a_metric(host):
    # The backup job's user writes atomically (temp file + rename), as the convention says.
    script = textwrap.dedent(
        f"""
        set -e
        tmp=$(mktemp -p {TEXTFILE_DIR} .backup.XXXXXX)
        printf '%s\\n' '# TYPE paycore_backup_last_success_timestamp_seconds gauge' \\
            'paycore_backup_last_success_timestamp_seconds 1700000000' > "$tmp"
        chmod 0644 "$tmp"
        mv "$tmp" {TEXTFILE_DIR}/molecule-backup.prom
        """
    )
    with host.sudo("paycore-backup"):
        host.check_output(f"bash -c {quote(script)}")
    try:
        text = metrics(host)
        assert "paycore_backup_last_success_timestamp_seconds 1.7e+09" in text
        assert re.search(r"^node_textfile_scrape_error 0$", text, re.M)
    finally:
        host.run(f"rm -f {TEXTFILE_DIR}/molecule-backup.prom")


def test_a_broken_textfile_is_reported(host):
    host.check_output(f"printf 'not a metric line\\n' > {TEXTFILE_DIR}/molecule-broken.prom")
    try:
        assert re.search(r"^node_textfile_scrape_error 1$", metrics(host), re.M)
    finally:
        host.run(f"rm -f {TEXTFILE_DIR}/molecule-broken.prom")


def quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"
