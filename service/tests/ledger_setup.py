"""Merchants, accounts and payment requests made directly, without the HTTP
API: for the plan tests (test_posting_plans.py), the tests that set up the
database themselves (test_migrations_under_load.py, test_openapi.py) and the
database's benchmark (bench/batch_cost.py)."""

from __future__ import annotations

import uuid

import asyncpg
from paycore_ledger import merchants, payment_call
from paycore_ledger.ids import new_id


async def new_merchant_account(conn: asyncpg.Connection, name: str) -> tuple[dict, str]:
    """A new merchant with an NGN account, opened directly in the database:
    merchants.create's answer (merchant_id, api_key) and the account's id."""
    created = await merchants.create(conn, name)
    account = await conn.fetchval(
        "INSERT INTO accounts (id, kind, merchant_id, currency)"
        " VALUES ($1, 'merchant', $2, 'NGN') RETURNING id",
        new_id("acct"),
        created["merchant_id"],
    )
    return created, account


async def merchant_with_account(conn: asyncpg.Connection, name: str) -> str:
    """A new merchant with an NGN account; returns its API key."""
    created, _ = await new_merchant_account(conn, name)
    return created["api_key"]


def new_payment(api_key: str, amount: int = 100) -> payment_call.PaymentRequest:
    """A POST /v1/payments in NGN with a fresh Idempotency-Key, ready for payment_call."""
    return payment_call.payment_request(
        token=api_key,
        key=uuid.uuid4().hex,
        method="POST",
        path="/v1/payments",
        body={"amount": amount, "currency": "NGN"},
        amount=amount,
        currency="NGN",
        description=None,
        metadata={},
        review_threshold=10**12,
    )
