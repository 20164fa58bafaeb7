"""/v1/events: the merchant's events, newest first."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .. import listing
from ..events import EVENTS, event_view
from ..problems import Problem
from .common import authenticated, json_response, path_id


@authenticated
async def list_events(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    page = await listing.page(conn, EVENTS, request, {"merchant_id": merchant_id})
    return json_response(200, page)


@authenticated
async def get_event(request: web.Request, conn: asyncpg.Connection, merchant_id: str):
    row = await conn.fetchrow(
        "SELECT * FROM events WHERE id = $1 AND merchant_id = $2",
        path_id(request, "evt", "event"),
        merchant_id,
    )
    if row is None:
        raise Problem(404, "not_found", "no such event")
    return json_response(200, event_view(row))
