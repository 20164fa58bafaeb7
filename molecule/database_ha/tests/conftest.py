"""Helpers of the database_ha drills: the scenario's containers (by `docker exec`,
so that a killed or rebuilt host is just a name), its playbooks, and a merchant
calling the API through the gateway's TLS edge from this machine."""

import contextlib
import json
import os
import shlex
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml
from requests.adapters import HTTPAdapter

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parent.parent))
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", SCENARIO.parent.parent))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp"))
MOLECULE = yaml.safe_load((SCENARIO / "molecule.yml").read_text())
SETTINGS = MOLECULE["provisioner"]["inventory"]["group_vars"]["all"]
PLATFORMS = {p["name"]: p for p in MOLECULE["platforms"]}
GATEWAY = "paycore-database_ha-gateway"
DATABASE_HOSTS = ["paycore-database_ha-db1", "paycore-database_ha-db2"]
PATRONI = "patronictl -c /etc/patroni/config.yml"
LEDGER_ADMIN_URL_FILE = "/etc/paycore/ledger-admin.url"
LEDGER_BIN = "/opt/paycore/ledger/bin/paycore-ledger"
FIGURES = EPHEMERAL / "drills.json"


def run(*command, timeout=120, check=True):
    done = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def dexec(container, script, timeout=120, check=True):
    return run("docker", "exec", container, "bash", "-c", script, timeout=timeout, check=check)


def running(container):
    done = run("docker", "inspect", "-f", "{{.State.Running}}", container, check=False)
    return done.returncode == 0 and done.stdout.strip() == "true"


def wait_until(condition, seconds, interval=1.0, message="condition"):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {message}")
        time.sleep(interval)


def cluster():
    """Patroni's view of the cluster (REST /cluster) from any running member."""
    for name in DATABASE_HOSTS:
        if not running(name):
            continue
        done = dexec(name, "curl -fsS --max-time 3 http://127.0.0.1:8008/cluster", check=False)
        if done.returncode == 0:
            return json.loads(done.stdout)
    return {"members": []}


def leader():
    leaders = [m for m in cluster()["members"] if m["role"] == "leader" and m["state"] == "running"]
    return leaders[0]["name"] if leaders else None  # Patroni's member names are the hosts' names


def member_names():
    return {m["name"]: m for m in cluster()["members"]}


def psql(container, sql, db="paycore", check=True):
    done = dexec(
        container,
        f"runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -d {db} -c {shlex.quote(sql)}",
        check=check,
    )
    return done.stdout.strip() if check else done


def reconcile(container):
    return dexec(
        container,
        f"PAYCORE_ADMIN_DATABASE_URL_FILE={LEDGER_ADMIN_URL_FILE} {LEDGER_BIN} reconcile",
        check=False,
    )


def inventory():
    """Molecule's inventory directory (its group_vars hold the scenario's settings)."""
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path:
        pytest.skip("needs Molecule's inventory (run through `molecule verify`)")
    return str(Path(path).parent)


def playbook(name, *args, timeout=2400):
    """ansible-playbook of playbooks/ on the scenario's hosts: (returncode, output, seconds)."""
    started = time.monotonic()
    done = subprocess.run(
        ["ansible-playbook", "-i", inventory(), str(PROJECT / "playbooks" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, round(time.monotonic() - started, 1)


def record(name, value):
    """Keep a drill's figure (drills.json in the ephemeral directory) and print it."""
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True))
    print(f"DRILL {name}: {json.dumps(value)}")


def recreate(container):
    """A fresh host of the same name and address (the lab image, nothing installed)."""
    platform = PLATFORMS[container]
    run("docker", "rm", "-f", container, check=False)
    network = platform["networks"][0]
    command = ["docker", "run", "-d", "--name", container, "--hostname", container]
    command += ["--network", network["name"], "--ip", network["ipv4_address"]]
    command += [f"--cap-add={cap}" for cap in platform["capabilities"]]
    command += [f"--security-opt={opt}" for opt in platform["security_opts"]]
    command += ["--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
    for path in platform["tmpfs"]:
        command += ["--tmpfs", path]
    command += ["--device", "/dev/net/tun", "--add-host", "apt-cache:host-gateway"]
    command += ["--stop-signal", "SIGRTMIN+3", platform["image"], "/sbin/init"]
    run(*command)
    wait_until(
        lambda: (
            dexec(container, "systemctl is-system-running", check=False).stdout.strip()
            in ("running", "degraded")
        ),
        120,
        message=f"systemd in the new {container}",
    )


class _EdgeAdapter(HTTPAdapter):
    """TLS to the gateway's address, checked against the edge's name and certificate."""

    def __init__(self, server_name, **kwargs):
        self.server_name = server_name
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self.server_name
        kwargs["assert_hostname"] = self.server_name
        super().init_poolmanager(*args, **kwargs)


@dataclass
class Call:
    key: str
    amount: int
    started: float
    ended: float = 0.0
    status: int = 0  # 0: no answer (timeout, reset)
    payment: str | None = None


@dataclass
class Merchant:
    base: str
    server_name: str
    ca_file: str
    api_key: str
    calls: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Amounts are unique per run (the drills find payments by amount), below
    # the review threshold (10 000 000 minor units).
    _amount: int = field(default_factory=lambda: 1_000_000 + (int(time.time()) % 8000) * 1000)

    def session(self):
        session = requests.Session()
        # Only the edge's certificate, and no proxy: a CA bundle or proxy from
        # the environment would otherwise take precedence.
        session.trust_env = False
        session.mount("https://", _EdgeAdapter(self.server_name))
        session.verify = self.ca_file
        session.headers.update(
            {"Authorization": f"Bearer {self.api_key}", "Host": self.server_name}
        )
        return session

    def next_amount(self):
        with self._lock:
            self._amount += 1
            return self._amount

    def pay(self, session, key=None, amount=None, timeout=15):
        """One keyed payment; every call is kept (the drills replay the unanswered)."""
        call = Call(key or f"ha-{uuid.uuid4()}", amount or self.next_amount(), time.monotonic())
        try:
            response = session.post(
                f"{self.base}/v1/payments",
                json={"amount": call.amount, "currency": "GBP"},
                headers={"Idempotency-Key": call.key},
                timeout=timeout,
            )
            call.status = response.status_code
            if response.status_code == 201:
                call.payment = response.json()["id"]
        except requests.RequestException:
            call.status = 0
        call.ended = time.monotonic()
        with self._lock:
            self.calls.append(call)
        return call

    def get(self, session, path):
        return session.get(f"{self.base}{path}", timeout=15)

    def settle(self, session, call, seconds=120):
        """Replay a call with its key until it is answered 201; returns the payment id."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            again = self.pay(session, key=call.key, amount=call.amount)
            if again.status == 201:
                return again.payment
            time.sleep(1)
        pytest.fail(f"{call.key} was never answered 201 within {seconds} s")


class Traffic:
    """Continuous keyed payments from `workers` threads, each paced below the
    merchant's rate limit (100 r/s by default) and the edge's per-address guard."""

    def __init__(self, merchant, workers=2, interval=0.25):
        self.merchant = merchant
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(interval,), daemon=True)
            for _ in range(workers)
        ]

    def _loop(self, interval):
        session = self.merchant.session()
        while not self.stop.is_set():
            started = time.monotonic()
            self.merchant.pay(session)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def edge_merchant(directory):
    """The scenario's merchant, calling the API through the gateway's TLS edge
    (the edge's certificate is kept in `directory`)."""
    ca_file = Path(directory) / "edge.crt"
    ca_file.write_text(dexec(GATEWAY, "cat /etc/nginx/tls/edge.crt").stdout)
    address = PLATFORMS[GATEWAY]["networks"][0]["ipv4_address"]
    api_key = SETTINGS["ledger_service_bootstrap_merchants"][0]["api_key"]
    result = Merchant(f"https://{address}", SETTINGS["edge_server_name"], str(ca_file), api_key)
    session = result.session()
    # The account payments go to (it exists already after a restore, or
    # from before the conversion); the API may be down, left so by a drill
    # that brings it back.
    with contextlib.suppress(requests.RequestException):
        session.post(f"{result.base}/v1/accounts", json={"currency": "GBP"}, timeout=15)
    return result


@pytest.fixture(scope="session")
def merchant(tmp_path_factory):
    return edge_merchant(tmp_path_factory.mktemp("edge"))
