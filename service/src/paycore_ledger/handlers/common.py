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
from ..ledger import Outcome
from ..logs import merchant_id_var

DB_KEY = web.AppKey("db", Database)
SETTINGS_KEY = web.AppKey("settings", Settings)

log = logging.getLogger("paycore.ledger")

Handler = Callable[[web.Request, asyncpg.Connection, str], Awaitable[web.StreamResponse]]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def authenticated(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Resolve the merchant from the bearer key, on the connection the handler will use."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        token = bearer_token(request)
        if request.body_exists:
            # Read the body before taking a pooled connection, so a slow client
            # cannot hold one; oversized bodies answer 413 here.
            await validation.read_raw(request)
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
        log.info(
            "money operation",
            extra={
                "object": obj.get("object", "problem"),
                "object_id": obj.get("id"),
                "status_code": answer.status,
                "code": obj.get("code"),
            },
        )
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return web.Response(
        status=answer.status,
        text=answer.body,
        content_type=answer.content_type,
        headers=headers,
    )
