"""/v1/webhook_endpoints: register, list, read, delete a merchant's endpoints."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .. import listing, validation
from ..app_keys import SETTINGS_KEY
from ..ledger import Outcome, Refusal
from ..problems import Problem, field_error
from ..webhooks import registration
from ..webhooks.addresses import RefusedUrl, check_endpoint
from .common import authenticated, idempotent_post, json_response, path_id


@authenticated
async def create_endpoint(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    """Idempotent like every other POST but /v1/accounts: a retried
    registration answers the first one's endpoint (and secret) again."""
    key = validation.idempotency_key(request)
    body = await validation.read_json(request)
    validation.reject_unknown(body, {"url", "description"})
    url = body.get("url")
    if not isinstance(url, str):
        raise field_error("url", "is required: the https:// URL events are POSTed to")
    description = body.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > registration.MAX_DESCRIPTION
    ):
        raise field_error(
            "description", f"must be a string of at most {registration.MAX_DESCRIPTION} characters"
        )
    settings = request.app[SETTINGS_KEY]
    try:
        # Before the key is claimed: DNS answers change, so a refusal is not stored.
        await check_endpoint(url, settings.webhook_allow_http, settings.webhook_allowed_networks)
    except RefusedUrl as exc:
        raise field_error("url", str(exc), code="webhook_url_refused") from None

    async def register(tx: asyncpg.Connection) -> Outcome:
        try:
            return Outcome(201, await registration.insert(tx, merchant_id, url, description))
        except registration.TooManyEndpoints as exc:
            raise Refusal("too_many_webhook_endpoints", str(exc)) from None

    return await idempotent_post(request, conn, merchant_id, key, body, register)


@authenticated
async def list_endpoints(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    page = await listing.page(conn, registration.ENDPOINTS, request, {"merchant_id": merchant_id})
    return json_response(200, page)


@authenticated
async def get_endpoint(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    row = await conn.fetchrow(
        "SELECT * FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2",
        path_id(request, "we", "webhook endpoint"),
        merchant_id,
    )
    if row is None:
        raise Problem(404, "not_found", "no such webhook endpoint")
    return json_response(200, registration.endpoint_view(row))


@authenticated
async def delete_endpoint(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    endpoint_id = path_id(request, "we", "webhook endpoint")
    if not await registration.delete(conn, merchant_id, endpoint_id):
        raise Problem(404, "not_found", "no such webhook endpoint")
    return json_response(200, {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True})
