"""/v1/accounts: open, list, read (with balance) and list entries."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .. import validation
from ..app_keys import PUBLIC_IDS_KEY, SETTINGS_KEY
from ..ids import new_id
from ..ledger import _iso, account_view, ensure_system_accounts
from ..problems import Problem, field_error
from .common import authenticated, json_response, path_id


def not_found() -> Problem:
    return Problem(404, "not_found", "no such account")


@authenticated
async def create_account(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    body = await validation.read_json(request)
    validation.reject_unknown(body, {"currency"})
    currency = validation.currency(body, request.app[SETTINGS_KEY].currencies)
    async with conn.transaction():
        await ensure_system_accounts(conn, currency)
        row = await conn.fetchrow(
            """
            INSERT INTO accounts (id, kind, merchant_id, currency)
            VALUES ($1, 'merchant', $2, $3)
            ON CONFLICT (merchant_id, currency) DO NOTHING
            RETURNING id, currency, balance, created_at
            """,
            new_id("acct"),
            merchant_id,
            currency,
        )
    if row is None:
        raise Problem(409, "account_exists", f"the merchant already has a {currency} account")
    return json_response(201, account_view(row))


@authenticated
async def list_accounts(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    rows = await conn.fetch(
        "SELECT id, currency, balance, created_at FROM accounts"
        " WHERE merchant_id = $1 ORDER BY created_at, id",
        merchant_id,
    )
    return json_response(200, {"data": [account_view(r) for r in rows]})


@authenticated
async def get_account(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    row = await conn.fetchrow(
        "SELECT id, currency, balance, created_at FROM accounts WHERE id = $1 AND merchant_id = $2",
        path_id(request, "acct", "account"),
        merchant_id,
    )
    if row is None:
        raise not_found()
    return json_response(200, account_view(row))


@authenticated
async def list_entries(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    account_id = path_id(request, "acct", "account")
    limit = validation.limit(request)
    account = await conn.fetchrow(
        "SELECT currency FROM accounts WHERE id = $1 AND merchant_id = $2",
        account_id,
        merchant_id,
    )
    if account is None:
        raise not_found()
    public_ids = await request.app[PUBLIC_IDS_KEY].load(conn)
    cursor = None
    if "starting_after" in request.query:
        cursor = public_ids.decode("ent", request.query["starting_after"])
        if cursor is None or not await conn.fetchval(
            "SELECT true FROM entries WHERE id = $1 AND account_id = $2", cursor, account_id
        ):
            raise field_error("starting_after", "is not an entry of this account")
    rows = await conn.fetch(
        """
        SELECT e.id, e.transaction_id, e.direction, e.amount, e.created_at, t.kind, t.source_id
          FROM entries e JOIN journal_transactions t ON t.id = e.transaction_id
         WHERE e.account_id = $1 AND ($2::bigint IS NULL OR e.id < $2)
         ORDER BY e.id DESC
         LIMIT $3
        """,
        account_id,
        cursor,
        limit + 1,
    )
    data = [
        {
            "id": public_ids.encode("ent", r["id"]),
            "object": "entry",
            "account_id": account_id,
            "transaction_id": public_ids.encode("txn", r["transaction_id"]),
            "direction": r["direction"],
            "amount": r["amount"],
            "currency": account["currency"],
            "kind": r["kind"],
            "source_id": r["source_id"],
            "created_at": _iso(r["created_at"]),
        }
        for r in rows[:limit]
    ]
    return json_response(200, {"data": data, "has_more": len(rows) > limit})
