"""Refunds and payouts as items of `ledger_debit_batch` (sql/0008), the group
commit of the refund and payout path (batching.py).

Without batching, or for an item the batch sends back (its key is held by a
request still running elsewhere, or vanished), the request runs alone on the
general path: authenticate, then idempotency.run around ledger.create_refund
or ledger.create_payout, exactly as before.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from typing import Any

import asyncpg

from . import idempotency, ledger
from .auth import authenticate, hash_key
from .ids import new_id
from .logs import merchant_id_var
from .payment_call import PayOutcome, not_created
from .problems import Problem

_BATCH_CALL = (
    "SELECT idx, merchant_id, outcome, status_code, response_body, currency"
    " FROM ledger_debit_batch($1::bytea[], $2::text[], $3::bytea[], $4, $5::text[],"
    " $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::int[],"
    " $12::text[], $13::jsonb)"
)
_PREFIX = {"refund": "re", "payout": "po"}


@dataclass(frozen=True, slots=True)
class DebitRequest:
    """A validated refund (payment_id) or payout (currency)."""

    token: str  # the bearer API key; the batch statement checks its hash
    key: str
    fingerprint: bytes
    method: str
    path: str
    body: dict[str, Any]
    kind: str  # refund, payout
    amount: int
    payment_id: str | None = None
    currency: str | None = None


def debit_request(
    method: str,
    path: str,
    *,
    token: str,
    key: str,
    body: dict[str, Any],
    kind: str,
    amount: int,
    payment_id: str | None = None,
    currency: str | None = None,
) -> DebitRequest:
    fp = idempotency.fingerprint(method, path, body)
    return DebitRequest(token, key, fp, method, path, body, kind, amount, payment_id, currency)


# One item's result: (object_id, merchant_id, outcome, status, text, currency).
Result = tuple[str, str | None, str, int | None, str | None, str | None]


@functools.cache
def _refusals() -> str:
    """The stored 422 answers a refund or payout can get, by code (as ledger.py renders them)."""
    texts = {
        "insufficient_funds": ledger.insufficient_funds(),
        "refund_exceeds_payment": ledger.refund_exceeds_payment(),
        **{f"payment_not_refundable:{s}": ledger.not_refundable(s) for s in ledger.UNREFUNDABLE},
    }
    return json.dumps({code: json.dumps(r.to_dict()) for code, r in texts.items()})


async def call_batch(conn: asyncpg.Connection, reqs: list[DebitRequest]) -> list[Result]:
    """One ledger_debit_batch call: one round trip, one transaction."""
    ids = [new_id(_PREFIX[r.kind]) for r in reqs]
    rows = await conn.fetch(
        _BATCH_CALL,
        [hash_key(r.token) for r in reqs],
        [r.key for r in reqs],
        [r.fingerprint for r in reqs],
        reqs[0].method,  # POST, the only method that moves money
        [r.path for r in reqs],
        [r.kind for r in reqs],
        ids,
        [r.payment_id for r in reqs],
        [r.amount for r in reqs],
        [r.currency for r in reqs],
        # One shard for the whole batch (per currency): one system row to lock
        # and update; spreading load, not a secret: the fast PRNG.
        [random.randrange(ledger.SYSTEM_SHARDS)] * len(reqs),  # noqa: S311
        [None if r.currency is None else _no_account_text(r.currency) for r in reqs],
        _refusals(),
    )
    results: list[Result] = [None] * len(reqs)  # type: ignore[list-item]
    for idx, merchant_id, outcome, status, text, currency in rows:
        results[idx - 1] = (ids[idx - 1], merchant_id, outcome, status, text, currency)
    return results


@functools.cache
def _no_account_text(currency: str) -> str:
    return json.dumps(ledger.no_account(currency).to_dict())


def answer_for(req: DebitRequest, result: Result) -> idempotency.Answer | None:
    """The answer to send, or None if the request must run alone (busy, vanished)."""
    object_id, merchant_id, outcome, status, text, currency = result
    merchant_id_var.set(merchant_id)
    if outcome == "not_found":
        raise Problem(404, "not_found", "no such payment")
    if outcome != PayOutcome.CREATED:
        return not_created(PayOutcome(outcome), status, text)
    if status == 201:
        movement = ledger.Movement(req.kind, currency, "succeeded", req.amount)
        body = {"object": req.kind, "id": object_id}
        return idempotency.Answer(201, text, False, ledger.Outcome(201, body, movement))
    code = json.loads(text)["code"]  # a stored refusal
    return idempotency.Answer(status, text, False, ledger.Outcome(status, {"code": code}))


async def run_alone(conn: asyncpg.Connection, req: DebitRequest) -> idempotency.Answer:
    """The general path, one request and one transaction of its own."""
    merchant_id = await authenticate(conn, req.token)
    merchant_id_var.set(merchant_id)

    async def action(tx: asyncpg.Connection) -> ledger.Outcome:
        if req.kind == "refund":
            return await ledger.create_refund(
                tx, merchant_id=merchant_id, payment_id=req.payment_id, amount=req.amount
            )
        return await ledger.create_payout(
            tx, merchant_id=merchant_id, amount=req.amount, currency=req.currency
        )

    return await idempotency.run(
        conn,
        merchant_id=merchant_id,
        key=req.key,
        method=req.method,
        path=req.path,
        body=req.body,
        action=action,
    )
