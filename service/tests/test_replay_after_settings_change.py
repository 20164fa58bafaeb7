"""A replay never fails for a later change of the settings (issue 18): the
currency is judged after the Idempotency-Key, so a payment or payout taken
while its currency was accepted still replays once the currency is dropped."""

from __future__ import annotations

import uuid

import pytest
from conftest import Api, make_settings
from paycore_ledger.app import create_app
from test_api import assert_problem

BATCHING = {
    "batched": {"post_batch_max": 64, "post_batch_window_us": 200},
    "unbatched": {"post_batch_max": 1, "post_batch_window_us": 0},
}


@pytest.fixture(params=list(BATCHING))
def batching(request) -> dict:
    return BATCHING[request.param]


@pytest.fixture
def app_with(database, aiohttp_client, batching):
    async def make(merchant: Api, currencies: tuple[str, ...]) -> Api:
        settings = make_settings(database.app_url, currencies=currencies, **batching)
        client = await aiohttp_client(create_app(settings))
        return Api(client, merchant.key, merchant.merchant_id)

    return make


async def test_payments_and_payouts_replay_after_their_currency_is_dropped(merchant, app_with):
    before = await app_with(merchant, ("NGN", "USD"))
    await before.open_account("USD")
    paid = await before.pay(1000, "USD", idem="pay-usd")
    paid_out = await before.payout(300, "USD", idem="payout-usd")
    no_account = await before.pay(5, "NGN", idem="pay-ngn-no-account")  # a stored 422
    assert (paid.status, paid_out.status, no_account.status) == (201, 201, 422)

    after = await app_with(merchant, ("NGN",))
    for again, first, amount, idem in (
        (after.pay, paid, 1000, "pay-usd"),
        (after.payout, paid_out, 300, "payout-usd"),
    ):
        r = await again(amount, "USD", idem=idem)
        assert r.status == 201, r.body
        assert r.body == first.body
        assert r.headers["Idempotent-Replayed"] == "true"
    r = await after.pay(5, "NGN", idem="pay-ngn-no-account")
    assert (r.status, r.body) == (422, no_account.body)
    assert r.headers["Idempotent-Replayed"] == "true"

    # Nothing moved again: one payment, one payout.
    accounts = (await after.get("/v1/accounts")).body["data"]
    assert [a["balance"] for a in accounts] == [700]


async def test_an_unsupported_currency_is_still_refused_and_not_stored(merchant, app_with):
    before = await app_with(merchant, ("NGN", "USD"))
    await before.open_account("USD")
    await before.pay(1000, "USD", idem="first")
    after = await app_with(merchant, ("NGN",))

    # A new key: refused, and the refusal is not stored under the key.
    for refused, accepted in ((after.pay, before.pay), (after.payout, before.payout)):
        key = uuid.uuid4().hex
        r = await refused(10, "USD", idem=key)
        assert_problem(r, 422, "currency_not_supported")
        assert r.body["field"] == "currency"
        assert "Idempotent-Replayed" not in r.headers
        ok = await accepted(10, "USD", idem=key)
        assert ok.status == 201, ok.body  # the key was still free

    # The same key with another request: reused, as for any key.
    r = await after.pay(999, "USD", idem="first")
    assert_problem(r, 422, "idempotency_key_reused")
    # A wrong API key is 401 before anything else.
    wrong = Api(after.client, "pck_" + "q" * 40, merchant.merchant_id)
    assert_problem(await wrong.pay(10, "USD", idem="first"), 401, "unauthorized")
    # Still malformed is still malformed: only the settings are judged late.
    assert_problem(await after.pay(10, "usd"), 422, "validation_error")


async def test_the_refusal_waits_for_a_request_still_holding_its_key(
    merchant, app_with, owner_conn
):
    """While another transaction holds the key uncommitted, the request waits
    for it like any duplicate (here: 409 after the lock timeout)."""
    after = await app_with(merchant, ("NGN",))
    async with owner_conn.transaction():
        await owner_conn.execute(
            "INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path)"
            " VALUES ($1, 'held', '\\x00', 'POST', '/v1/payments')",
            merchant.merchant_id,
        )
        r = await after.pay(10, "USD", idem="held")
        assert_problem(r, 409, "idempotency_key_in_use")
