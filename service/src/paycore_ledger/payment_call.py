"""POST /v1/payments in one database round trip.

The hot path of the API. Instead of BEGIN, check the key, claim the
Idempotency-Key, look up the account, post, store the answer and COMMIT, one
call of `ledger_pay` (sql/0006) does the same steps in one statement, hence one
implicit transaction, with the same locks, constraints and idempotency
semantics as auth.authenticate + idempotency.run + ledger.post. The answer is
rendered by PostgreSQL, stored and returned as text, so a replay is
byte-for-byte the original.
"""

from __future__ import annotations

import enum
import functools
import json
from typing import Any

import asyncpg

from . import idempotency, ledger
from .auth import hash_key, unauthorized
from .ids import new_id
from .logs import merchant_id_var


class PayOutcome(enum.StrEnum):
    """What `ledger_pay` did (its `outcome` column, sql/0006)."""

    UNAUTHORIZED = "unauthorized"  # no such API key, or revoked: nothing else ran
    CREATED = "created"  # a new answer, stored with the key
    REPLAYED = "replayed"  # the answer stored under the key
    REUSED = "reused"  # the key holds another request
    IN_USE = "in_use"  # the first request with the key is still running
    VANISHED = "vanished"  # the key was purged between claim and read: retry


_CALL = "SELECT * FROM ledger_pay($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"


@functools.cache
def _no_account_text(currency: str) -> str:
    """The stored 422 answer when the merchant has no account in `currency`."""
    return json.dumps(ledger.no_account(currency).to_dict())


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
    metadata_json = json.dumps(metadata) if metadata else "{}"
    for attempt in range(1, idempotency.MAX_ATTEMPTS + 1):
        payment_id = new_id("pay")
        try:
            merchant_id, outcome, status, text = await conn.fetchrow(
                _CALL,
                hash_key(token),
                key,
                fp,
                method,
                path,
                payment_id,
                amount,
                currency,
                description,
                metadata_json,
                review,
                ledger.pick_system_account(currency),
                _no_account_text(currency),
            )
        except idempotency.RETRYABLE:
            if attempt == idempotency.MAX_ATTEMPTS:
                raise
            continue
        merchant_id_var.set(merchant_id)
        match PayOutcome(outcome):
            case PayOutcome.CREATED:
                return _created(status, text, payment_id, currency, amount, review)
            case PayOutcome.REPLAYED:
                return idempotency.replayed(status, text)
            case PayOutcome.UNAUTHORIZED:
                raise unauthorized()
            case PayOutcome.REUSED:
                raise idempotency.reused()
            case PayOutcome.IN_USE:
                raise idempotency.in_use()
            case PayOutcome.VANISHED:
                continue
    raise idempotency.in_use()


def _created(
    status: int, text: str, payment_id: str, currency: str, amount: int, review: bool
) -> idempotency.Answer:
    # The body is already rendered (text); the outcome carries only what the
    # metrics and the log line need, so nothing is parsed again.
    if status == 201:
        state = "requires_review" if review else "succeeded"
        movement = ledger.Movement("payment", currency, state, amount)
        outcome = ledger.Outcome(status, {"object": "payment", "id": payment_id}, movement)
    else:
        outcome = ledger.Outcome(status, {"code": "account_not_found"})
    return idempotency.Answer(status, text, False, outcome)
