"""Merchant and API key administration (CLI)."""

from __future__ import annotations

import json

import asyncpg

from .auth import generate_key, hash_key, valid_key_format
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
