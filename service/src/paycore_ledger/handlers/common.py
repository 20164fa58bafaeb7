"""Shared handler plumbing: authentication, JSON responses, idempotent POSTs."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from .. import debit_call, idempotency, metrics, validation
from ..app_keys import DB_KEY, DEBIT_BATCHER_KEY
from ..auth import authenticate, bearer_token
from ..ids import valid_id
from ..ledger import Outcome
from ..logs import merchant_id_var, operation_var
from ..problems import Problem
from ..ratelimit import VERDICT

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


def checked_merchant(request: web.Request) -> str | None:
    """The merchant whose key the rate limit check (app.limit_rate) just
    authenticated, if it ran."""
    verdict = request.get(VERDICT)
    return verdict.merchant_id if verdict is not None else None


async def authenticate_first(request: web.Request, token: str) -> None:
    """Before refusing a request for anything else: 401 if the key is wrong."""
    if checked_merchant(request) is not None:
        return
    async with request.app[DB_KEY].connection() as conn:
        merchant_id_var.set(await authenticate(conn, token))


@contextlib.asynccontextmanager
async def refusals_after_authentication(request: web.Request, token: str) -> AsyncIterator[None]:
    """Checks made before the key is known to be good: the body is read first
    (before a pooled connection is taken, so a slow client holds none), and a
    Problem raised here (413, bad JSON, bad field, ...) answers 401 instead
    if the key is wrong."""
    try:
        if request.body_exists:
            await validation.read_raw(request)
        yield
    except Problem:
        await authenticate_first(request, token)
        raise


def authenticated(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Resolve the merchant from the bearer key, on the connection the handler will use.

    A missing or wrong key answers 401 before anything else is looked at (body
    size, JSON, fields, ids): the handler's own checks run after authentication.
    """

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        token = bearer_token(request)
        async with refusals_after_authentication(request, token):
            pass  # the body read; the handler's own checks run once authenticated
        async with request.app[DB_KEY].connection() as conn:
            merchant_id = checked_merchant(request) or await authenticate(conn, token)
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


async def batched_debit(
    request: web.Request,
    kind: str,
    fields: Callable[[web.Request], Awaitable[dict[str, Any]]],
) -> web.Response:
    """A refund or payout through the worker's group commit (batching.py):
    `fields` reads and checks the request (after authentication, see
    refusals_after_authentication) and returns debit_request's arguments,
    and under REFUSAL_AFTER_REPLAY a refusal that must not stop a replay."""
    token = bearer_token(request)
    async with refusals_after_authentication(request, token):
        values = await fields(request)
    refusal = values.pop(REFUSAL_AFTER_REPLAY, None)
    if refusal is not None:
        return await replay_or_refuse(request, token, values["key"], values["body"], refusal)
    req = debit_call.debit_request(request.method, request.path, token=token, kind=kind, **values)
    return respond(await request.app[DEBIT_BATCHER_KEY].answer(req))


# The key, in a handler's checked fields, of a refusal that depends on the
# settings (an unsupported currency): see replay_or_refuse.
REFUSAL_AFTER_REPLAY = "refusal_after_replay"


def refuse_unless_replayed(refusal: Problem) -> Callable[[asyncpg.Connection], Awaitable[Outcome]]:
    """The action for idempotency.run that refuses: run only when the key holds
    no earlier request, and rolled back with the claim, so nothing is stored."""

    async def refuse(_tx: asyncpg.Connection) -> Outcome:
        raise refusal

    return refuse


async def replay_or_refuse(
    request: web.Request, token: str, key: str, body: dict[str, Any], refusal: Problem
) -> web.Response:
    """For a refusal that depends on the settings, judged after the
    Idempotency-Key: the stored answer if the key holds this very request (made
    while the settings accepted it), 422 idempotency_key_reused if it holds
    another, else the refusal, not stored (the key stays free). A request still
    running with the key is waited for, as on every idempotent POST. 401 first
    if the API key is wrong. A rare path: its own round trips, never the hot one."""
    async with request.app[DB_KEY].connection() as conn:
        merchant_id = await authenticate(conn, token)
        merchant_id_var.set(merchant_id)
        action = refuse_unless_replayed(refusal)
        return await idempotent_post(request, conn, merchant_id, key, body, action)


def respond(answer: idempotency.Answer) -> web.Response:
    """The response to an idempotent POST, once its transaction has committed."""
    # The transaction has committed: only now record its side effects.
    if answer.outcome is not None:
        record(answer.outcome)
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
        metrics.IDEMPOTENT_REPLAYS.inc()
        operation_var.set({"replayed": True})
    headers = _REPLAYED if answer.replayed else None
    return web.Response(
        status=answer.status,
        text=answer.body,
        content_type=answer.content_type,
        headers=headers,
    )


def record(outcome: Outcome) -> None:
    """Metrics of a committed outcome: what it created, or the refusal stored."""
    if outcome.movement is not None:
        m = outcome.movement
        metrics.record_created(m.kind, m.currency, m.status, m.amount)
    elif outcome.status >= 400:
        metrics.record_refusal(outcome.body["code"])
