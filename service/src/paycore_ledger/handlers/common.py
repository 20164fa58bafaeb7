"""Shared handler plumbing: authentication, JSON responses, idempotent POSTs."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from .. import idempotency, validation
from ..auth import authenticate, bearer_token
from ..config import Settings
from ..db import Database
from ..ids import valid_id
from ..ledger import Outcome
from ..logs import merchant_id_var, operation_var
from ..problems import Problem

DB_KEY = web.AppKey("db", Database)
SETTINGS_KEY = web.AppKey("settings", Settings)

log = logging.getLogger("paycore.ledger")
_REPLAYED = {"Idempotent-Replayed": "true"}

Handler = Callable[[web.Request, asyncpg.Connection, str], Awaitable[web.StreamResponse]]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def path_id(request: web.Request, prefix: str, what: str) -> str:
    """The {id} of the path; 404 if it cannot be an id of this type (NUL, non-ASCII,
    too long, wrong prefix): such an id is simply not found."""
    value = request.match_info["id"]
    if not valid_id(prefix, value):
        raise Problem(404, "not_found", f"no such {what}")
    return value


async def authenticate_first(request: web.Request, token: str) -> None:
    """Before refusing a request for anything else: 401 if the key is wrong."""
    async with request.app[DB_KEY].connection() as conn:
        merchant_id_var.set(await authenticate(conn, token))


def authenticated(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Resolve the merchant from the bearer key, on the connection the handler will use.

    A missing or wrong key answers 401 before anything else is looked at (body
    size, JSON, fields, ids): the handler's own checks run after authentication.
    """

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        token = bearer_token(request)
        if request.body_exists:
            # Read the body before taking a pooled connection, so a slow client
            # cannot hold one. Oversized: 413, but only for a valid key.
            try:
                await validation.read_raw(request)
            except Problem:
                await authenticate_first(request, token)
                raise
        async with request.app[DB_KEY].connection() as conn:
            merchant_id = await authenticate(conn, token)
            merchant_id_var.set(merchant_id)
            return await handler(request, conn, merchant_id)

    return wrapper


async def idempotent_post(
    request: web.Request,
    conn: asyncpg.Connection,
    merchant_id: str,
    key: str,
    body: dict[str, Any],
    action: Callable[[asyncpg.Connection], Awaitable[Outcome]],
) -> web.Response:
    answer = await idempotency.run(
        conn,
        merchant_id=merchant_id,
        key=key,
        method=request.method,
        path=request.path,
        body=body,
        action=action,
    )
    return respond(answer)


def respond(answer: idempotency.Answer) -> web.Response:
    """The response to an idempotent POST, once its transaction has committed."""
    # The transaction has committed: only now run side effects.
    if answer.outcome is not None:
        for effect in answer.outcome.after_commit:
            effect()
        obj = answer.outcome.body
        # Logged with the request's own line (app.observe), not a line of its own.
        operation_var.set(
            {
                "object": obj.get("object", "problem"),
                "object_id": obj.get("id"),
                "code": obj.get("code"),
            }
        )
    elif answer.replayed:
        operation_var.set({"replayed": True})
    headers = _REPLAYED if answer.replayed else None
    return web.Response(
        status=answer.status,
        text=answer.body,
        content_type=answer.content_type,
        headers=headers,
    )
