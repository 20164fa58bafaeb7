"""POST /v1/payments in one database round trip.

The hot path of the API. Instead of BEGIN, claim the key, look up the account,
post, store the answer and COMMIT (seven round trips with authentication),
one call of `ledger_create_payment_with_key` (sql/0002, sql/0003) does the
same steps in one statement, hence one implicit transaction, with the same
locks, constraints and idempotency semantics as auth.authenticate +
idempotency.run + ledger.post. The answer is
rendered by PostgreSQL, stored and returned as text, so a replay is
byte-for-byte the original.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from . import idempotency, ledger
from .auth import hash_key, unauthorized
from .ids import new_id
from .logs import merchant_id_var

_CALL = (
    "SELECT * FROM ledger_create_payment_with_key"
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
)


async def create_payment(
    conn: asyncpg.Connection,
    *,
    token: str,
    key: str,
    method: str,
    path: str,
    body: dict[str, Any],
    amount: int,
    currency: str,
    description: str | None,
    metadata: dict[str, str],
    review_threshold: int,
) -> idempotency.Answer:
    """The answer for the merchant owning the API key `token` (401 if none)."""
    fp = idempotency.fingerprint(method, path, body)
    review = amount > review_threshold
    no_account = json.dumps(ledger.no_account(currency).to_dict())
    for attempt in range(1, idempotency.MAX_ATTEMPTS + 1):
        try:
            row = await conn.fetchrow(
                _CALL,
                hash_key(token),
                key,
                fp,
                method,
                path,
                new_id("pay"),
                amount,
                currency,
                description,
                json.dumps(metadata),
                review,
                ledger.pick_system_account(currency),
                no_account,
            )
        except idempotency.RETRYABLE:
            if attempt == idempotency.MAX_ATTEMPTS:
                raise
            continue
        merchant_id, outcome, status, text = row
        merchant_id_var.set(merchant_id)
        if outcome == "unauthorized":
            raise unauthorized()
        if outcome == "created":
            return _created(status, text, currency, amount, review)
        if outcome == "replayed":
            return idempotency.replayed(status, text)
        if outcome == "reused":
            raise idempotency.reused()
        if outcome == "in_use":
            raise idempotency.in_use()
        # "vanished": the key was purged between our claim and our read; retry.
    raise idempotency.in_use()


def _created(
    status: int, text: str, currency: str, amount: int, review: bool
) -> idempotency.Answer:
    answer = json.loads(text)
    if status == 201:
        state = "requires_review" if review else "succeeded"
        effects = [ledger.count("payment", currency, state, amount)]
    else:
        effects = [idempotency.refused(answer["code"])]
    return idempotency.Answer(status, text, False, ledger.Outcome(status, answer, effects))
