"""Verifies the grafana role on a converged lab host.

Grafana's APT repository is unreachable here. The scenario serves a signed
repository of its own (prepare.yml) holding a package named grafana with
Grafana's package layout, whose binary is a stand-in (files/grafana-stand-in):
the role installs it exactly as it would install Grafana. The tests below
check the install path (key, source, pinned package, unit), the role's order
of operations through the stand-in's log of calls (restart, password check
and reset, then provisioning reloads), and the refusals (another key, a
second key in the key file, a tampered .deb). Tests that need Grafana itself
(its real API answering for dashboards) skip with that reason while the
stand-in is what is installed.
"""

import configparser
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from playbook import run_playbook

DASHBOARDS = Path(__file__).resolve().parents[3] / "roles" / "grafana" / "files" / "dashboards"
SCENARIO = Path(__file__).resolve().parents[1]
PASSWORD = "molecule-only-grafana-password"
ROTATED = "molecule-only-rotated-password"  # side_effect.yml
EVENTS = "/var/lib/grafana/stand-in/events.jsonl"
SIDE_EFFECT = {"event": "side effect"}
MIRROR = "http://127.0.0.1:8098/grafana"
KEYRING = "/etc/apt/keyrings/grafana.asc"
SOURCE = "/etc/apt/sources.list.d/grafana.sources"


def ini(host):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(host.file("/etc/grafana/grafana.ini").content_string)
    return parser


def stand_in(host):
    """True when the installed grafana binary is the scenario's stand-in."""
    return "Molecule stand-in" in host.run("/usr/share/grafana/bin/grafana --version").stdout


def needs_real_grafana(host):
    if stand_in(host):
        pytest.skip(
            "Grafana's APT repository is unreachable here: the installed package's binary is"
            " the Molecule stand-in (molecule/grafana/files/grafana-stand-in), which answers"
            " only the calls the role makes, not Grafana's dashboard API"
        )


def stand_in_events(host):
    """The stand-in's log of calls, split at the side effect's mark."""
    lines = host.file(EVENTS).content_string.splitlines()
    events = [json.loads(line) for line in lines]
    if SIDE_EFFECT not in events:
        return events, None
    at = events.index(SIDE_EFFECT)
    return events[:at], events[at + 1 :]


def password(host):
    """The admin password the last run applied: rotated by side_effect.yml."""
    return ROTATED if stand_in_events(host)[1] is not None else PASSWORD


def test_grafana_user_and_group(host):
    user = host.user("grafana")
    assert user.exists
    assert user.group == "grafana"
    assert user.shell == "/bin/false"


def test_ini_secure_settings(host):
    f = host.file("/etc/grafana/grafana.ini")
    assert (f.user, f.group, f.mode) == ("root", "grafana", 0o640)
    conf = ini(host)
    assert conf["server"]["http_addr"] == "10.44.0.5"
    assert conf["server"]["http_port"] == "3000"
    assert conf["auth.anonymous"]["enabled"] == "false"
    assert conf["users"]["allow_sign_up"] == "false"
    assert conf["analytics"]["reporting_enabled"] == "false"
    assert conf["snapshots"]["external_enabled"] == "false"
    assert conf["security"]["admin_user"] == "admin"
    assert conf["security"]["admin_password"] == "$__file{/etc/grafana/admin_password}"
    assert PASSWORD not in f.content_string
    assert ROTATED not in f.content_string


def test_admin_password_file(host):
    f = host.file("/etc/grafana/admin_password")
    assert (f.user, f.group, f.mode) == ("root", "grafana", 0o640)
    assert f.content_string == password(host)


def test_first_run_restarts_checks_the_password_then_reloads(host):
    converge, _ = stand_in_events(host)
    calls = [(e["event"], e.get("status")) for e in converge if e["event"] != "start"]
    # converge: the password logs in (it created the "database"), both
    # provisioning files are new; idempotence and check: only the login check.
    assert calls[:3] == [("login", 200), ("reload datasources", 200), ("reload dashboards", 200)]
    assert set(calls[3:]) == {("login", 200)}
    assert converge[0]["event"] == "start"
    # Started, then restarted, as systemd counts it: a stand-in killed by the
    # restart before it has logged its own start (a slow start under load)
    # leaves one "start" event where there were two starts.
    journal = host.check_output("journalctl -u grafana-server --no-pager -o cat")
    assert len(re.findall(r"^Started ", journal, re.M)) == 2, journal


def test_password_rotation_and_dashboard_change_in_one_run(host):
    _, side_effect = stand_in_events(host)
    if side_effect is None:
        pytest.skip("side_effect.yml has not run (molecule verify on its own)")
    calls = [(e["event"], e.get("status")) for e in side_effect]
    # The reload logs in with the new password only because it is applied first.
    assert calls == [
        ("login", 401),
        ("reset-admin-password", None),
        ("reload dashboards", 200),
    ]
    assert host.file("/var/lib/grafana/stand-in/admin_password").content_string == ROTATED


def test_datasource_provisioned_with_fixed_uid(host):
    f = host.file("/etc/grafana/provisioning/datasources/paycore.yaml")
    assert (f.user, f.group, f.mode) == ("root", "grafana", 0o640)
    datasources = yaml.safe_load(f.content_string)["datasources"]
    assert len(datasources) == 1
    ds = datasources[0]
    assert ds["uid"] == "prometheus"
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://10.44.0.5:9090"
    assert ds["isDefault"] is True
    assert ds["editable"] is False


def test_dashboard_provider(host):
    provider_file = host.file("/etc/grafana/provisioning/dashboards/paycore.yaml")
    conf = yaml.safe_load(provider_file.content_string)
    provider = conf["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards/paycore"
    assert provider["allowUiUpdates"] is False


@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda p: p.name)
def test_dashboard_installed_verbatim(host, path):
    f = host.file(f"/etc/grafana/dashboards/paycore/{path.name}")
    assert (f.user, f.group, f.mode) == ("root", "grafana", 0o640)
    assert json.loads(f.content_string) == json.loads(path.read_text())


def test_dashboards_readable_by_grafana_only(host):
    directory = host.file("/etc/grafana/dashboards/paycore")
    assert (directory.user, directory.group, directory.mode) == ("root", "grafana", 0o750)
    assert host.run("runuser -u nobody -- ls /etc/grafana/dashboards/paycore").rc != 0


def test_server_running_and_listening(host):
    """The package's unit runs the installed binary (here the stand-in) as grafana."""
    assert host.service("grafana-server").is_running
    assert host.service("grafana-server").is_enabled
    listening = host.check_output("ss -Hltn 'sport = :3000' | awk '{print $4}'").split()
    assert listening == ["10.44.0.5:3000"]
    pid = host.check_output("systemctl show grafana-server -p MainPID --value")
    assert host.check_output(f"ps -o user= -p {pid}") == "grafana"


STATUS = (
    "python3 -c 'import base64, sys, urllib.request, urllib.error\n"
    "req = urllib.request.Request(sys.argv[1])\n"
    "if len(sys.argv) > 2:\n"
    "    token = base64.b64encode(sys.argv[2].encode()).decode()\n"
    '    req.add_header("Authorization", "Basic " + token)\n'
    "try: print(urllib.request.urlopen(req, timeout=10).status)\n"
    "except urllib.error.HTTPError as e: print(e.code)'"
)
API = "http://10.44.0.5:3000/api"


def test_anonymous_is_refused_and_admin_logs_in(host):
    needs_real_grafana(host)
    assert host.check_output(f"{STATUS} {API}/dashboards/uid/paycore-overview") == "401"
    assert host.check_output(f"{STATUS} {API}/user admin:{password(host)}") == "200"


def test_dashboards_loaded_with_the_datasource(host):
    needs_real_grafana(host)
    secret = password(host)
    for uid in ("paycore-overview", "paycore-host", "paycore-postgresql"):
        assert host.check_output(f"{STATUS} {API}/dashboards/uid/{uid} admin:{secret}") == "200"
    assert host.check_output(f"{STATUS} {API}/datasources/uid/prometheus admin:{secret}") == "200"


# ---------------------------------------------------------------- install path


def fingerprint():
    path = (
        Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
        / "grafana-test-key.fpr"
    )
    if not path.exists():
        pytest.skip("needs the scenario's key fingerprint (run through `molecule verify`)")
    return path.read_text().strip()


def test_signing_key_is_the_repository_key(host):
    key = host.file(KEYRING)
    assert (key.user, key.group, key.mode) == ("root", "root", 0o644)
    assert key.content_string == host.file("/srv/molecule-mirror/grafana/gpg.key").content_string
    shown = host.check_output(f"gpg --show-keys --with-colons {KEYRING}")
    primaries = re.findall(r"^pub:.*\nfpr:(?:[^:]*:){8}([0-9A-F]+):", shown, re.M)
    assert primaries == [fingerprint()]


def test_deb822_source_signed_by_that_key_only(host):
    source = host.file(SOURCE)
    assert source.exists, "deb822_repository needs python3-debian, which the role installs"
    fields = dict(
        line.split(": ", 1) for line in source.content_string.splitlines() if ": " in line
    )
    assert fields["URIs"] == MIRROR
    assert (fields["Suites"], fields["Components"], fields["Types"]) == ("stable", "main", "deb")
    assert fields["Signed-By"] == KEYRING
    assert host.package("python3-debian").is_installed


def test_pinned_version_installed_from_the_signed_repository(host):
    """12.1.0 (the pin), although the repository also offers 12.2.0; apt took it
    from the mirror after checking InRelease's signature with the key."""
    assert host.package("grafana").version == "12.1.0"
    policy = host.check_output("apt-cache policy grafana")
    assert "12.2.0" in policy and MIRROR in policy
    lists = host.check_output("ls /var/lib/apt/lists")
    assert "127.0.0.1:8098_grafana_dists_stable_InRelease" in lists


def test_package_unit_and_user(host):
    assert host.file("/lib/systemd/system/grafana-server.service").exists
    assert host.check_output("systemctl show grafana-server -p User --value") == "grafana"
    assert host.user("grafana").group == "grafana"


def apply_role(*extra_vars):
    """Runs the role on the scenario's host with extra variables; (rc, output)."""
    return run_playbook(SCENARIO / "converge.yml", *extra_vars)


def unchanged(host, before):
    after = {path: host.file(path).content_string for path in before}
    return after == before


@pytest.mark.parametrize(
    ("key_file", "why"),
    [("other.key", "another key"), ("two-keys.key", "the right key plus another one")],
)
def test_a_key_that_is_not_the_expected_one_alone_is_refused(host, key_file, why):
    before = {path: host.file(path).content_string for path in (KEYRING, SOURCE)}
    rc, output = apply_role(
        {"grafana_admin_password": ROTATED, "grafana_apt_key_url": f"{MIRROR}/{key_file}"}
    )
    assert rc != 0, f"{why} was accepted"
    assert "does not hold the key" in output, output[-3000:]
    assert unchanged(host, before), f"{why}: the keyring or the source changed"


def test_a_tampered_package_is_refused(host):
    """Install method deb: the download's sha256 must be the pinned one."""
    arch = host.check_output("dpkg --print-architecture")
    deb = f"grafana_12.1.0_{arch}.deb"
    genuine = host.check_output(
        f"sha256sum /srv/molecule-mirror/grafana/pool/main/g/grafana/{deb}"
    ).split()[0]
    version_before = host.package("grafana").version
    # Not the copy apt may have kept from the repository install: the role
    # must download (and check) the file.
    host.check_output(f"rm -f /var/cache/apt/archives/{deb}")
    rc, output = apply_role(
        {
            "grafana_admin_password": ROTATED,
            "grafana_install_method": "deb",
            "grafana_deb_url": f"{MIRROR}/tampered/{deb}",
            "grafana_deb_checksum": f"sha256:{genuine}",
        }
    )
    assert rc != 0, output[-3000:]
    assert "checksum mismatch" in output or "did not match" in output, output[-3000:]
    assert not host.file(f"/var/cache/apt/archives/{deb}").exists
    assert host.package("grafana").version == version_before
