"""Webhook endpoints (issue 18): registered, listed and deleted through the
API and the CLI; the signing secret shown once; URLs that are not https or
that point at loopback, link-local, the WireGuard tunnel (10.44.0.0/24) or
any other non-public address refused (SSRF). No traffic is sent: a
registration only resolves the name."""

from __future__ import annotations

import ipaddress
import json

import pytest
from conftest import admin_cli_env, run_cli
from paycore_ledger import config
from paycore_ledger.webhooks import addresses
from test_api import assert_problem

PUBLIC = "https://93.184.215.14/paycore/hooks"  # a public address literal: no DNS needed

REFUSED = [
    "http://93.184.215.14/hooks",  # not https
    "ftp://93.184.215.14/hooks",
    "https://127.0.0.1/hooks",
    "https://127.1.2.3:8443/hooks",
    "https://localhost/hooks",  # a name for loopback, refused without a lookup
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://printer.local/hooks",
    "https://[::1]/hooks",
    "https://[::ffff:127.0.0.1]/hooks",  # IPv4-mapped loopback
    "https://0.0.0.0/hooks",
    "https://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
    "https://[fe80::1]/hooks",
    "https://10.44.0.1/hooks",  # the WireGuard tunnel: the gateway ...
    "https://10.44.0.11:8080/v1/payments",  # ... and a ledger host
    "https://192.168.1.10/hooks",
    "https://172.16.0.5/hooks",
    "https://100.64.0.1/hooks",  # carrier-grade NAT
    "https://[fd00::1]/hooks",  # unique local
    "https://224.0.0.1/hooks",  # multicast
    "https://user:secret@93.184.215.14/hooks",  # credentials in the URL
    "https:///hooks",
    "https://93.184.215.14/hooks#frag",
    "https://no-such-host.invalid/hooks",
    "https://intranet/hooks",  # a single label: a search-domain name
]


async def test_register_list_read_delete(merchant, new_merchant):
    body = {"url": PUBLIC, "description": "orders"}
    r = await merchant.post("/v1/webhook_endpoints", body, idem="hook-1")
    assert r.status == 201, r.body
    created = r.body
    # A retried registration (same Idempotency-Key) is the same endpoint.
    again = await merchant.post("/v1/webhook_endpoints", body, idem="hook-1")
    assert (again.status, again.body) == (201, created)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert created["id"].startswith("we_") and created["object"] == "webhook_endpoint"
    assert (created["url"], created["description"]) == (PUBLIC, "orders")
    assert created["secret"].startswith("whsec_") and len(created["secret"]) == 70
    shown = {k: v for k, v in created.items() if k != "secret"}
    # The secret is shown once: never again.
    listed = await merchant.get("/v1/webhook_endpoints")
    assert listed.status == 200 and listed.body == {"data": [shown], "has_more": False}
    one = await merchant.get(f"/v1/webhook_endpoints/{created['id']}")
    assert (one.status, one.body) == (200, shown)
    # Another merchant sees, reads and deletes none of it.
    other = await new_merchant()
    assert (await other.get("/v1/webhook_endpoints")).body["data"] == []
    path = f"/v1/webhook_endpoints/{created['id']}"
    assert_problem(await other.get(path), 404, "not_found")
    assert_problem(await other.call("DELETE", path), 404, "not_found")
    r = await merchant.call("DELETE", path)
    assert (r.status, r.body) == (
        200,
        {"id": created["id"], "object": "webhook_endpoint", "deleted": True},
    )
    assert_problem(await merchant.get(path), 404, "not_found")
    assert_problem(await merchant.call("DELETE", path), 404, "not_found")


@pytest.mark.parametrize("url", REFUSED)
async def test_refused_urls(merchant, url):
    r = await merchant.post("/v1/webhook_endpoints", {"url": url})
    assert_problem(r, 422, "webhook_url_refused")
    assert r.body["field"] == "url"
    assert (await merchant.get("/v1/webhook_endpoints")).body["data"] == []


async def test_bad_bodies_and_the_cap(merchant):
    for body in (
        {},
        {"url": 5},
        {"url": PUBLIC, "description": "x" * 501},
        {"url": PUBLIC, "x": 1},
    ):
        r = await merchant.post("/v1/webhook_endpoints", body)
        assert_problem(r, 422, "validation_error")
    for _ in range(16):
        assert (await merchant.post("/v1/webhook_endpoints", {"url": PUBLIC})).status == 201
    r = await merchant.post("/v1/webhook_endpoints", {"url": PUBLIC})
    assert_problem(r, 422, "too_many_webhook_endpoints")


async def test_every_address_of_a_name_is_checked():
    """One non-public address among a name's addresses refuses the name (an
    attacker's DNS could answer with either)."""
    assert addresses.refusal("93.184.215.14") is None
    assert addresses.refusal("2606:4700:4700::1111") is None
    assert "not a public address" in addresses.refusal("10.44.0.12")
    assert "not a public address" in addresses.refusal("::ffff:10.44.0.12")
    # Allowed networks (tests and development only) admit what they name, no more.
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    assert addresses.refusal("127.0.0.1", loopback) is None
    assert addresses.refusal("10.44.0.1", loopback) is not None
    # A name resolving to loopback (here through /etc/hosts, no DNS query).
    with pytest.raises(addresses.RefusedUrl, match="not a public address"):
        await addresses.resolve_public("localhost", 443)


def test_http_and_extra_networks_only_by_explicit_setting():
    settings = config.load({})
    assert settings.webhook_allow_http is False and settings.webhook_allowed_networks == ()
    assert settings.webhook_retry_seconds >= 3 * 24 * 3600
    dev = config.load(
        {"PAYCORE_WEBHOOK_ALLOW_HTTP": "true", "PAYCORE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}
    )
    assert dev.webhook_allow_http and dev.webhook_allowed_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
    )
    for env in (
        {"PAYCORE_WEBHOOK_ALLOW_HTTP": "maybe"},
        {"PAYCORE_WEBHOOK_ALLOWED_NETWORKS": "10.44.0.0/33"},
        {"PAYCORE_WEBHOOK_RETRY_HOURS": "24"},  # retries last at least 3 days
        {"PAYCORE_WEBHOOK_LEASE_SECONDS": "5", "PAYCORE_WEBHOOK_TIMEOUT_SECONDS": "10"},
    ):
        with pytest.raises(config.ConfigError):
            config.load(env)


async def test_cli_create_list_delete(database, merchant):
    env = admin_cli_env(database)
    args = ["webhooks", "create", "--merchant-id", merchant.merchant_id, "--url", PUBLIC]
    created = run_cli(args, env)
    assert created.returncode == 0, created.stderr
    endpoint = json.loads(created.stdout)
    assert endpoint["secret"].startswith("whsec_")
    listed = run_cli(["webhooks", "list", "--merchant-id", merchant.merchant_id], env)
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [endpoint["id"]]
    assert "secret" not in listed.stdout
    refused = run_cli([*args[:-1], "https://10.44.0.1/hooks"], env)
    assert refused.returncode == 1 and "not a public address" in refused.stderr
    delete = ["webhooks", "delete", "--merchant-id", merchant.merchant_id, endpoint["id"]]
    assert run_cli(delete, env).returncode == 0
    assert run_cli(delete, env).returncode == 1
    assert (await merchant.get("/v1/webhook_endpoints")).body["data"] == []
