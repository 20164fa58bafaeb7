"""Webhook delivery (issue 18), end to end against a real aiohttp receiver
on loopback: the receiver down for a while and then back gets every event
at least once, each with its stable id and a valid signature, and, following
docs/webhooks.md (dedupe on the id; per object keep only a newer created_at),
never lets an older state overwrite a later one; a worker killed
mid-delivery leaves the event to be delivered again; the address is checked
again at delivery time; a delivery is given up only after the retry window."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager

import asyncpg
from aiohttp import web
from conftest import Api, cli_env, make_settings
from paycore_ledger import ledger
from paycore_ledger.app import create_app
from paycore_ledger.webhooks import delivery, signing
from pgcluster import free_port

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def hook_settings(url: str, **overrides):
    base = {
        "webhook_allow_http": True,
        "webhook_allowed_networks": LOOPBACK,
        "webhook_retry_base_seconds": 0.2,
        "webhook_retry_cap_seconds": 0.8,
        "webhook_timeout_seconds": 2.0,
        "webhook_lease_seconds": 4.0,
    }
    return make_settings(url, **{**base, **overrides})


class Receiver:
    """A merchant's webhook endpoint that follows docs/webhooks.md: verify the
    signature within the replay window, dedupe on the event id, and per
    object apply an event only if its created_at is later than the last one
    applied."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.secret = ""
        self.received: list[str] = []  # event ids, every request
        self.bodies: dict[str, set[bytes]] = {}
        self.bad_signatures = 0
        self.applied: set[str] = set()
        self.latest: dict[str, dict] = {}  # object id -> the event applied last
        self.ignored_as_older: list[tuple[str, str]] = []  # (type, object id)
        self.refuse_types: set[str] = set()  # answer 500 to these, for now
        self.hold = False  # never answer (the worker gets killed meanwhile)
        self.got_request = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/paycore/hooks"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not signing.verify(self.secret, body, request.headers.get(signing.HEADER, "")):
            self.bad_signatures += 1
            return web.Response(status=400)
        event = json.loads(body)
        self.received.append(event["id"])
        self.bodies.setdefault(event["id"], set()).add(body)
        self.got_request.set()
        if self.hold:
            await asyncio.sleep(60)
        if event["type"] in self.refuse_types:
            return web.Response(status=500)
        if event["id"] in self.applied:
            return web.Response(status=200)  # a duplicate: already handled
        obj = event["data"]["object"]
        last = self.latest.get(obj["id"])
        if last is None or event["created_at"] > last["created_at"]:
            self.latest[obj["id"]] = event
        else:
            self.ignored_as_older.append((event["type"], obj["id"]))
        self.applied.add(event["id"])
        return web.Response(status=200)

    async def up(self) -> None:
        if self._runner is None:
            app = web.Application()
            app.router.add_post("/paycore/hooks", self.handle)
            self._runner = web.AppRunner(app, shutdown_timeout=0.1)
            await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@asynccontextmanager
async def running(worker: delivery.Worker):
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def wait_for(predicate, timeout: float = 40, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def deliveries(owner_conn, endpoint_id: str) -> list[asyncpg.Record]:
    return await owner_conn.fetch(
        "SELECT d.*, (SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id)"
        " AS recorded FROM webhook_deliveries d WHERE endpoint_id = $1",
        endpoint_id,
    )


async def all_in(owner_conn, endpoint_id: str, state: str, count: int) -> bool:
    rows = await deliveries(owner_conn, endpoint_id)
    return len(rows) == count and all(r["state"] == state for r in rows)


async def register(api: Api, url: str) -> dict:
    r = await api.post("/v1/webhook_endpoints", {"url": url})
    assert r.status == 201, r.body
    return r.body


async def merchant_with_receiver(settings, aiohttp_client, new_merchant):
    """A new merchant calling the service under `settings`, and a receiver
    (not listening yet) registered as its endpoint: (api, receiver, endpoint)."""
    api = await new_merchant()
    api.client = await aiohttp_client(create_app(settings))
    receiver = Receiver(free_port())
    endpoint = await register(api, receiver.url)
    receiver.secret = endpoint["secret"]
    return api, receiver, endpoint


async def test_receiver_down_then_back_gets_every_event_once_verified_and_in_state_order(
    database, aiohttp_client, new_merchant, owner_conn
):
    settings = hook_settings(database.app_url)
    api, receiver, endpoint = await merchant_with_receiver(settings, aiohttp_client, new_merchant)
    await api.open_account("USD")
    try:
        async with running(delivery.Worker(settings)):
            paid = [(await api.pay(1_000 + i, "USD")).body for i in range(3)]
            held = [(await api.pay(60_000 + i, "USD")).body for i in range(2)]
            await ledger.decide_payment(owner_conn, held[0]["id"], approve=True)
            await ledger.decide_payment(owner_conn, held[1]["id"], approve=False)
            assert (await api.refund(paid[0]["id"], 300)).status == 201
            assert (await api.payout(500, "USD")).status == 201
            events = (await api.get("/v1/events?limit=100")).body["data"]
            assert len(events) == 10

            # The receiver is down: attempts fail, are recorded, and retried.
            async def retried() -> bool:
                rows = await deliveries(owner_conn, endpoint["id"])
                return len(rows) == 10 and all(r["recorded"] >= 2 for r in rows)

            await wait_for(retried, what="two failed attempts per delivery")
            metrics = await (await api.client.get("/metrics")).text()
            assert "paycore_webhook_deliveries_pending 10" in metrics
            assert "paycore_webhook_failing_endpoints 1" in metrics

            # Back, but the older states of the two reviewed payments are
            # refused for now: they arrive only after the later ones.
            receiver.refuse_types = {"payment.requires_review"}
            await receiver.up()

            async def later_states_in() -> bool:
                return len(receiver.applied) == 8

            await wait_for(later_states_in, what="the later states")
            receiver.refuse_types = set()
            await wait_for(
                lambda: all_in(owner_conn, endpoint["id"], "delivered", 10), what="every delivery"
            )
    finally:
        await receiver.close()

    # Every event at least once, with its stable id, the same body each time.
    assert receiver.applied == {e["id"] for e in events}
    assert set(receiver.received) == receiver.applied
    assert len(receiver.received) > len(receiver.applied)  # the refusals were retried
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values())
    assert receiver.bad_signatures == 0
    # The older states arrived last and were ignored (and any other event
    # that happened to arrive after a later one of its object): the receiver
    # holds the state each object has now.
    assert {
        ("payment.requires_review", held[0]["id"]),
        ("payment.requires_review", held[1]["id"]),
    } <= set(receiver.ignored_as_older)
    for object_id, event in receiver.latest.items():
        kind = {"pay": "payments", "re": "refunds", "po": "payouts"}[object_id.split("_")[0]]
        now = (await api.get(f"/v1/{kind}/{object_id}")).body
        assert event["data"]["object"] == now
    assert receiver.latest[held[0]["id"]]["type"] == "payment.approved"
    assert receiver.latest[held[1]["id"]]["type"] == "payment.rejected"

    # Every attempt is recorded: the refused connections, the 500s, the 200s.
    attempts = await owner_conn.fetch(
        "SELECT a.status_code, a.error, a.duration_ms FROM webhook_attempts a"
        " JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1",
        endpoint["id"],
    )
    codes = {a["status_code"] for a in attempts}
    assert {None, 500, 200} <= codes
    assert all(a["error"] for a in attempts if a["status_code"] is None)
    assert all(a["duration_ms"] >= 0 for a in attempts)
    health = await owner_conn.fetchrow(
        "SELECT consecutive_failures, last_success_at FROM webhook_endpoints WHERE id = $1",
        endpoint["id"],
    )
    assert health["consecutive_failures"] == 0 and health["last_success_at"] is not None
    metrics = await (await api.client.get("/metrics")).text()
    assert "paycore_webhook_deliveries_pending 0" in metrics


async def test_a_worker_killed_mid_delivery_leaves_it_to_be_delivered_again(
    database, aiohttp_client, new_merchant, owner_conn
):
    settings = hook_settings(database.app_url, webhook_lease_seconds=3.0)
    api, receiver, endpoint = await merchant_with_receiver(settings, aiohttp_client, new_merchant)
    receiver.hold = True
    await receiver.up()
    await api.open_account("NGN")
    env = cli_env(
        database.app_url,
        PAYCORE_WEBHOOK_ALLOW_HTTP="true",
        PAYCORE_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        PAYCORE_WEBHOOK_TIMEOUT_SECONDS="2",
        PAYCORE_WEBHOOK_LEASE_SECONDS="3",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "paycore_ledger", "webhooks", "deliver"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        paid = (await api.pay(1_234)).body
        await asyncio.wait_for(receiver.got_request.wait(), 30)
        os.kill(worker.pid, signal.SIGKILL)  # mid-delivery: the request is unanswered
        worker.wait(10)
        (row,) = await deliveries(owner_conn, endpoint["id"])
        assert (row["state"], row["recorded"]) == ("pending", 0)

        receiver.hold = False
        async with running(delivery.Worker(settings)):
            await wait_for(
                lambda: all_in(owner_conn, endpoint["id"], "delivered", 1), what="redelivery"
            )
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        await receiver.close()
    (event,) = (await api.get("/v1/events")).body["data"]
    assert event["data"]["object"]["id"] == paid["id"]
    # Delivered twice (at least once), the same event both times.
    assert receiver.received == [event["id"], event["id"]]
    assert receiver.applied == {event["id"]}


async def test_the_address_is_checked_again_at_delivery_and_retries_end_after_the_window(
    database, aiohttp_client, new_merchant, owner_conn
):
    """Registered while its address was acceptable; at delivery it is not
    (as if its DNS now answered 127.0.0.1): nothing is sent, the attempt is
    recorded as refused, and once the retry window has passed the delivery
    is failed."""
    allowed = hook_settings(database.app_url)
    api, receiver, endpoint = await merchant_with_receiver(allowed, aiohttp_client, new_merchant)
    await receiver.up()
    await api.open_account("NGN")
    await api.pay(777)
    strict = hook_settings(database.app_url, webhook_allowed_networks=(), webhook_retry_seconds=2)
    try:
        async with running(delivery.Worker(strict)):
            await wait_for(
                lambda: all_in(owner_conn, endpoint["id"], "failed", 1), what="the give-up"
            )
    finally:
        await receiver.close()
    assert receiver.received == []
    errors = await owner_conn.fetch(
        "SELECT a.error FROM webhook_attempts a JOIN webhook_deliveries d"
        " ON d.id = a.delivery_id WHERE d.endpoint_id = $1",
        endpoint["id"],
    )
    assert errors and all("not a public address" in e["error"] for e in errors)


def test_backoff_is_exponential_capped_and_jittered():
    settings = make_settings(None)
    for attempt, full in [(1, 30), (2, 60), (5, 480), (10, 15_360), (11, 21_600), (30, 21_600)]:
        delays = [delivery.retry_delay(settings, attempt) for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full * 0.2  # jittered
    # Attempts keep coming for the whole window (3 days): about 20 of them.
    elapsed, attempts = 0.0, 0
    while elapsed < settings.webhook_retry_seconds:
        attempts += 1
        elapsed += delivery.retry_delay(settings, attempts)
    assert 12 <= attempts <= 40


def test_signature_verification_and_replay_window():
    secret, body = signing.new_secret(), b'{"id":"evt_1"}'
    now = int(time.time())
    header = signing.header(secret, body, now)
    assert signing.verify(secret, body, header)
    assert not signing.verify(secret, body + b" ", header)  # another body
    assert not signing.verify("whsec_other", body, header)
    assert not signing.verify(secret, body, header, now=now + 301)  # replayed later
    assert not signing.verify(secret, body, "v1=" + header.split("v1=")[1])  # no timestamp
    # A receiver that accepts several v1 (secret rotation) accepts either.
    assert signing.verify(secret, body, f"{header},v1={'0' * 64}")
