"""The aiohttp application: routes and the one middleware that observes every request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time

import asyncpg
from aiohttp import web

from . import debit_call, metrics, payment_call
from .app_keys import (
    DB_KEY,
    DEBIT_BATCHER_KEY,
    PAYMENT_BATCHER_KEY,
    POOL_TASK_KEY,
    PUBLIC_IDS_KEY,
    RATE_LIMITER_KEY,
    SETTINGS_KEY,
)
from .auth import bearer_token, unauthorized
from .batching import Batcher
from .config import Settings
from .db import UNAVAILABLE_ERRORS, Database, timed_out, unavailable
from .handlers import accounts, events, payments, payouts, system, webhooks
from .logs import merchant_id_var, operation_var, request_id_var
from .problems import Problem
from .public_ids import PublicIds
from .ratelimit import VERDICT, RateLimiter
from .validation import MAX_BODY_BYTES

log = logging.getLogger("paycore.http")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STATUS = {code: str(code) for code in range(100, 600)}  # label strings, made once


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _http_problem(exc: web.HTTPException) -> Problem:
    if exc.status == 404:
        return Problem(404, "not_found", "no such route")
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return Problem(
            405,
            "method_not_allowed",
            f"method not allowed; allowed: {allowed}",
            headers={"Allow": allowed} if allowed else None,
        )
    if exc.status == 413:
        return Problem(413, "payload_too_large", f"the request body exceeds {MAX_BODY_BYTES} bytes")
    code = (exc.reason or "error").lower().replace(" ", "_")
    return Problem(exc.status, code, exc.reason or "error")


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """Request id, problem+json for every error, metrics and one access log line."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID_RE.match(incoming) else f"{random.getrandbits(128):032x}"
    token = request_id_var.set(request_id)
    merchant_token = merchant_id_var.set(None)
    operation_token = operation_var.set(None)
    started = time.perf_counter()
    try:
        try:
            response = await handler(request)
        except Problem as problem:
            metrics.record_problem(problem.code)
            response = problem.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_problem(exc).response()
        except asyncpg.QueryCanceledError:  # before UNAVAILABLE_ERRORS: same class 57
            response = timed_out().response()
        except UNAVAILABLE_ERRORS:
            response = unavailable().response()
        except asyncpg.LockNotAvailableError:
            # lock_timeout hit on a ledger row: overload, safe to retry.
            response = Problem(
                503, "ledger_busy", "the ledger is busy; retry", headers={"Retry-After": "1"}
            ).response()
        except asyncpg.DataError as exc:
            # Safety net only: input is validated before it reaches the database
            # (validation.py, ids.py). A value PostgreSQL still refuses (class 22)
            # is the client's, not a server fault; the transaction rolled back and
            # nothing was stored. Logged without the data, so a gap shows up.
            log.warning(
                "database refused a value",
                extra={"route": route_template(request), "sqlstate": exc.sqlstate},
            )
            response = Problem(
                400, "invalid_input", "the request holds a value the ledger cannot store"
            ).response()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error", extra={"route": route_template(request)})
            response = Problem(500, "internal_error", "internal error").response()
        if response.status == 503:
            metrics.DB_UNAVAILABLE.inc()
        verdict = request.get(VERDICT)
        if verdict is not None and verdict.allowed:
            response.headers.update(verdict.headers())  # a refusal carries its own
        response.headers["X-Request-Id"] = request_id
        elapsed = time.perf_counter() - started
        route = route_template(request)
        status = response.status
        code = _STATUS.get(status) or str(status)
        metrics.child(metrics.HTTP_REQUESTS, request.method, route, code).inc()
        metrics.child(metrics.HTTP_DURATION, request.method, route, code).observe(elapsed)
        if (route not in ("/metrics", "/healthz", "/readyz") or status >= 500) and log.isEnabledFor(
            logging.INFO
        ):
            fields = {
                "method": request.method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
            }
            operation = operation_var.get()
            if operation:
                fields.update(operation)
            log.info("request", extra=fields)
        return response
    finally:
        request_id_var.reset(token)
        merchant_id_var.reset(merchant_token)
        operation_var.reset(operation_token)


@web.middleware
async def limit_rate(request: web.Request, handler) -> web.StreamResponse:
    """The merchant's shared rate limit (ratelimit.py), on every /v1 route,
    before the handler reads anything: a wrong key is 401 and a merchant out of
    budget 429 here. Its headers go on the answer in `observe`."""
    if request.match_info.http_exception is not None or not request.path.startswith("/v1/"):
        return await handler(request)
    verdict = await request.app[RATE_LIMITER_KEY].check(bearer_token(request))
    if verdict.merchant_id is None:
        raise unauthorized()
    merchant_id_var.set(verdict.merchant_id)
    request[VERDICT] = verdict
    if not verdict.allowed:
        raise verdict.problem()
    return await handler(request)


async def _pool_gauges(app: web.Application) -> None:
    metrics.DB_POOL_MAX.set(app[DB_KEY].max_connections)
    while True:
        app[DB_KEY].trim()
        system.update_pool_gauges(app)
        await asyncio.sleep(2)


async def _on_startup(app: web.Application) -> None:
    await app[DB_KEY].warm_up()
    app[POOL_TASK_KEY] = asyncio.create_task(_pool_gauges(app))


async def _on_cleanup(app: web.Application) -> None:
    task = app[POOL_TASK_KEY]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[DB_KEY].close()
    await app[RATE_LIMITER_KEY].db.close()


def create_app(settings: Settings) -> web.Application:
    # One byte of slack: aiohttp refuses bodies >= client_max_size, the
    # contract refuses bodies > 1 MiB.
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1, middlewares=[observe, limit_rate])
    app[SETTINGS_KEY] = settings
    # PAYCORE_DB_POOL_MAX per worker, one of them the rate limit checks' own.
    app[DB_KEY] = Database(settings, max_connections=max(1, settings.db_pool_max - 1))
    app[RATE_LIMITER_KEY] = RateLimiter(settings)
    app[PUBLIC_IDS_KEY] = PublicIds()
    if settings.post_batch_max > 1:
        batching = (app[DB_KEY], settings.post_batch_max, settings.post_batch_window_us / 1e6)
        app[PAYMENT_BATCHER_KEY] = Batcher(
            *batching,
            call=payment_call.call,
            answer_for=payment_call.answer_for,
            run_alone=payment_call.create_payment,
        )
        app[DEBIT_BATCHER_KEY] = Batcher(
            *batching,
            call=debit_call.call_batch,
            answer_for=debit_call.answer_for,
            run_alone=debit_call.run_alone,
        )
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    app.router.add_post("/v1/accounts", accounts.create_account)
    app.router.add_get("/v1/accounts", accounts.list_accounts)
    app.router.add_get("/v1/accounts/{id}", accounts.get_account)
    app.router.add_get("/v1/accounts/{id}/entries", accounts.list_entries)
    app.router.add_post("/v1/payments", payments.create_payment)
    app.router.add_get("/v1/payments", payments.list_payments)
    app.router.add_get("/v1/payments/{id}", payments.get_payment)
    app.router.add_post("/v1/payments/{id}/refunds", payments.create_refund)
    app.router.add_get("/v1/payments/{id}/refunds", payments.list_payment_refunds)
    app.router.add_get("/v1/refunds", payments.list_refunds)
    app.router.add_get("/v1/refunds/{id}", payments.get_refund)
    app.router.add_post("/v1/payouts", payouts.create_payout)
    app.router.add_get("/v1/payouts", payouts.list_payouts)
    app.router.add_get("/v1/payouts/{id}", payouts.get_payout)
    app.router.add_get("/v1/events", events.list_events)
    app.router.add_get("/v1/events/{id}", events.get_event)
    app.router.add_post("/v1/webhook_endpoints", webhooks.create_endpoint)
    app.router.add_get("/v1/webhook_endpoints", webhooks.list_endpoints)
    app.router.add_get("/v1/webhook_endpoints/{id}", webhooks.get_endpoint)
    app.router.add_delete("/v1/webhook_endpoints/{id}", webhooks.delete_endpoint)
    app.router.add_get("/healthz", system.healthz)
    app.router.add_get("/readyz", system.readyz)
    app.router.add_get("/metrics", system.metrics_endpoint)
    app.router.add_get("/openapi.json", system.openapi)
    metrics.start_request_series(
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource.canonical.startswith("/v1/")
    )
    return app
