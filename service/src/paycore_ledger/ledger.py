"""Double-entry postings and the money-moving operations built on them.

Every operation runs inside a database transaction opened by the caller.
Lock order is fixed: payment row, then the merchant account, then one system
account shard. Each posting inserts the merchant entry first, and the
entries trigger locks accounts in insertion order, so two operations can
never wait on each other in a cycle.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from .ids import new_id
from .problems import Problem

# Money enters and leaves through per-currency system accounts. Spreading each
# currency over several rows keeps them from becoming one hot row that would
# serialize every posting in that currency.
SYSTEM_SHARDS = 64


class Refusal(Problem):
    """A business refusal (422): stored and replayed like a success."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(422, code, detail)


@dataclass(frozen=True)
class Movement:
    """What a new payment, refund or payout is: plain data for the HTTP layer's
    metrics, which it records only after the transaction commits."""

    kind: str  # payment, refund, payout
    currency: str
    status: str  # succeeded, requires_review
    amount: int


@dataclass(frozen=True)
class Outcome:
    """The final answer of a money-moving request: the object created (with its
    movement) or a business refusal (its problem body, no movement)."""

    status: int
    body: dict[str, Any]
    movement: Movement | None = None


def system_account_id(currency: str, shard: int) -> str:
    return f"acct_sys_{currency.lower()}_{shard:02d}"


def pick_system_account(currency: str) -> str:
    # Spreading load, not a secret: the fast PRNG (no system call).
    return system_account_id(currency, random.randrange(SYSTEM_SHARDS))  # noqa: S311


async def ensure_system_accounts(conn: asyncpg.Connection, currency: str) -> int:
    """Create the currency's missing shards (0 .. SYSTEM_SHARDS-1); returns how many."""
    status = await conn.execute(
        """
        INSERT INTO accounts (id, kind, currency, shard)
        SELECT 'acct_sys_' || lower($1) || '_' || lpad(g::text, greatest(2, length(g::text)), '0'),
               'system', $1, g
          FROM generate_series(0, $2 - 1) AS g
        ON CONFLICT DO NOTHING
        """,
        currency,
        SYSTEM_SHARDS,
    )
    return int(status.split()[-1])


async def post(
    conn: asyncpg.Connection,
    *,
    kind: str,
    source_id: str,
    currency: str,
    merchant_account: str,
    merchant_direction: str,
    amount: int,
    then: str = "SELECT t.id FROM t",
    args: tuple = (),
) -> asyncpg.Record:
    """One balanced transaction between a merchant account and a system shard.

    `then` is the rest of the same statement (it may reference the new journal
    transaction as `t`, and its parameters start at $9): recording the
    payment/refund/payout in the same round trip keeps the account row locks
    taken by the entries trigger as short as possible.
    """
    other = "debit" if merchant_direction == "credit" else "credit"
    return await conn.fetchrow(
        """
        WITH t AS (
            INSERT INTO journal_transactions (kind, source_id, currency)
            VALUES ($1, $2, $3) RETURNING id
        ), posted AS (
            INSERT INTO entries (transaction_id, account_id, direction, amount)
            SELECT t.id, v.account_id, v.direction, $4
              FROM t, (VALUES (1, $5, $6), (2, $7, $8)) AS v (ord, account_id, direction)
             ORDER BY v.ord
            RETURNING 1
        )
        """  # noqa: S608 - `then` is always a constant from this module, never input
        + then,
        kind,
        source_id,
        currency,
        amount,
        merchant_account,
        merchant_direction,
        pick_system_account(currency),
        other,
        *args,
    )


@contextlib.asynccontextmanager
async def debit_guard(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Savepoint around a debit; 422 insufficient_funds if it would go below zero.

    The balance check is the database's CHECK constraint evaluated under the
    row lock, so concurrent debits cannot get around it. The savepoint lets the
    refusal be recorded (idempotency) in the same transaction.
    """
    try:
        async with conn.transaction():
            yield
    except asyncpg.CheckViolationError as exc:
        if exc.constraint_name != "accounts_balance_nonnegative":
            raise
        raise Refusal(
            "insufficient_funds", "the account balance is too low for this amount"
        ) from None


def _iso(value: datetime) -> str:
    # Always with microseconds, exactly as sql/0002's ledger_payment_json.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def payment_view(row: asyncpg.Record) -> dict[str, Any]:
    metadata = row["metadata"]
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return {
        "id": row["id"],
        "object": "payment",
        "account_id": row["account_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "amount_refunded": row["amount_refunded"],
        "description": row["description"],
        "metadata": metadata,
        "created_at": _iso(row["created_at"]),
    }


def account_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "account",
        "currency": row["currency"],
        "balance": row["balance"],
        "created_at": _iso(row["created_at"]),
    }


def refund_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "refund",
        "payment_id": row["payment_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "created_at": _iso(row["created_at"]),
    }


def payout_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "payout",
        "account_id": row["account_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "created_at": _iso(row["created_at"]),
    }


async def merchant_account(conn: asyncpg.Connection, merchant_id: str, currency: str) -> str:
    account_id = await conn.fetchval(
        "SELECT id FROM accounts WHERE merchant_id = $1 AND currency = $2", merchant_id, currency
    )
    if account_id is None:
        raise no_account(currency)
    return account_id


def no_account(currency: str) -> Refusal:
    return Refusal("account_not_found", f"the merchant has no {currency} account; open one first")


async def create_refund(
    conn: asyncpg.Connection, *, merchant_id: str, payment_id: str, amount: int
) -> Outcome:
    payment = await conn.fetchrow(
        "SELECT * FROM payments WHERE id = $1 AND merchant_id = $2 FOR UPDATE",
        payment_id,
        merchant_id,
    )
    if payment is None:
        raise Problem(404, "not_found", "no such payment")
    if payment["status"] != "succeeded":
        raise Refusal(
            "payment_not_refundable", f"a payment in status {payment['status']} cannot be refunded"
        )
    if amount > payment["amount"] - payment["amount_refunded"]:
        raise Refusal(
            "refund_exceeds_payment",
            "the refund would exceed the unrefunded amount of the payment",
        )
    refund_id = new_id("re")
    async with debit_guard(conn):
        await conn.execute(
            "UPDATE payments SET amount_refunded = amount_refunded + $2, updated_at = now()"
            " WHERE id = $1",
            payment_id,
            amount,
        )
        row = await post(
            conn,
            kind="refund",
            source_id=refund_id,
            currency=payment["currency"],
            merchant_account=payment["account_id"],
            merchant_direction="debit",
            amount=amount,
            then="""
            INSERT INTO refunds (id, merchant_id, payment_id, amount, currency, status,
                                 transaction_id)
            SELECT $2, $9, $10, $4, $3, 'succeeded', t.id FROM t
            RETURNING *
            """,
            args=(merchant_id, payment_id),
        )
    return Outcome(201, refund_view(row), Movement("refund", row["currency"], "succeeded", amount))


async def create_payout(
    conn: asyncpg.Connection, *, merchant_id: str, amount: int, currency: str
) -> Outcome:
    account_id = await merchant_account(conn, merchant_id, currency)
    payout_id = new_id("po")
    async with debit_guard(conn):
        row = await post(
            conn,
            kind="payout",
            source_id=payout_id,
            currency=currency,
            merchant_account=account_id,
            merchant_direction="debit",
            amount=amount,
            then="""
            INSERT INTO payouts (id, merchant_id, account_id, amount, currency, status,
                                 transaction_id)
            SELECT $2, $9, $5, $4, $3, 'succeeded', t.id FROM t
            RETURNING *
            """,
            args=(merchant_id,),
        )
    return Outcome(201, payout_view(row), Movement("payout", currency, "succeeded", amount))


class ReviewError(Exception):
    pass


async def decide_payment(conn: asyncpg.Connection, payment_id: str, approve: bool) -> dict:
    """Operator decision on a payment in requires_review (CLI only)."""
    async with conn.transaction():
        payment = await conn.fetchrow("SELECT * FROM payments WHERE id = $1 FOR UPDATE", payment_id)
        if payment is None:
            raise ReviewError(f"no payment {payment_id}")
        if payment["status"] != "requires_review":
            raise ReviewError(f"payment {payment_id} is {payment['status']}, not requires_review")
        if approve:
            row = await post(
                conn,
                kind="payment",
                source_id=payment_id,
                currency=payment["currency"],
                merchant_account=payment["account_id"],
                merchant_direction="credit",
                amount=payment["amount"],
                then="""
                UPDATE payments SET status = 'succeeded', transaction_id = t.id,
                       updated_at = now()
                  FROM t WHERE payments.id = $2
                RETURNING payments.*
                """,
            )
        else:
            row = await conn.fetchrow(
                "UPDATE payments SET status = 'rejected', updated_at = now()"
                " WHERE id = $1 RETURNING *",
                payment_id,
            )
    return payment_view(row)
