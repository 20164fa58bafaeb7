"""Webhook endpoints: register (with its signing secret, shown once), list,
delete. Shared by the API (handlers/webhooks.py) and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ..ids import new_id
from ..ledger import _iso
from ..listing import Listing
from .addresses import Network, check_endpoint
from .signing import new_secret

MAX_ENDPOINTS_PER_MERCHANT = 16
MAX_DESCRIPTION = 500


class TooManyEndpoints(Exception):
    pass


def endpoint_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "webhook_endpoint",
        "url": row["url"],
        "description": row["description"],
        "created_at": _iso(row["created_at"]),
    }


# GET /v1/webhook_endpoints: the list contract of listing.py (no filter values).
ENDPOINTS = Listing("webhook_endpoints", "we", "webhook endpoint", (), endpoint_view)


async def register(
    conn: asyncpg.Connection,
    merchant_id: str,
    url: str,
    description: str | None,
    allow_http: bool = False,
    allowed_networks: Sequence[Network] = (),
) -> dict[str, Any]:
    """A new endpoint; its view plus `secret`, the only time it is shown.
    addresses.RefusedUrl if the URL may not be one, TooManyEndpoints."""
    await check_endpoint(url, allow_http, allowed_networks)  # before the transaction
    async with conn.transaction():
        return await insert(conn, merchant_id, url, description)


async def insert(
    conn: asyncpg.Connection, merchant_id: str, url: str, description: str | None
) -> dict[str, Any]:
    """The endpoint's row, in the caller's transaction (the URL checked before)."""
    # Serialises registrations of one merchant, so the cap holds (a lock
    # released at commit).
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('webhook_endpoints:' || $1, 0))",
        merchant_id,
    )
    count = await conn.fetchval(
        "SELECT count(*) FROM webhook_endpoints WHERE merchant_id = $1", merchant_id
    )
    if count >= MAX_ENDPOINTS_PER_MERCHANT:
        raise TooManyEndpoints(
            f"a merchant may have at most {MAX_ENDPOINTS_PER_MERCHANT} webhook endpoints"
        )
    secret = new_secret()
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, secret, description)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING *",
        new_id("we"),
        merchant_id,
        url,
        secret,
        description,
    )
    return {**endpoint_view(row), "secret": secret}


async def delete(conn: asyncpg.Connection, merchant_id: str, endpoint_id: str) -> bool:
    """Remove the endpoint and its deliveries (pending ones are not sent)."""
    deleted = await conn.fetchval(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2 RETURNING id",
        endpoint_id,
        merchant_id,
    )
    return deleted is not None


async def list_for(conn: asyncpg.Connection, merchant_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT * FROM webhook_endpoints WHERE merchant_id = $1 ORDER BY created_at DESC, id DESC",
        merchant_id,
    )
    return [endpoint_view(r) for r in rows]
