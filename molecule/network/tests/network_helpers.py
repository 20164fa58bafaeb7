"""Hosts, addresses and helpers the network scenario's test files share."""

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import testinfra

GATEWAY_IP = "172.30.45.10"
PEER_IP = "172.30.45.20"
PEER2_IP = "172.30.45.21"
OUTSIDER_IP = "172.30.45.30"
GATEWAY_WG = "10.44.0.1"
PEER_WG = "10.44.0.2"
PEER2_WG = "10.44.0.3"
EDGE = f"https://{GATEWAY_IP}"
ERROR_LOG = "/var/log/nginx/paycore-edge.error.log"
METRICS = "/var/lib/prometheus/node-exporter/paycore_wireguard.prom"

gateway = testinfra.get_host("docker://paycore-network-gateway")
# The blank replacement the replacement drill configures (tests/test_outages.py).
gateway2 = testinfra.get_host("docker://paycore-network-gateway2")
peer = testinfra.get_host("docker://paycore-network-peer")
peer2 = testinfra.get_host("docker://paycore-network-peer2")
outsider = testinfra.get_host("docker://paycore-network-outsider")

# The full-range TCP scanner the outsider runs (see its docstring).
PORT_SCAN = (Path(__file__).parents[2] / "shared/tcp_syn_scan.py").read_text()
# The site contract converge.yml loads: ports, upstreams and firewall services.
CONTRACT = Path(__file__).parents[3] / "roles" / "contract" / "vars" / "main.yml"


def wait_for(check, timeout=90, interval=2):
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def latest_handshakes(host):
    """Unix time of the latest handshake (0 = never), per peer public key."""
    out = host.check_output("wg show wg0 latest-handshakes")
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.strip()}


def curl(*args):
    """HTTPS request from the outsider; returns (status, headers, body)."""
    cmd = "curl -sk --max-time 20 -o /tmp/body -D /tmp/headers -w '%{http_code}' " + " ".join(args)
    status = int(outsider.check_output(cmd))
    headers = {}
    for line in outsider.check_output("cat /tmp/headers").splitlines()[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return status, headers, outsider.check_output("cat /tmp/body")


def served_by(path):
    """GET through the edge: the tunnel address of the backend that answered
    (None if the edge answered something else than 200)."""
    status, _, body = curl(f"{EDGE}{path}")
    return json.loads(body)["server"] if status == 200 else None


def both_backends_serve():
    """Both backends are in rotation (round robin alternates between them)."""
    return {served_by(f"/v1/rotation/{i}") for i in range(4)} == {PEER_WG, PEER2_WG}


def settle_rate_limit():
    """Lets the outsider's rate-limit bucket (5 r/s, burst 10) drain."""
    time.sleep(2.5)


def ping(host, address):
    return host.run(f"ping -c 1 -W 2 {address}").rc == 0


def connects(host, address, port):
    """A TCP connection from `host` to address:port succeeds within 5 s."""
    return host.run(f"timeout 5 bash -c '</dev/tcp/{address}/{port}'").rc == 0


def docker(*args):
    subprocess.run(["docker", *args], check=True, capture_output=True, text=True)


def apply_role(role, hosts, extra_vars=None, environment=None):
    """Runs one role on some hosts of the scenario (its inventory and the site
    contract, as converge does); returns (return code, output)."""
    play = {
        "name": f"Apply {role}",
        "hosts": hosts,
        "gather_facts": False,
        "vars_files": [str(CONTRACT)],
        "roles": [role],
    }
    if environment:
        play["environment"] = environment
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "play.yml").write_text(json.dumps([play]))  # JSON is YAML
        Path(tmp, "vars.json").write_text(json.dumps(extra_vars or {}))
        result = subprocess.run(
            [
                "ansible-playbook",
                "-i",
                os.environ["MOLECULE_INVENTORY_FILE"],
                f"{tmp}/play.yml",
                "-e",
                f"@{tmp}/vars.json",
            ],
            capture_output=True,
            text=True,
            env=os.environ,
            check=False,
        )
    return result.returncode, result.stdout + result.stderr


def task_output(output, name):
    """The output of the task or handler whose title contains name."""
    sections = re.split(r"\n(?=(?:TASK|RUNNING HANDLER) \[)", output)
    return "\n".join(s for s in sections if re.match(rf"(TASK|RUNNING HANDLER) \[[^\]]*{name}", s))


def recap(output, host):
    return re.search(rf"^{host}\s+: (.*)$", output, re.MULTILINE).group(1)


# Drill figures (seconds), printed at the end of the run by conftest.py.
FIGURES: dict[str, float] = {}


def http_get(host, url):
    """GET on a host that has no curl (python3 only): the body, or None."""
    script = (
        "import sys, urllib.request; "
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    run = host.run(f"python3 -c '{script}' {url}")
    return run.stdout if run.rc == 0 else None
