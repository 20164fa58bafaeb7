"""Amount limits per currency from its ISO 4217 exponent (issue 18): at most
10 billion major units, whatever the currency's minor unit."""

from __future__ import annotations

import pytest
from conftest import Api, make_settings
from paycore_ledger import currencies
from paycore_ledger.app import create_app
from test_api import assert_problem

LIMITS = {"JPY": 10**10, "NGN": 10**12, "KWD": 10**13}


def test_exponents_and_limits_follow_iso_4217():
    assert {c: currencies.exponent(c) for c in ("JPY", "KRW", "USD", "NGN", "KWD", "CLF")} == {
        "JPY": 0,
        "KRW": 0,
        "USD": 2,
        "NGN": 2,
        "KWD": 3,
        "CLF": 4,
    }
    for code, limit in LIMITS.items():
        assert currencies.max_amount(code) == limit
    assert currencies.MAX_AMOUNT_ANY_CURRENCY == 10**14


@pytest.fixture
async def api(database, aiohttp_client, merchant) -> Api:
    """The merchant, on an app that accepts JPY, NGN and KWD and reviews none
    of the amounts used here."""
    settings = make_settings(
        database.app_url,
        currencies=tuple(LIMITS),
        review_thresholds={c: 10**15 for c in LIMITS},
    )
    client = await aiohttp_client(create_app(settings))
    return Api(client, merchant.key, merchant.merchant_id)


@pytest.mark.parametrize("currency", list(LIMITS))
async def test_payments_and_payouts_up_to_the_currencys_limit(api, currency):
    limit = LIMITS[currency]
    account = await api.open_account(currency)
    for post in (api.pay, api.payout):
        r = await post(limit + 1, currency)
        assert_problem(r, 422, "validation_error")
        assert r.body["field"] == "amount"
        assert f"between 1 and {limit} {currency} minor units" in r.body["detail"]
    paid = await api.pay(limit, currency)
    assert paid.status == 201, paid.body
    assert paid.body["status"] == "succeeded"
    assert await api.balance(account) == limit
    # A full refund of the largest payment is accepted (refunds name no
    # currency: their bound is the payment, kept by the database).
    refunded = await api.refund(paid.body["id"], limit)
    assert refunded.status == 201, refunded.body
    assert await api.balance(account) == 0


async def test_a_refund_above_any_currencys_limit_is_422(api):
    await api.open_account("NGN")
    paid = (await api.pay(100, "NGN")).body
    r = await api.refund(paid["id"], currencies.MAX_AMOUNT_ANY_CURRENCY + 1)
    assert_problem(r, 422, "validation_error")
    assert r.body["field"] == "amount"
