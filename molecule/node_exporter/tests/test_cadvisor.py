"""Verifies the cadvisor role on the node_exporter scenario's host.

The role runs there beside node_exporter (it needs nothing from it) and
installs cAdvisor's release from a mirror the scenario serves (prepare.yml):
download, sha256 check, user, unit, start and the health check all run for
real. Only the binary is a stand-in (files/cadvisor-stand-in): cAdvisor's
GitHub releases are unreachable here. The tests that run it say so.
"""

import hashlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from exporter_checks import FETCH
from playbook import run_playbook

SCENARIO = Path(__file__).resolve().parents[1]
STAND_IN = SCENARIO / "files" / "cadvisor-stand-in"
WG = "10.44.0.5"
CADVISOR_UNIT = "/etc/systemd/system/cadvisor.service"
BINARY = "/usr/local/bin/cadvisor"


def stand_in_sha256(extra=b""):
    return hashlib.sha256(STAND_IN.read_bytes() + extra).hexdigest()


def apply_role(*extra_vars):
    """Runs cadvisor.yml (the role as converge applies it) with extra variables."""
    return run_playbook(SCENARIO / "cadvisor.yml", *extra_vars)


def installed_sha256(host):
    return host.check_output(f"sha256sum {BINARY}").split()[0]


def test_cadvisor_user(host):
    user = host.user("cadvisor")
    assert user.exists
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000


def test_cadvisor_unit_content(host):
    unit = host.file(CADVISOR_UNIT)
    assert unit.mode == 0o644
    text = unit.content_string
    assert "User=cadvisor" in text
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1).split()
    assert exec_start[0] == BINARY
    assert f"--listen_ip={WG}" in exec_start
    assert "--port=8081" in exec_start
    for setting in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
    ):
        assert re.search(rf"^{re.escape(setting)}$", text, re.M), setting


def test_cadvisor_unit_verifies(host):
    result = host.run(f"systemd-analyze verify {CADVISOR_UNIT}")
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert problems == []


def test_release_downloaded_from_the_mirror_and_checked(host):
    """The binary is the mirror's release file, byte for byte (the role's
    get_url checked its sha256 against cadvisor_checksums)."""
    binary = host.file(BINARY)
    assert (binary.user, binary.group, binary.mode) == ("root", "root", 0o755)
    assert installed_sha256(host) == stand_in_sha256()


def test_cadvisor_running_and_serving(host):
    """The unit runs the installed binary, here the stand-in (files/cadvisor-stand-in):
    it proves the unit, user, sandbox and address, not cAdvisor's metrics."""
    assert host.service("cadvisor").is_running
    assert host.service("cadvisor").is_enabled
    listening = host.check_output("ss -Hltn 'sport = :8081' | awk '{print $4}'").split()
    assert listening == [f"{WG}:8081"]
    assert host.check_output(f"{FETCH} http://{WG}:8081/healthz") == "ok"
    text = host.check_output(f"{FETCH} http://{WG}:8081/metrics")
    # Memory is accounted per service under cgroup v1 and v2 alike (CPU only where
    # the cpu controller is delegated per service).
    assert re.search(
        r'^container_memory_working_set_bytes\{id="[^"]*/system.slice/cadvisor.service"', text, re.M
    )
    pid = host.check_output("systemctl show cadvisor -p MainPID --value")
    assert host.check_output(f"ps -o user= -p {pid}") == "cadvisor"


def test_a_tampered_release_is_refused(host):
    """An upgrade to 0.57.1 whose file on the mirror was altered: the download's
    sha256 is not the pinned one, the play fails and nothing changes."""
    unit_before = host.file(CADVISOR_UNIT).content_string
    genuine = stand_in_sha256(b"# genuine 0.57.1\n")  # what the release page would pin
    rc, output = apply_role(
        {
            "cadvisor_version": "0.57.1",
            "cadvisor_checksums": {"amd64": f"sha256:{genuine}", "arm64": f"sha256:{genuine}"},
        }
    )
    assert rc != 0, output
    assert "checksum mismatch" in output or "did not match" in output, output[-3000:]
    assert installed_sha256(host) == stand_in_sha256(), "the tampered file was installed"
    assert host.file(CADVISOR_UNIT).content_string == unit_before
    assert host.service("cadvisor").is_running


def test_a_flag_cadvisor_rejects_fails_the_play(host):
    """cAdvisor exits at start on a metric kind it does not know; systemd then
    restarts it in a loop. The role must fail, naming the reason, instead of
    reporting success (the stand-in parses the flags as cAdvisor does)."""
    try:
        rc, output = apply_role({"cadvisor_disable_metrics": ["accelerator", "tcp"]})
        assert rc != 0, output
        assert 'unsupported metric \\"accelerator\\" specified' in output or (
            'unsupported metric "accelerator" specified' in output
        ), output[-3000:]
        assert "does not answer" in output
    finally:
        rc, output = apply_role()
        assert rc == 0, output[-3000:]
    assert host.service("cadvisor").is_running
