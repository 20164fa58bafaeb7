"""Idempotency-Key semantics (draft-ietf-httpapi-idempotency-key-header)."""

from __future__ import annotations

import asyncio
import json

from paycore_ledger.idempotency import fingerprint


async def test_replay_is_identical_and_moves_nothing(merchant):
    account = await merchant.open_account()
    first = await merchant.pay(700, idem="order-1")
    again = await merchant.pay(700, idem="order-1")
    assert first.status == again.status == 201
    assert again.body == first.body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await merchant.balance(account) == 700


async def test_body_compared_as_json_values(merchant):
    await merchant.open_account()
    first = await merchant.post(
        "/v1/payments",
        raw='{"amount": 5, "currency": "NGN", "metadata": {"a": "1", "b": "2"}}',
        idem="k",
    )
    assert first.status == 201
    reordered = await merchant.post(
        "/v1/payments",
        raw='{ "metadata":{"b":"2","a":"1"},\n"currency":"NGN","amount":5 }',
        idem="k",
    )
    assert reordered.status == 201 and reordered.body["id"] == first.body["id"]
    assert reordered.headers["Idempotent-Replayed"] == "true"


async def test_same_key_different_request_is_422(merchant):
    await merchant.open_account()
    pay = await merchant.pay(100, idem="k1")
    assert pay.status == 201
    other_body = await merchant.pay(101, idem="k1")
    assert other_body.status == 422 and other_body.code == "idempotency_key_reused"
    other_path = await merchant.payout(100, idem="k1")
    assert other_path.status == 422 and other_path.code == "idempotency_key_reused"
    refund_path = await merchant.refund(pay.body["id"], 100, idem="k1")
    assert refund_path.code == "idempotency_key_reused"


async def test_business_refusal_is_stored_and_replayed_even_after_funds_arrive(merchant):
    account = await merchant.open_account()
    refused = await merchant.payout(500, idem="po-1")
    assert refused.status == 422 and refused.code == "insufficient_funds"
    await merchant.pay(1000)
    replay = await merchant.payout(500, idem="po-1")
    assert replay.status == 422 and replay.code == "insufficient_funds"
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert await merchant.balance(account) == 1000


async def test_success_replays_even_after_balance_is_gone(merchant):
    await merchant.open_account()
    await merchant.pay(1000)
    first = await merchant.payout(1000, idem="po-all")
    assert first.status == 201
    replay = await merchant.payout(1000, idem="po-all")
    assert replay.status == 201 and replay.body == first.body


async def test_errors_before_logic_are_not_stored(merchant, client):
    await merchant.open_account()
    bad = await merchant.post("/v1/payments", raw="{", idem="retry-me")
    assert bad.status == 400
    invalid = await merchant.post(
        "/v1/payments", {"amount": "1", "currency": "NGN"}, idem="retry-me"
    )
    assert invalid.status == 422 and invalid.code == "validation_error"
    missing = await merchant.refund("pay_missing", 5, idem="retry-me")
    assert missing.status == 404
    unauth = await client.post(
        "/v1/payments",
        data=json.dumps({"amount": 5, "currency": "NGN"}),
        headers={"Idempotency-Key": "retry-me", "Authorization": "Bearer pck_" + "z" * 40},
    )
    assert unauth.status == 401
    ok = await merchant.pay(5, idem="retry-me")
    assert ok.status == 201 and "Idempotent-Replayed" not in ok.headers


async def test_keys_are_scoped_per_merchant(new_merchant):
    a, b = await new_merchant(), await new_merchant()
    await a.open_account()
    await b.open_account()
    ra = await a.pay(100, idem="shared")
    rb = await b.pay(200, idem="shared")
    assert ra.status == rb.status == 201
    assert ra.body["id"] != rb.body["id"] and rb.body["amount"] == 200


async def test_in_progress_key_answers_409_then_proceeds(merchant, owner_conn):
    await merchant.open_account()
    body = {"amount": 42, "currency": "NGN"}
    # Hold the key exactly as a still-running first request would: an
    # uncommitted claim row.
    tx = owner_conn.transaction()
    await tx.start()
    await owner_conn.execute(
        "INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path)"
        " VALUES ($1, 'busy', $2, 'POST', '/v1/payments')",
        merchant.merchant_id,
        fingerprint("POST", "/v1/payments", body),
    )
    try:
        r = await merchant.post("/v1/payments", body, idem="busy")
        assert r.status == 409 and r.code == "idempotency_key_in_use"
        assert r.headers["Retry-After"]
    finally:
        await tx.rollback()
    r = await merchant.post("/v1/payments", body, idem="busy")
    assert r.status == 201


async def test_waiter_gets_replay_when_first_commits(merchant, owner_conn):
    """A concurrent duplicate waits for the first and then replays its answer."""
    await merchant.open_account()
    body = {"amount": 43, "currency": "NGN"}
    fp = fingerprint("POST", "/v1/payments", body)
    tx = owner_conn.transaction()
    await tx.start()
    await owner_conn.execute(
        "INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path, state,"
        " status_code, response_body) VALUES ($1, 'slow', $2, 'POST', '/v1/payments',"
        " 'completed', 201, '{\"id\": \"pay_from_first\"}')",
        merchant.merchant_id,
        fp,
    )
    waiter = asyncio.create_task(merchant.post("/v1/payments", body, idem="slow"))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await tx.commit()
    r = await waiter
    assert r.status == 201 and r.body == {"id": "pay_from_first"}
    assert r.headers["Idempotent-Replayed"] == "true"


async def test_purge_respects_retention(merchant, owner_conn, database):
    from conftest import admin_cli_env, run_cli

    await merchant.open_account()
    await merchant.pay(1, idem="old")
    await merchant.pay(1, idem="fresh")
    await owner_conn.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
        " WHERE merchant_id = $1 AND key = 'old'",
        merchant.merchant_id,
    )
    result = run_cli(["idempotency", "purge"], admin_cli_env(database))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deleted"] >= 1
    keys = {
        r["key"]
        for r in await owner_conn.fetch(
            "SELECT key FROM idempotency_keys WHERE merchant_id = $1", merchant.merchant_id
        )
    }
    assert keys == {"fresh"}
