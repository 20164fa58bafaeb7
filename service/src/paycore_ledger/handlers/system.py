"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import json

import asyncpg
from aiohttp import web

from .. import metrics
from ..app_keys import DB_KEY
from ..db import UNAVAILABLE_ERRORS
from ..openapi import document
from ..problems import Problem
from .common import json_response


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[DB_KEY].connection() as conn:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=2)
    except asyncio.CancelledError:
        raise
    except Exception:
        # Whatever keeps us from the database (down, refused login, timeout,
        # misconfiguration): not ready, never a 500.
        raise Problem(503, "database_unavailable", "the ledger database is unavailable") from None
    return json_response(200, {"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    db = request.app[DB_KEY]
    update_pool_gauges(request.app)
    extra: list[str] = []
    # The last reconcile result lives in the database; a scrape must still
    # succeed when it is down, so this is best effort with a short timeout.
    with contextlib.suppress(Problem, asyncpg.PostgresError, *UNAVAILABLE_ERRORS):
        async with asyncio.timeout(1):
            async with db.connection() as conn:
                row = await conn.fetchrow(
                    "SELECT ran_at, ok, problems FROM reconcile_runs ORDER BY id DESC LIMIT 1"
                )
                extra = metrics.reconcile_lines(row)
                backlog = await conn.fetchrow(
                    metrics.WEBHOOK_BACKLOG_SQL, metrics.FAILING_ENDPOINT_AFTER
                )
                extra += metrics.webhook_lines(backlog)
    body, content_type = metrics.exposition(extra)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def update_pool_gauges(app: web.Application) -> None:
    size, in_use = app[DB_KEY].stats()
    metrics.DB_POOL_SIZE.set(size)
    metrics.DB_POOL_IN_USE.set(in_use)


_OPENAPI_TEXT: str | None = None


async def openapi(request: web.Request) -> web.Response:
    global _OPENAPI_TEXT
    if _OPENAPI_TEXT is None:
        _OPENAPI_TEXT = json.dumps(document())
    return web.Response(text=_OPENAPI_TEXT, content_type="application/json")
