"""/v1/payouts: money leaving a merchant account."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .. import ledger, validation
from ..app_keys import SETTINGS_KEY
from ..problems import Problem
from .common import authenticated, idempotent_post, json_response, path_id


@authenticated
async def create_payout(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    key = validation.idempotency_key(request)
    body = await validation.read_json(request)
    validation.reject_unknown(body, {"amount", "currency"})
    amount = validation.amount(body)
    currency = validation.currency(body, request.app[SETTINGS_KEY].currencies)

    async def action(tx: asyncpg.Connection) -> ledger.Outcome:
        return await ledger.create_payout(
            tx, merchant_id=merchant_id, amount=amount, currency=currency
        )

    return await idempotent_post(request, conn, merchant_id, key, body, action)


@authenticated
async def get_payout(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    row = await conn.fetchrow(
        "SELECT * FROM payouts WHERE id = $1 AND merchant_id = $2",
        path_id(request, "po", "payout"),
        merchant_id,
    )
    if row is None:
        raise Problem(404, "not_found", "no such payout")
    return json_response(200, ledger.payout_view(row))
