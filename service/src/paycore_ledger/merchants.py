"""Merchant and API key administration (CLI)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

from .auth import generate_key, hash_key, valid_key_format
from .config import MAX_RATE_LIMIT
from .ids import new_id


class MerchantError(Exception):
    pass


async def create(conn: asyncpg.Connection, name: str) -> dict[str, str]:
    key = generate_key()
    async with conn.transaction():
        merchant_id = await conn.fetchval(
            "INSERT INTO merchants (id, name) VALUES ($1, $2)"
            " ON CONFLICT (name) DO NOTHING RETURNING id",
            new_id("mch"),
            name,
        )
        if merchant_id is None:
            raise MerchantError(
                f"a merchant named {name!r} exists; use 'merchants ensure' or another name"
            )
        key_id = new_id("key")
        await conn.execute(
            "INSERT INTO api_keys (id, merchant_id, key_hash) VALUES ($1, $2, $3)",
            key_id,
            merchant_id,
            hash_key(key),
        )
    return {"merchant_id": merchant_id, "api_key": key, "key_id": key_id}


async def ensure(conn: asyncpg.Connection, name: str, key: str) -> dict[str, object]:
    """Idempotent: merchant by name exists and the key is registered to it."""
    if not valid_key_format(key):
        raise MerchantError("the API key on stdin must be 24 to 200 printable ASCII characters")
    changed = False
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('paycore.merchants.ensure'))")
        merchant_id = await conn.fetchval("SELECT id FROM merchants WHERE name = $1", name)
        if merchant_id is None:
            merchant_id = new_id("mch")
            await conn.execute(
                "INSERT INTO merchants (id, name) VALUES ($1, $2)", merchant_id, name
            )
            changed = True
        existing = await conn.fetchrow(
            "SELECT merchant_id, revoked_at FROM api_keys WHERE key_hash = $1", hash_key(key)
        )
        if existing is None:
            await conn.execute(
                "INSERT INTO api_keys (id, merchant_id, key_hash) VALUES ($1, $2, $3)",
                new_id("key"),
                merchant_id,
                hash_key(key),
            )
            changed = True
        elif existing["merchant_id"] != merchant_id:
            raise MerchantError("this API key is registered to another merchant")
        elif existing["revoked_at"] is not None:
            raise MerchantError("this API key was revoked; supply a new key")
    return {"merchant_id": merchant_id, "changed": changed}


async def revoke_key(conn: asyncpg.Connection, *, key_id: str | None, key: str | None) -> dict:
    if key is not None:
        row = await conn.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
            " WHERE key_hash = $1 RETURNING id, merchant_id",
            hash_key(key),
        )
    else:
        row = await conn.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
            " WHERE id = $1 RETURNING id, merchant_id",
            key_id,
        )
    if row is None:
        raise MerchantError("no such API key")
    return {"key_id": row["id"], "merchant_id": row["merchant_id"], "revoked": True}


async def list_all(conn: asyncpg.Connection) -> list[dict]:
    rows = await conn.fetch(
        """
        SELECT m.id, m.name, m.created_at,
               coalesce(json_agg(json_build_object('key_id', k.id,
                                                   'revoked', k.revoked_at IS NOT NULL)
                                 ORDER BY k.created_at) FILTER (WHERE k.id IS NOT NULL),
                        '[]') AS keys
          FROM merchants m LEFT JOIN api_keys k ON k.merchant_id = m.id
         GROUP BY m.id ORDER BY m.created_at
        """
    )
    return [
        {"merchant_id": r["id"], "name": r["name"], "keys": json.loads(r["keys"])} for r in rows
    ]


@dataclass(frozen=True)
class MerchantRef:
    """A merchant named by id or by name (one of the two)."""

    merchant_id: str | None = None
    name: str | None = None


async def rate_limit(
    conn: asyncpg.Connection,
    merchant: MerchantRef,
    *,
    per_second: int | None = None,
    burst: int | None = None,
    default: bool = False,
) -> dict[str, object]:
    """Show a merchant's rate limit override, or change it: per_second and/or
    burst set those parts (the other keeps its value), default=True drops
    both. NULL (null in the output) means the service's PAYCORE_RATE_LIMIT_*
    setting. Every ledger process applies it from its next check."""
    if default and (per_second is not None or burst is not None):
        raise MerchantError("--default drops the override; give it alone")
    for flag, value in (("--per-second", per_second), ("--burst", burst)):
        if value is not None and not 1 <= value <= MAX_RATE_LIMIT:
            raise MerchantError(f"{flag} must be from 1 to {MAX_RATE_LIMIT}")
    merchant_id = merchant.merchant_id
    if merchant_id is None:
        merchant_id = await conn.fetchval("SELECT id FROM merchants WHERE name = $1", merchant.name)
    if default:
        row = await conn.fetchrow(
            "UPDATE merchant_rate_limits SET per_second = NULL, burst = NULL"
            " WHERE merchant_id = $1 RETURNING merchant_id, per_second, burst",
            merchant_id,
        )
    elif per_second is not None or burst is not None:
        row = await conn.fetchrow(
            "UPDATE merchant_rate_limits SET per_second = coalesce($2, per_second),"
            " burst = coalesce($3, burst)"
            " WHERE merchant_id = $1 RETURNING merchant_id, per_second, burst",
            merchant_id,
            per_second,
            burst,
        )
    else:
        row = await conn.fetchrow(
            "SELECT merchant_id, per_second, burst FROM merchant_rate_limits"
            " WHERE merchant_id = $1",
            merchant_id,
        )
    if row is None:
        raise MerchantError("no such merchant")
    return dict(row)
