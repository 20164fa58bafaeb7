"""Events (issue 18): every state change of a payment, refund or payout
writes an event in the transaction that makes it (sql/0011's triggers, a
transactional outbox), on every path: one request alone, group commit, the
operator's approve and reject. GET /v1/events lists them like the other lists."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from conftest import make_settings
from paycore_ledger import ledger
from paycore_ledger.app import create_app
from test_api import assert_problem


async def events_of(api, **params: str | int) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in {"limit": 100, **params}.items())
    r = await api.get(f"/v1/events?{query}")
    assert r.status == 200, r.body
    return r.body["data"]


async def test_each_state_change_writes_one_event_with_the_objects_state(
    merchant, new_merchant, owner_conn
):
    await merchant.open_account("USD")
    paid = (await merchant.pay(2_000, "USD")).body
    review = (await merchant.pay(60_000, "USD")).body  # above the test threshold
    rejected = (await merchant.pay(70_000, "USD")).body
    assert (review["status"], rejected["status"]) == ("requires_review", "requires_review")
    approved = await ledger.decide_payment(owner_conn, review["id"], approve=True)
    await ledger.decide_payment(owner_conn, rejected["id"], approve=False)
    refund = (await merchant.refund(paid["id"], 500)).body
    payout = (await merchant.payout(1_000, "USD")).body
    other = await new_merchant()
    await other.open_account("USD")
    await other.pay(100, "USD")  # never in this merchant's events

    events = await events_of(merchant)
    listed = [(e["type"], e["data"]["object"]["id"]) for e in events]
    assert listed[0] == ("payout.succeeded", payout["id"])
    # A refund: its own event and its payment's (amount_refunded), one transaction.
    assert set(listed[1:3]) == {
        ("refund.succeeded", refund["id"]),
        ("payment.refunded", paid["id"]),
    }
    assert listed[3:] == [
        ("payment.rejected", rejected["id"]),
        ("payment.approved", review["id"]),
        ("payment.requires_review", rejected["id"]),
        ("payment.requires_review", review["id"]),
        ("payment.succeeded", paid["id"]),
    ]
    # data.object is the object as the API showed it at that state.
    by_type = {e["type"]: e["data"]["object"] for e in events}
    assert by_type["payment.succeeded"] == paid
    assert by_type["payment.approved"] == approved
    assert by_type["refund.succeeded"] == refund
    assert by_type["payout.succeeded"] == payout
    assert by_type["payment.rejected"]["status"] == "rejected"
    assert by_type["payment.refunded"] == (await merchant.get(f"/v1/payments/{paid['id']}")).body
    assert by_type["payment.refunded"]["amount_refunded"] == 500
    for event in events:
        assert event["object"] == "event"
        assert event["id"].startswith("evt_") and len(event["id"]) == 36
        r = await merchant.get(f"/v1/events/{event['id']}")
        assert (r.status, r.body) == (200, event)
    # Another merchant's event is not found, like any other object of theirs.
    theirs = (await events_of(other))[0]
    assert_problem(await merchant.get(f"/v1/events/{theirs['id']}"), 404, "not_found")
    assert_problem(await merchant.get("/v1/events/evt_nope"), 404, "not_found")


async def test_group_commit_writes_each_items_event(database, aiohttp_client, new_merchant):
    """Payments, refunds and payouts posted in batches (one SQL call and one
    commit for many requests) each get their event, and no refused item does."""
    client = await aiohttp_client(
        create_app(make_settings(database.app_url, post_batch_window_us=20_000))
    )
    api = await new_merchant()
    api.client = client
    await api.open_account("NGN")
    payments = await asyncio.gather(*(api.pay(1_000 + i) for i in range(12)))
    assert {r.status for r in payments} == {201}
    refunds = await asyncio.gather(
        *(api.refund(r.body["id"], 100) for r in payments[:6]),
        api.payout(10**9),  # insufficient funds: no event
        *(api.payout(50) for _ in range(4)),
    )
    assert [r.status for r in refunds] == [201] * 6 + [422] + [201] * 4
    events = await events_of(api)
    made = [r.body["id"] for r in payments + refunds if r.status == 201]
    refunded = [r.body["id"] for r in payments[:6]]  # payment.refunded each
    assert sorted(e["data"]["object"]["id"] for e in events) == sorted(made + refunded)
    assert len({e["id"] for e in events}) == len(events) == 28


async def test_pages_and_type_filter_reuse_the_list_contract(merchant):
    await merchant.open_account()
    for i in range(5):
        await merchant.pay(100 + i)
    await merchant.payout(50)
    newest_first = [e["id"] for e in await events_of(merchant)]
    assert len(newest_first) == 6
    r = await merchant.get("/v1/events?limit=2")
    assert [e["id"] for e in r.body["data"]] == newest_first[:2] and r.body["has_more"]
    r = await merchant.get(f"/v1/events?limit=2&starting_after={newest_first[1]}")
    assert [e["id"] for e in r.body["data"]] == newest_first[2:4]
    r = await merchant.get(f"/v1/events?limit=2&ending_before={newest_first[2]}")
    assert [e["id"] for e in r.body["data"]] == newest_first[:2]
    payouts = await events_of(merchant, type="payout.succeeded")
    assert [e["type"] for e in payouts] == ["payout.succeeded"]
    assert len(await events_of(merchant, type="payment.succeeded")) == 5
    assert_problem(await merchant.get("/v1/events?type=payment.exploded"), 422, "validation_error")


async def test_a_crash_mid_transaction_leaves_neither_money_nor_event(
    database, merchant, owner_conn
):
    """The event is written by the statement that writes the payout: a
    session killed before its commit leaves neither behind."""
    await merchant.open_account()
    await merchant.pay(5_000)
    before = len(await events_of(merchant))
    conn = await asyncpg.connect(database.app_url)
    await conn.transaction().start()
    await ledger.create_payout(conn, merchant_id=merchant.merchant_id, amount=700, currency="NGN")
    inside = await conn.fetchval(
        "SELECT count(*) FROM events WHERE merchant_id = $1", merchant.merchant_id
    )
    assert inside == before + 1  # written, not committed
    pid = conn.get_server_pid()
    # The session dies before its commit (as a crashed worker's would).
    assert await owner_conn.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
    conn.terminate()
    assert len(await events_of(merchant)) == before
    assert (await merchant.get("/v1/payouts")).body["data"] == []
    assert (
        await owner_conn.fetchval(
            "SELECT count(*) FROM payouts WHERE merchant_id = $1", merchant.merchant_id
        )
        == 0
    )


async def test_the_runtime_role_reads_events_but_cannot_write_them(database, merchant):
    conn = await asyncpg.connect(database.app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO events (id, merchant_id, type, object_id, data, created_at)"
                " VALUES ($1, $2, 'payout.succeeded', 'po_x', '{}', now())",
                f"evt_{uuid.uuid4().hex}",
                merchant.merchant_id,
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE events SET type = 'payout.succeeded'")
    finally:
        await conn.close()
