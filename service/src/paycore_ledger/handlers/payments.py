"""/v1/payments and their refunds."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from .. import ledger, listing, payment_call, validation
from ..app_keys import DB_KEY, DEBIT_BATCHER_KEY, PAYMENT_BATCHER_KEY, SETTINGS_KEY
from ..auth import bearer_token
from ..problems import Problem
from .common import (
    authenticated,
    batched_debit,
    idempotent_post,
    json_response,
    path_id,
    refusals_after_authentication,
    replay_or_refuse,
    respond,
)


async def create_payment(request: web.Request) -> web.Response:
    """One database round trip (shared with other payments when batching): the
    API key is checked inside the payment statement. A request refused before
    that (400/413/422) is authenticated first, so a wrong key still answers 401
    whatever else is wrong."""
    token = bearer_token(request)
    settings = request.app[SETTINGS_KEY]
    async with refusals_after_authentication(request, token):
        key = validation.idempotency_key(request)
        body = await validation.read_json(request)
        validation.reject_unknown(body, {"amount", "currency", "description", "metadata"})
        currency = validation.currency_code(body)
        amount = validation.amount(body, currency)
        description = validation.description(body)
        metadata = validation.metadata(body)
    refusal = validation.unsupported_currency(currency, settings.currencies)
    if refusal is not None:
        # After the Idempotency-Key: a payment taken while its currency was
        # accepted still replays once the settings drop that currency.
        return await replay_or_refuse(request, token, key, body, refusal)
    req = payment_call.payment_request(
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
    batcher = request.app.get(PAYMENT_BATCHER_KEY)
    if batcher is not None:
        answer = await batcher.answer(req)
    else:
        async with request.app[DB_KEY].connection() as conn:
            answer = await payment_call.create_payment(conn, req)
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


async def create_refund(request: web.Request) -> web.Response:
    if DEBIT_BATCHER_KEY in request.app:
        return await batched_debit(request, "refund", _refund_fields)
    return await _create_refund_alone(request)


@authenticated
async def _create_refund_alone(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    fields = await _refund_fields(request)

    async def action(tx: asyncpg.Connection) -> ledger.Outcome:
        return await ledger.create_refund(
            tx, merchant_id=merchant_id, payment_id=fields["payment_id"], amount=fields["amount"]
        )

    return await idempotent_post(request, conn, merchant_id, fields["key"], fields["body"], action)


async def _refund_fields(request: web.Request) -> dict[str, Any]:
    payment_id = path_id(request, "pay", "payment")
    key = validation.idempotency_key(request)
    body = await validation.read_json(request)
    validation.reject_unknown(body, {"amount"})
    amount = validation.amount(body)
    return {"key": key, "body": body, "amount": amount, "payment_id": payment_id}


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


@authenticated
async def list_payments(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    page = await listing.page(conn, listing.PAYMENTS, request, {"merchant_id": merchant_id})
    return json_response(200, page)


@authenticated
async def list_refunds(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    page = await listing.page(conn, listing.REFUNDS, request, {"merchant_id": merchant_id})
    return json_response(200, page)


@authenticated
async def list_payment_refunds(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    payment_id = path_id(request, "pay", "payment")
    if not await conn.fetchval(
        "SELECT true FROM payments WHERE id = $1 AND merchant_id = $2", payment_id, merchant_id
    ):
        raise Problem(404, "not_found", "no such payment")
    scope = {"payment_id": payment_id, "merchant_id": merchant_id}
    page = await listing.page(conn, listing.REFUNDS, request, scope, scope_name="payment")
    return json_response(200, page)
