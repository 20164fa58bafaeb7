"""/v1/payments and their refunds."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .. import ledger, payment_call, validation
from ..app_keys import DB_KEY, SETTINGS_KEY
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


async def create_payment(request: web.Request) -> web.Response:
    """One database round trip: the API key is checked inside the payment
    statement. A request refused before that (400/413/422) is authenticated
    first, so a wrong key still answers 401 whatever else is wrong."""
    token = bearer_token(request)
    settings = request.app[SETTINGS_KEY]
    async with refusals_after_authentication(request, token):
        key = validation.idempotency_key(request)
        body = await validation.read_json(request)
        validation.reject_unknown(body, {"amount", "currency", "description", "metadata"})
        amount = validation.amount(body)
        currency = validation.currency(body, settings.currencies)
        description = validation.description(body)
        metadata = validation.metadata(body)
    async with request.app[DB_KEY].connection() as conn:
        answer = await payment_call.create_payment(
            conn,
            token=token,
            key=key,
            method=request.method,
            path=request.path,
            body=body,
            amount=amount,
            currency=currency,
            description=description,
            metadata=metadata,
            review_threshold=settings.review_threshold(currency),
        )
    return respond(answer)


@authenticated
async def get_payment(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    row = await conn.fetchrow(
        "SELECT * FROM payments WHERE id = $1 AND merchant_id = $2",
        path_id(request, "pay", "payment"),
        merchant_id,
    )
    if row is None:
        raise Problem(404, "not_found", "no such payment")
    return json_response(200, ledger.payment_view(row))


@authenticated
async def create_refund(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    payment_id = path_id(request, "pay", "payment")
    key = validation.idempotency_key(request)
    body = await validation.read_json(request)
    validation.reject_unknown(body, {"amount"})
    amount = validation.amount(body)

    async def action(tx: asyncpg.Connection) -> ledger.Outcome:
        return await ledger.create_refund(
            tx, merchant_id=merchant_id, payment_id=payment_id, amount=amount
        )

    return await idempotent_post(request, conn, merchant_id, key, body, action)


@authenticated
async def get_refund(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    row = await conn.fetchrow(
        "SELECT * FROM refunds WHERE id = $1 AND merchant_id = $2",
        path_id(request, "re", "refund"),
        merchant_id,
    )
    if row is None:
        raise Problem(404, "not_found", "no such refund")
    return json_response(200, ledger.refund_view(row))
