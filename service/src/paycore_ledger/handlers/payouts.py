"""/v1/payouts: money leaving a merchant account."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from .. import ledger, validation
from ..app_keys import DEBIT_BATCHER_KEY, SETTINGS_KEY
from ..problems import Problem
from .common import authenticated, batched_debit, idempotent_post, json_response, path_id


async def create_payout(request: web.Request) -> web.Response:
    if DEBIT_BATCHER_KEY in request.app:
        return await batched_debit(request, "payout", _payout_fields)
    return await _create_payout_alone(request)


@authenticated
async def _create_payout_alone(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    fields = await _payout_fields(request)

    async def action(tx: asyncpg.Connection) -> ledger.Outcome:
        return await ledger.create_payout(
            tx, merchant_id=merchant_id, amount=fields["amount"], currency=fields["currency"]
        )

    return await idempotent_post(request, conn, merchant_id, fields["key"], fields["body"], action)


async def _payout_fields(request: web.Request) -> dict[str, Any]:
    key = validation.idempotency_key(request)
    body = await validation.read_json(request)
    validation.reject_unknown(body, {"amount", "currency"})
    currency = validation.currency(body, request.app[SETTINGS_KEY].currencies)
    amount = validation.amount(body, currency)
    return {"key": key, "body": body, "amount": amount, "currency": currency}


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
