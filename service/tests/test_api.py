"""Every row of docs/api.md, and each error code, against the real database."""

from __future__ import annotations

import json

import pytest

PROBLEM = "application/problem+json"


def assert_problem(r, status: int, code: str) -> None:
    assert r.status == status, r.body
    assert r.headers["Content-Type"].startswith(PROBLEM)
    for field in ("type", "title", "status", "detail", "code"):
        assert field in r.body, r.body
    assert r.body["status"] == status
    assert r.body["code"] == code


async def test_open_account_then_conflict(merchant):
    r = await merchant.post("/v1/accounts", {"currency": "NGN"})
    assert r.status == 201
    assert r.body["id"].startswith("acct_")
    assert r.body["balance"] == 0 and r.body["currency"] == "NGN"
    again = await merchant.post("/v1/accounts", {"currency": "NGN"})
    assert_problem(again, 409, "account_exists")
    usd = await merchant.post("/v1/accounts", {"currency": "USD"})
    assert usd.status == 201


async def test_list_and_get_accounts(merchant):
    ngn = await merchant.open_account("NGN")
    eur = await merchant.open_account("EUR")
    r = await merchant.get("/v1/accounts")
    assert r.status == 200
    assert [a["id"] for a in r.body["data"]] == [ngn, eur]
    one = await merchant.get(f"/v1/accounts/{ngn}")
    assert one.status == 200 and one.body["balance"] == 0 and isinstance(one.body["balance"], int)
    assert_problem(await merchant.get("/v1/accounts/acct_nope"), 404, "not_found")


async def test_payment_credits_account_and_is_readable(merchant):
    account = await merchant.open_account()
    r = await merchant.post(
        "/v1/payments",
        {"amount": 12345, "currency": "NGN", "description": "order 7", "metadata": {"o": "7"}},
    )
    assert r.status == 201, r.body
    payment = r.body
    assert payment["id"].startswith("pay_")
    assert payment["status"] == "succeeded"
    assert payment["amount_refunded"] == 0
    assert payment["metadata"] == {"o": "7"} and payment["description"] == "order 7"
    assert await merchant.balance(account) == 12345
    got = await merchant.get(f"/v1/payments/{payment['id']}")
    assert got.status == 200 and got.body == payment
    assert_problem(await merchant.get("/v1/payments/pay_nope"), 404, "not_found")


async def test_payment_without_account_is_stored_422(merchant):
    r = await merchant.pay(100, "GBP", idem="no-acct")
    assert_problem(r, 422, "account_not_found")
    replay = await merchant.pay(100, "GBP", idem="no-acct")
    assert_problem(replay, 422, "account_not_found")
    assert replay.headers.get("Idempotent-Replayed") == "true"


async def test_review_threshold_default_and_per_currency(merchant):
    await merchant.open_account("NGN")
    usd = await merchant.open_account("USD")
    at = await merchant.pay(10_000_000, "NGN")
    assert at.body["status"] == "succeeded"
    above = await merchant.pay(10_000_001, "NGN")
    assert above.status == 201 and above.body["status"] == "requires_review"
    # USD threshold is configured to 50 000 in the test settings.
    r = await merchant.pay(50_001, "USD")
    assert r.body["status"] == "requires_review"
    assert await merchant.balance(usd) == 0
    refund = await merchant.refund(r.body["id"], 1)
    assert_problem(refund, 422, "payment_not_refundable")


async def test_refunds_partial_full_and_over(merchant):
    account = await merchant.open_account()
    pay = (await merchant.pay(1000)).body
    r1 = await merchant.refund(pay["id"], 400)
    assert r1.status == 201 and r1.body["id"].startswith("re_")
    assert r1.body["status"] == "succeeded" and r1.body["payment_id"] == pay["id"]
    over = await merchant.refund(pay["id"], 601)
    assert_problem(over, 422, "refund_exceeds_payment")
    r2 = await merchant.refund(pay["id"], 600)
    assert r2.status == 201
    got = await merchant.get(f"/v1/payments/{pay['id']}")
    assert got.body["amount_refunded"] == 1000
    assert await merchant.balance(account) == 0
    assert (await merchant.get(f"/v1/refunds/{r1.body['id']}")).body == r1.body
    assert_problem(await merchant.refund("pay_nope", 1), 404, "not_found")


async def test_refund_refused_when_money_already_paid_out(merchant):
    await merchant.open_account()
    pay = (await merchant.pay(1000)).body
    assert (await merchant.payout(900)).status == 201
    assert_problem(await merchant.refund(pay["id"], 500), 422, "insufficient_funds")
    assert (await merchant.refund(pay["id"], 100)).status == 201


async def test_payouts(merchant):
    account = await merchant.open_account()
    await merchant.pay(500)
    r = await merchant.payout(200)
    assert r.status == 201 and r.body["id"].startswith("po_") and r.body["status"] == "succeeded"
    assert (await merchant.get(f"/v1/payouts/{r.body['id']}")).body == r.body
    assert_problem(await merchant.payout(301), 422, "insufficient_funds")
    assert (await merchant.payout(300)).status == 201
    assert await merchant.balance(account) == 0
    assert_problem(await merchant.payout(1, "EUR"), 422, "account_not_found")


async def test_entries_newest_first_with_pagination(merchant):
    account = await merchant.open_account()
    for amount in (1, 2, 3, 4, 5):
        await merchant.pay(amount)
    await merchant.payout(6)
    page = await merchant.get(f"/v1/accounts/{account}/entries?limit=4")
    assert page.status == 200 and page.body["has_more"] is True
    entries = page.body["data"]
    assert [(e["direction"], e["amount"]) for e in entries] == [
        ("debit", 6),
        ("credit", 5),
        ("credit", 4),
        ("credit", 3),
    ]
    assert all(e["id"].startswith("ent_") and e["account_id"] == account for e in entries)
    rest = await merchant.get(
        f"/v1/accounts/{account}/entries?limit=4&starting_after={entries[-1]['id']}"
    )
    assert [e["amount"] for e in rest.body["data"]] == [2, 1]
    assert rest.body["has_more"] is False
    bad = await merchant.get(f"/v1/accounts/{account}/entries?starting_after=ent_999999999")
    assert_problem(bad, 422, "validation_error")
    assert bad.body["field"] == "starting_after"
    assert_problem(
        await merchant.get(f"/v1/accounts/{account}/entries?limit=0"), 422, "validation_error"
    )
    assert_problem(await merchant.get("/v1/accounts/acct_nope/entries"), 404, "not_found")


async def test_health_ready_metrics_openapi(client, merchant):
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    await merchant.get("/v1/accounts")
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    text = await metrics.text()
    assert 'http_requests_total{method="GET",route="/v1/accounts",status="200"}' in text
    assert "http_request_duration_seconds_bucket" in text
    assert 'le="0.25"' in text
    spec = await client.get("/openapi.json")
    assert spec.status == 200 and (await spec.json())["openapi"].startswith("3.")


# ---- error handling ---------------------------------------------------------------


async def test_auth_missing_and_wrong(client, merchant):
    r = await client.get("/v1/accounts")
    assert r.status == 401
    assert (await r.json())["code"] == "unauthorized"
    assert r.headers["Content-Type"].startswith(PROBLEM)
    r = await client.get("/v1/accounts", headers={"Authorization": "Bearer pck_" + "x" * 40})
    assert r.status == 401
    r = await client.get("/v1/accounts", headers={"Authorization": f"Basic {merchant.key}"})
    assert r.status == 401


async def test_payment_with_wrong_or_revoked_key_is_401_first(client, merchant, owner_conn):
    await merchant.open_account()
    wrong = {"Authorization": "Bearer pck_" + "y" * 40, "Idempotency-Key": "k401"}
    for body, headers in (
        ({"amount": 5, "currency": "NGN"}, wrong),
        ({"amount": "5", "currency": "NGN"}, wrong),
        ({"amount": 5, "currency": "NGN"}, {"Authorization": wrong["Authorization"]}),
    ):
        r = await client.post("/v1/payments", data=json.dumps(body), headers=headers)
        assert r.status == 401 and (await r.json())["code"] == "unauthorized"
    await owner_conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE merchant_id = $1", merchant.merchant_id
    )
    r = await merchant.pay(5, idem="after-revoke")
    assert r.status == 401
    assert not await owner_conn.fetchval(
        "SELECT count(*) FROM payments WHERE merchant_id = $1", merchant.merchant_id
    )


async def test_malformed_json_400(merchant):
    await merchant.open_account()
    for raw in ('{"amount": 1,', "not json", '{"amount": NaN, "currency": "NGN"}', b"\xff\xfe"):
        assert_problem(await merchant.post("/v1/payments", raw=raw), 400, "malformed_json")
    assert_problem(await merchant.post("/v1/accounts", raw="{"), 400, "malformed_json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"currency": "NGN"}, "amount"),
        ({"amount": 10}, "currency"),
        ({"amount": 10.0, "currency": "NGN"}, "amount"),
        ({"amount": 0.1, "currency": "NGN"}, "amount"),
        ({"amount": "10", "currency": "NGN"}, "amount"),
        ({"amount": True, "currency": "NGN"}, "amount"),
        ({"amount": None, "currency": "NGN"}, "amount"),
        ({"amount": 0, "currency": "NGN"}, "amount"),
        ({"amount": -5, "currency": "NGN"}, "amount"),
        ({"amount": 10**12 + 1, "currency": "NGN"}, "amount"),
        ({"amount": 10**30, "currency": "NGN"}, "amount"),
        ({"amount": 10, "currency": "ngn"}, "currency"),
        ({"amount": 10, "currency": 566}, "currency"),
        ({"amount": 10, "currency": "NGN", "description": 5}, "description"),
        ({"amount": 10, "currency": "NGN", "metadata": "x"}, "metadata"),
        ({"amount": 10, "currency": "NGN", "metadata": {"k": 1}}, "metadata.k"),
        ({"amount": 10, "currency": "NGN", "extra": 1}, "extra"),
    ],
)
async def test_payment_field_errors_422(merchant, body, field):
    r = await merchant.post("/v1/payments", body)
    assert_problem(r, 422, "validation_error")
    assert r.body["field"] == field
    assert field in r.body["detail"]


async def test_unsupported_currency_and_non_object(merchant):
    r = await merchant.post("/v1/accounts", {"currency": "JPY"})
    assert_problem(r, 422, "currency_not_supported")
    assert r.body["field"] == "currency"
    r = await merchant.post("/v1/payouts", [1, 2])
    assert_problem(r, 422, "validation_error")
    r = await merchant.post("/v1/payments/pay_x/refunds", {"amount": "1"})
    assert_problem(r, 422, "validation_error")
    assert r.body["field"] == "amount"


async def test_body_over_1mib_is_413(merchant):
    big = json.dumps({"amount": 1, "currency": "NGN", "description": "x" * (1024 * 1024)})
    assert_problem(await merchant.post("/v1/payments", raw=big), 413, "payload_too_large")
    # Exactly 1 MiB is allowed through to validation.
    pad = 1024 * 1024 - len(json.dumps({"currency": "NGN", "description": ""}))
    exact = json.dumps({"currency": "NGN", "description": "x" * pad})
    assert len(exact) == 1024 * 1024
    assert_problem(await merchant.post("/v1/payments", raw=exact), 422, "validation_error")


async def test_unknown_route_404_and_wrong_method_405(client, merchant):
    r = await client.get("/v2/nothing")
    assert r.status == 404 and r.headers["Content-Type"].startswith(PROBLEM)
    assert (await r.json())["code"] == "not_found"
    r = await merchant.call("DELETE", "/v1/payments")
    assert_problem(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    r = await merchant.call("PUT", "/v1/accounts")
    assert_problem(r, 405, "method_not_allowed")


async def test_idempotency_key_missing_and_invalid(merchant):
    await merchant.open_account()
    r = await merchant.call("POST", "/v1/payments", {"amount": 1, "currency": "NGN"})
    assert_problem(r, 400, "idempotency_key_missing")
    r = await merchant.call("POST", "/v1/payouts", {"amount": 1, "currency": "NGN"})
    assert_problem(r, 400, "idempotency_key_missing")
    r = await merchant.call("POST", "/v1/payments/pay_x/refunds", {"amount": 1})
    assert_problem(r, 400, "idempotency_key_missing")
    r = await merchant.pay(1, idem="has space")
    assert_problem(r, 400, "idempotency_key_invalid")


async def test_request_id_accepted_echoed_or_generated(client, merchant):
    r = await merchant.get("/v1/accounts", headers={"X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"
    r = await merchant.get("/v1/accounts", headers={"X-Request-Id": "bad id\twith junk"})
    assert r.headers["X-Request-Id"] != "bad id\twith junk" and len(r.headers["X-Request-Id"]) == 32
    r = await client.get("/nope")
    assert r.headers["X-Request-Id"]


async def test_logs_are_json_with_request_id_and_no_secrets(client, merchant, capsys):
    import logging

    from paycore_ledger import logs

    logs.setup("INFO")
    try:
        await merchant.open_account()
        await merchant.pay(918273, headers={"X-Request-Id": "trace-77"})
    finally:
        logging.getLogger().handlers.clear()
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(
        line.get("request_id") == "trace-77" and line.get("route") == "/v1/payments"
        for line in lines
    )
    assert merchant.key not in out
    assert "918273" not in out  # the body is not logged
