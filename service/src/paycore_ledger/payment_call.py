"""POST /v1/payments in one database round trip (batching.py: many at once).

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
from dataclasses import dataclass
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
    BUSY = "busy"  # (ledger_pay_batch) another transaction holds the key: send alone


_CALL = "SELECT * FROM ledger_pay($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"


@functools.cache
def no_account_text(currency: str) -> str:
    """The stored 422 answer when the merchant has no account in `currency`."""
    return json.dumps(ledger.no_account(currency).to_dict())


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """A validated POST /v1/payments, ready for ledger_pay or ledger_pay_batch."""

    key_hash: bytes  # of the bearer API key: the statement resolves the merchant
    key: str  # Idempotency-Key
    fingerprint: bytes
    method: str
    path: str
    amount: int
    currency: str
    description: str | None
    metadata_json: str
    review: bool


def payment_request(
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
) -> PaymentRequest:
    return PaymentRequest(
        hash_key(token),
        key,
        idempotency.fingerprint(method, path, body),
        method,
        path,
        amount,
        currency,
        description,
        json.dumps(metadata) if metadata else "{}",
        amount > review_threshold,
    )


# One item's result: (payment_id, merchant_id, outcome, status_code, response_body).
Result = tuple[str, str | None, str, int | None, str | None]


def call_args(req: PaymentRequest, payment_id: str, system_account: str | None = None) -> tuple:
    """The 13 arguments of ledger_pay (one element each of ledger_pay_batch's arrays)."""
    return (
        req.key_hash,
        req.key,
        req.fingerprint,
        req.method,
        req.path,
        payment_id,
        req.amount,
        req.currency,
        req.description,
        req.metadata_json,
        req.review,
        system_account or ledger.pick_system_account(req.currency),
        no_account_text(req.currency),
    )


async def call_one(conn: asyncpg.Connection, req: PaymentRequest) -> Result:
    """One ledger_pay call: one round trip, one implicit transaction."""
    payment_id = new_id("pay")
    row = await conn.fetchrow(_CALL, *call_args(req, payment_id))
    return (payment_id, *row)


_BATCH_CALL = (
    "SELECT idx, merchant_id, outcome, status_code, response_body FROM ledger_pay_batch("
    "$1::bytea[], $2::text[], $3::bytea[], $4, $5, $6::text[], $7::bigint[], $8::text[],"
    " $9::text[], $10::jsonb[], $11::boolean[], $12::text[], $13::text[])"
)


async def call(conn: asyncpg.Connection, reqs: list[PaymentRequest]) -> list[Result]:
    """One call for all of `reqs`: ledger_pay for one, ledger_pay_batch for more."""
    if len(reqs) == 1:
        return [await call_one(conn, reqs[0])]
    payment_ids = [new_id("pay") for _ in reqs]
    # One shard per currency for the whole batch: one system row to lock and
    # update instead of one per payment (other batches pick theirs at random).
    shards = {c: ledger.pick_system_account(c) for c in {r.currency for r in reqs}}
    items = [call_args(r, p, shards[r.currency]) for r, p in zip(reqs, payment_ids, strict=True)]
    columns = [list(column) for column in zip(*items, strict=True)]
    # Method and path are the same for every item: POST /v1/payments.
    rows = await conn.fetch(_BATCH_CALL, *columns[:3], reqs[0].method, reqs[0].path, *columns[5:])
    results: list[Result] = [None] * len(reqs)  # type: ignore[list-item]
    for idx, merchant_id, outcome, status, text in rows:
        results[idx - 1] = (payment_ids[idx - 1], merchant_id, outcome, status, text)
    return results


async def create_payment(conn: asyncpg.Connection, req: PaymentRequest) -> idempotency.Answer:
    """The answer for the merchant owning the request's API key (401 if none),
    from ledger_pay calls on `conn` alone."""
    for attempt in range(1, idempotency.MAX_ATTEMPTS + 1):
        try:
            result = await call_one(conn, req)
        except idempotency.RETRYABLE:
            if attempt == idempotency.MAX_ATTEMPTS:
                raise
            continue
        answer = answer_for(req, result)
        if answer is not None:
            return answer
    raise idempotency.in_use()


def answer_for(req: PaymentRequest, result: Result) -> idempotency.Answer | None:
    """The answer to send, or None if the request must be sent (again) on its own:
    its key vanished meanwhile, or (batch only) another request still holds it."""
    payment_id, merchant_id, outcome, status, text = result
    merchant_id_var.set(merchant_id)
    if outcome == PayOutcome.CREATED:
        return _created(status, text, payment_id, req.currency, req.amount, req.review)
    return not_created(PayOutcome(outcome), status, text)


def not_created(
    outcome: PayOutcome, status: int | None, text: str | None
) -> idempotency.Answer | None:
    """The answer for a batch or ledger_pay outcome that created nothing; None:
    the request must run (again) on its own."""
    match outcome:
        case PayOutcome.REPLAYED:
            return idempotency.replayed(status, text)
        case PayOutcome.UNAUTHORIZED:
            raise unauthorized()
        case PayOutcome.REUSED:
            raise idempotency.reused()
        case PayOutcome.IN_USE:
            raise idempotency.in_use()
    return None  # vanished, busy


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
