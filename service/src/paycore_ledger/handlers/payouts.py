"""/v1/payouts: money leaving a merchant account."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from .. import ledger, listing, validation
from ..app_keys import DEBIT_BATCHER_KEY, SETTINGS_KEY
from ..problems import Problem
from .common import (
    REFUSAL_AFTER_REPLAY,
    authenticated,
    batched_debit,
    idempotent_post,
    json_response,
    path_id,
    refuse_unless_replayed,
)


async def create_payout(request: web.Request) -> web.Response:
    if DEBIT_BATCHER_KEY in request.app:
        return await batched_debit(request, "payout", _payout_fields)
    return await _create_payout_alone(request)


@authenticated
async def _create_payout_alone(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    fields = await _payout_fields(request)
    refusal = fields.pop(REFUSAL_AFTER_REPLAY)

    async def pay_out(tx: asyncpg.Connection) -> ledger.Outcome:
        return await ledger.create_payout(
            tx, merchant_id=merchant_id, amount=fields["amount"], currency=fields["currency"]
        )

    action = pay_out if refusal is None else refuse_unless_replayed(refusal)
    return await idempotent_post(request, conn, merchant_id, fields["key"], fields["body"], action)


async def _payout_fields(request: web.Request) -> dict[str, Any]:
    key = validation.idempotency_key(request)
    body = await validation.read_json(request)
    validation.reject_unknown(body, {"amount", "currency"})
    currency = validation.currency_code(body)
    amount = validation.amount(body, currency)
    return {
        "key": key,
        "body": body,
        "amount": amount,
        "currency": currency,
        # Judged after the Idempotency-Key (replay_or_refuse): a payout made
        # while its currency was accepted still replays.
        REFUSAL_AFTER_REPLAY: validation.unsupported_currency(
            currency, request.app[SETTINGS_KEY].currencies
        ),
    }


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


@authenticated
async def list_payouts(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    page = await listing.page(conn, listing.PAYOUTS, request, {"merchant_id": merchant_id})
    return json_response(200, page)
