"""API keys: generated once, stored only as SHA-256 hashes, looked up per request.

Keys are 256-bit random tokens, so a fast hash is enough (no password
stretching needed) and lookup is a single unique-index probe.
"""

from __future__ import annotations

import hashlib
import secrets

import asyncpg
from aiohttp import web

from .problems import Problem

KEY_PREFIX = "pck_"
MIN_KEY_LENGTH = 24
MAX_KEY_LENGTH = 200


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def valid_key_format(key: str) -> bool:
    return MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not valid_key_format(token):
        raise unauthorized()
    return token


def unauthorized() -> Problem:
    return Problem(
        401,
        "unauthorized",
        "missing or invalid API key",
        headers={"WWW-Authenticate": 'Bearer realm="paycore"'},
    )


async def authenticate(conn: asyncpg.Connection, token: str) -> str:
    merchant_id = await conn.fetchval(
        "SELECT merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_key(token),
    )
    if merchant_id is None:
        raise unauthorized()
    return merchant_id
