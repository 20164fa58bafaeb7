"""Hosts of the site scenario, by inventory group, and a merchant's HTTPS client."""

import json
import os
import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SECRETS = Path(os.environ.get("PAYCORE_LAB_SECRETS_DIR", "/var/lib/paycore-lab/secrets"))
RUNNER = AnsibleRunner(INVENTORY)


def hosts_in(group):
    return [
        testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)
        for name in RUNNER.get_hosts(group)
    ]


@pytest.fixture(scope="session")
def gateway():
    return hosts_in("gateway")[0]


@pytest.fixture(scope="session")
def ledger_hosts():
    return hosts_in("ledger")


@pytest.fixture(scope="session")
def database():
    return hosts_in("database")[0]


@pytest.fixture(scope="session")
def monitoring():
    return hosts_in("monitoring")[0]


@pytest.fixture(scope="session")
def merchant():
    return hosts_in("merchant")[0]


@dataclass
class Response:
    status: int
    headers: dict
    body: dict | list | None


class MerchantClient:
    """Calls the ledger API from the merchant container, over HTTPS through the edge."""

    def __init__(self, merchant, gateway_ip, server_name, api_key):
        self.merchant = merchant
        self.base = f"https://{server_name}"
        self.resolve = f"{server_name}:443:{gateway_ip}"
        self.api_key = api_key

    def call(self, method, path, body=None, idempotency_key=None, headers=None, api_key=None):
        command = ["curl", "-sS", "-i", "--max-time", "20", "--cacert", "/tmp/edge.crt"]
        command += ["--resolve", self.resolve, "-X", method]
        key = self.api_key if api_key is None else api_key
        if key:
            command += ["-H", f"Authorization: Bearer {key}"]
        if idempotency_key:
            command += ["-H", f"Idempotency-Key: {idempotency_key}"]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        if body is not None:
            command += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        command.append(self.base + path)
        raw = self.merchant.check_output(shlex.join(command))
        return parse(raw)

    @staticmethod
    def new_key():
        return f"site-{uuid.uuid4()}"


def parse(raw):
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, json.loads(body) if body.strip() else None)


@pytest.fixture(scope="session")
def client(merchant, gateway):
    variables = gateway.ansible.get_variables()
    certificate = gateway.file("/etc/nginx/tls/edge.crt").content_string
    merchant.run(f"cat > /tmp/edge.crt <<'EOF'\n{certificate}EOF")
    api_key = (SECRETS / "lab_merchant_api_key").read_text().split()[0]
    return MerchantClient(merchant, variables["lab_ipv4"], variables["edge_server_name"], api_key)
