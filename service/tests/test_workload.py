"""Randomized workloads (hypothesis): afterwards the ledger reconciles clean."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from conftest import Api, admin_cli_env, make_settings, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paycore_ledger import merchants, reconcile
from paycore_ledger.app import create_app

CURRENCIES = ("NGN", "USD")
op = st.one_of(
    st.tuples(st.just("pay"), st.sampled_from(CURRENCIES), st.integers(1, 60_000)),
    st.tuples(st.just("payout"), st.sampled_from(CURRENCIES), st.integers(1, 20_000)),
    st.tuples(st.just("refund"), st.integers(0, 30), st.integers(1, 20_000)),
    st.tuples(st.just("replay"), st.integers(0, 30), st.just(0)),
)
# Operations run in small concurrent batches, so outcomes depend on timing;
# the checks below hold whatever the interleaving.
workload = st.lists(st.lists(op, min_size=1, max_size=6), min_size=1, max_size=6)


async def _scenario(db, batches) -> None:
    conn = await asyncpg.connect(db.owner_url)
    created = await merchants.create(conn, f"wl-{uuid.uuid4().hex[:12]}")
    server = TestServer(create_app(make_settings(db.app_url)))
    async with TestClient(server) as client:
        api = Api(client, created["api_key"], created["merchant_id"])
        accounts = {c: await api.open_account(c) for c in CURRENCIES}
        expected = dict.fromkeys(CURRENCIES, 0)
        payments: list[dict] = []
        refunded: dict[str, int] = {}
        sent: list[tuple] = []  # (idempotency key, request, first response)

        async def run(item):
            kind, a, amount = item
            key = uuid.uuid4().hex
            if kind == "pay":
                path, req = "/v1/payments", {"amount": amount, "currency": a}
            elif kind == "payout":
                path, req = "/v1/payouts", {"amount": amount, "currency": a}
            elif kind == "refund" and payments:
                path = f"/v1/payments/{payments[a % len(payments)]['id']}/refunds"
                req = {"amount": amount}
            elif kind == "replay" and sent:
                key, (path, req), first = sent[a % len(sent)]
                again = await api.post(path, req, idem=key)
                assert again.status == first.status and again.body == first.body
                assert again.headers["Idempotent-Replayed"] == "true"
                return item, None
            else:
                return item, None
            response = await api.post(path, req, idem=key)
            sent.append((key, (path, req), response))
            return item, response

        for batch in batches:
            for (kind, _, _), r in await asyncio.gather(*(run(i) for i in batch)):
                if r is None:
                    continue
                assert r.status in (201, 422), r.body
                if r.status == 422:
                    assert r.code in (
                        "insufficient_funds",
                        "refund_exceeds_payment",
                        "payment_not_refundable",
                    ), r.body
                    continue
                body = r.body
                if kind == "pay":
                    payments.append(body)
                    if body["status"] == "succeeded":
                        expected[body["currency"]] += body["amount"]
                else:
                    expected[body["currency"]] -= body["amount"]
                if kind == "refund":
                    pid = body["payment_id"]
                    refunded[pid] = refunded.get(pid, 0) + body["amount"]

        for currency, account in accounts.items():
            balance = await api.balance(account)
            assert balance == expected[currency] >= 0
        for payment_id, amount in refunded.items():
            got = await api.get(f"/v1/payments/{payment_id}")
            assert got.body["amount_refunded"] == amount
    report = await reconcile.run(conn, record=False)
    await conn.close()
    assert report["ok"], report


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=workload)
def test_random_workload_reconciles(database, batches):
    asyncio.run(_scenario(database, batches))


def test_reconcile_command_clean_after_everything(database):
    """Self-contained: it posts its own money (payment, refund, payout), then the
    real command checks the whole ledger, whatever ran before."""

    async def post_money() -> None:
        conn = await asyncpg.connect(database.owner_url)
        created = await merchants.create(conn, f"rc-{uuid.uuid4().hex[:12]}")
        await conn.close()
        async with TestClient(TestServer(create_app(make_settings(database.app_url)))) as client:
            api = Api(client, created["api_key"], created["merchant_id"])
            await api.open_account("NGN")
            payment = await api.pay(5_000)
            assert payment.status == 201, payment.body
            assert (await api.refund(payment.body["id"], 1_000)).status == 201
            assert (await api.payout(2_000)).status == 201

    asyncio.run(post_money())
    result = run_cli(["reconcile"], admin_cli_env(database))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["checked"]["transactions"] >= 3
