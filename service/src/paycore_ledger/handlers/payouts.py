"""/v1/payouts: money leaving a merchant account."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .. import debit_call, ledger, validation
from ..app_keys import DEBIT_BATCHER_KEY, SETTINGS_KEY
from ..auth import bearer_token
from ..problems import Problem
from .common import (
    authenticated,
    idempotent_post,
    json_response,
    path_id,
    refusals_after_authentication,
    respond,
)


async def create_payout(request: web.Request) -> web.Response:
    batcher = request.app.get(DEBIT_BATCHER_KEY)
    if batcher is None:
        return await _create_payout_alone(request)
    token = bearer_token(request)
    async with refusals_after_authentication(request, token):
        key, body, amount, currency = await _payout_fields(request)
    req = debit_call.debit_request(
        request.method,
        request.path,
        token=token,
        key=key,
        body=body,
        kind="payout",
        amount=amount,
        currency=currency,
    )
    return respond(await batcher.answer(req))


@authenticated
async def _create_payout_alone(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    key, body, amount, currency = await _payout_fields(request)

    async def action(tx: asyncpg.Connection) -> ledger.Outcome:
        return await ledger.create_payout(
            tx, merchant_id=merchant_id, amount=amount, currency=currency
        )

    return await idempotent_post(request, conn, merchant_id, key, body, action)


async def _payout_fields(request: web.Request) -> tuple[str, dict, int, str]:
    key = validation.idempotency_key(request)
    body = await validation.read_json(request)
    validation.reject_unknown(body, {"amount", "currency"})
    amount = validation.amount(body)
    currency = validation.currency(body, request.app[SETTINGS_KEY].currencies)
    return key, body, amount, currency


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
