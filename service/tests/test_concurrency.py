"""Many simultaneous requests: no double posting, no overdraft, no deadlock."""

from __future__ import annotations

import asyncio

N = 50


async def test_50_identical_requests_create_one_payment(merchant, owner_conn):
    account = await merchant.open_account()
    results = await asyncio.gather(*(merchant.pay(2500, idem="same-key") for _ in range(N)))
    statuses = [r.status for r in results]
    assert set(statuses) <= {201, 409}, statuses
    created = {r.body["id"] for r in results if r.status == 201}
    assert len(created) == 1
    assert sum(1 for r in results if r.headers.get("Idempotent-Replayed") == "true") >= 1
    count = await owner_conn.fetchval(
        "SELECT count(*) FROM payments WHERE merchant_id = $1", merchant.merchant_id
    )
    assert count == 1
    assert await merchant.balance(account) == 2500


async def test_50_payouts_over_the_balance_never_overdraw(merchant):
    account = await merchant.open_account()
    await merchant.pay(1000)
    results = await asyncio.gather(*(merchant.payout(30) for _ in range(N)))
    assert {r.status for r in results} <= {201, 422}
    ok = [r for r in results if r.status == 201]
    assert all(r.code == "insufficient_funds" for r in results if r.status == 422)
    assert len(ok) == 1000 // 30
    assert await merchant.balance(account) == 1000 - 30 * len(ok)


async def test_refunds_racing_payouts(merchant):
    account = await merchant.open_account()
    payment = (await merchant.pay(1000)).body
    calls = []
    for i in range(N):
        if i % 2:
            calls.append(merchant.refund(payment["id"], 40))
        else:
            calls.append(merchant.payout(40))
    results = await asyncio.gather(*calls)
    assert {r.status for r in results} <= {201, 422}, [r.body for r in results]
    moved = 40 * sum(1 for r in results if r.status == 201)
    balance = await merchant.balance(account)
    assert balance >= 0 and balance == 1000 - moved
    assert moved == 1000
    got = await merchant.get(f"/v1/payments/{payment['id']}")
    refunded = 40 * sum(1 for r in results if r.status == 201 and r.body["object"] == "refund")
    assert got.body["amount_refunded"] == refunded


async def test_concurrent_payments_all_land(merchant):
    account = await merchant.open_account()
    results = await asyncio.gather(*(merchant.pay(i + 1) for i in range(N)))
    assert all(r.status == 201 for r in results)
    assert await merchant.balance(account) == N * (N + 1) // 2


async def test_two_merchants_same_key_concurrently(new_merchant):
    a, b = await new_merchant(), await new_merchant()
    await a.open_account()
    await b.open_account()
    results = await asyncio.gather(*(m.pay(10, idem="dup") for _ in range(N // 2) for m in (a, b)))
    ids_a = {r.body["id"] for r in results[0::2] if r.status == 201}
    ids_b = {r.body["id"] for r in results[1::2] if r.status == 201}
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b


async def test_row_lock_timeout_is_503_and_not_stored(merchant, owner_conn):
    account = await merchant.open_account()
    await merchant.pay(100)
    tx = owner_conn.transaction()
    await tx.start()
    await owner_conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account)
    try:
        r = await merchant.payout(10, idem="stuck")
        assert r.status == 503 and r.code == "ledger_busy"
    finally:
        await tx.rollback()
    r = await merchant.payout(10, idem="stuck")
    assert r.status == 201 and "Idempotent-Replayed" not in r.headers
