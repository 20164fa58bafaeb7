"""The delivery worker (`paycore-ledger webhooks deliver`, its own systemd
unit): claims due deliveries, POSTs each event, signed, to its endpoint,
records every attempt and schedules the next.

Claims are `FOR UPDATE SKIP LOCKED` and push the delivery's next_attempt_at
out by a lease, committed at once: any number of workers on any number of
hosts take disjoint work and no transaction stays open during an HTTP call.
A worker killed mid-delivery leaves its deliveries due again when the lease
ends, so every event is delivered at least once (receivers dedupe on the
event id, which never changes). A failed attempt is retried after
base * 2^(attempt-1) seconds (capped), times a random factor in [0.5, 1]
(jitter: endpoints coming back are not hit by every retry at once), for at
least `webhook_retry_seconds` (3 days by default) after the event; then the
delivery is `failed`. Success is any 2xx answer within the timeout;
redirects are not followed (a 3xx is a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from ..config import Settings
from ..db import server_settings
from ..events import event_view
from . import signing
from .addresses import CheckedResolver, RefusedUrl, check_url, resolve_public

log = logging.getLogger("paycore.webhooks")

CLAIM_BATCH = 32
POLL_INTERVAL_S = 1.0
MAX_ERROR_LENGTH = 300


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    attempt: int  # 1 for the first
    created_at: Any  # the delivery's (the event's commit)
    endpoint_id: str
    url: str
    secret: str
    body: bytes  # the event's JSON, the same at every attempt


@dataclass(frozen=True)
class Result:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def outcome(self) -> str:
        """For metrics: success, http_error (an answer, not 2xx), refused (address), error."""
        if self.ok:
            return "success"
        if self.status_code is not None:
            return "http_error"
        return "refused" if self.error and self.error.startswith("refused") else "error"


CLAIM_SQL = """
WITH due AS (
    SELECT id FROM webhook_deliveries
     WHERE state = 'pending' AND next_attempt_at <= now()
     ORDER BY next_attempt_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d
       SET next_attempt_at = now() + make_interval(secs => $2), attempts = d.attempts + 1
      FROM due WHERE d.id = due.id
    RETURNING d.id, d.attempts, d.created_at, d.endpoint_id, d.event_id
)
SELECT c.id, c.attempts, c.created_at, c.endpoint_id, w.url, w.secret,
       e.id AS event_id, e.type, e.created_at AS event_created_at, e.data
  FROM claimed c
  JOIN webhook_endpoints w ON w.id = c.endpoint_id
  JOIN events e ON e.id = c.event_id
"""


def event_body(row: asyncpg.Record) -> bytes:
    view = event_view(
        {
            "id": row["event_id"],
            "type": row["type"],
            "created_at": row["event_created_at"],
            "data": row["data"],
        }
    )
    return json.dumps(view, separators=(",", ":")).encode()


async def claim(conn: asyncpg.Connection, settings: Settings, limit: int) -> list[Claimed]:
    rows = await conn.fetch(CLAIM_SQL, limit, settings.webhook_lease_seconds)
    return [
        Claimed(
            r["id"],
            r["attempts"],
            r["created_at"],
            r["endpoint_id"],
            r["url"],
            r["secret"],
            event_body(r),
        )
        for r in rows
    ]


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds before the attempt after `attempt` (1-based): exponential, capped, jittered."""
    base = min(
        settings.webhook_retry_base_seconds * 2 ** min(attempt - 1, 40),
        settings.webhook_retry_cap_seconds,
    )
    return base * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)


async def post(session: aiohttp.ClientSession, settings: Settings, item: Claimed) -> Result:
    """One attempt. The address is checked again here (DNS may have changed
    since registration): an IP literal now, a name by CheckedResolver as
    aiohttp connects."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        host, port = check_url(item.url, settings.webhook_allow_http)
        await resolve_public(host, port, settings.webhook_allowed_networks)
    except RefusedUrl as exc:
        return Result(None, f"refused: url {exc}"[:MAX_ERROR_LENGTH], took())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "PayCore-Webhooks/1",
        signing.HEADER: signing.header(item.secret, item.body),
    }
    try:
        async with session.post(
            item.url,
            data=item.body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds),
        ) as response:
            with contextlib.suppress(Exception):
                await response.content.read(4096)  # some servers want the answer read
            return Result(response.status, None, took())
    except TimeoutError:
        return Result(None, "timeout", took())
    except (aiohttp.ClientError, OSError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else ""
        return Result(None, f"{type(exc).__name__}: {text}"[:MAX_ERROR_LENGTH], took())


async def record(
    conn: asyncpg.Connection, settings: Settings, item: Claimed, result: Result
) -> str:
    """Store the attempt and the delivery's next state; returns that state."""
    age = time.time() - item.created_at.timestamp()
    if result.ok:
        state, next_in = "delivered", 0.0
    elif age >= settings.webhook_retry_seconds:
        state, next_in = "failed", 0.0
    else:
        state, next_in = "pending", retry_delay(settings, item.attempt)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, duration_ms, status_code,"
            " error) VALUES ($1, now() - make_interval(secs => $2 / 1000.0), $2, $3, $4)",
            item.delivery_id,
            result.duration_ms,
            result.status_code,
            result.error,
        )
        await conn.execute(
            "UPDATE webhook_deliveries SET state = $2,"
            " next_attempt_at = now() + make_interval(secs => $3),"
            " finished_at = CASE WHEN $2 <> 'pending' THEN now() END"
            " WHERE id = $1 AND state = 'pending'",
            item.delivery_id,
            state,
            next_in,
        )
        await conn.execute(
            "UPDATE webhook_endpoints SET"
            " consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures + 1 END,"
            " last_success_at = CASE WHEN $2 THEN now() ELSE last_success_at END,"
            " last_failure_at = CASE WHEN $2 THEN last_failure_at ELSE now() END"
            " WHERE id = $1",
            item.endpoint_id,
            result.ok,
        )
    return state


class Worker:
    """Claims and delivers until stop(); several may run, anywhere."""

    def __init__(self, settings: Settings, concurrency: int = CLAIM_BATCH) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        from .. import metrics

        pool = await asyncpg.create_pool(
            self.settings.require_database_url(),
            min_size=1,
            max_size=self.concurrency + 1,
            server_settings=server_settings(self.settings),
        )
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self.settings.webhook_allowed_networks),
            use_dns_cache=False,
            limit=self.concurrency,
        )
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                while not self._stopping.is_set():
                    try:
                        async with pool.acquire() as conn:
                            batch = await claim(conn, self.settings, self.concurrency)
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        log.warning("cannot claim deliveries", extra={"error": str(exc)})
                        batch = []
                    if batch:
                        await asyncio.gather(
                            *(self._deliver(pool, session, item, metrics) for item in batch)
                        )
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), POLL_INTERVAL_S)
        finally:
            await pool.close()

    async def _deliver(self, pool, session, item: Claimed, metrics) -> None:
        result = await post(session, self.settings, item)
        metrics.child(metrics.WEBHOOK_ATTEMPTS, result.outcome).inc()
        metrics.WEBHOOK_ATTEMPT_DURATION.observe(result.duration_ms / 1000)
        try:
            async with pool.acquire() as conn:
                await record(conn, self.settings, item, result)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Not recorded: the lease ends and it is sent again (at least once).
            log.warning("cannot record a delivery attempt", extra={"error": str(exc)})


def run_forever(settings: Settings, metrics_port: int | None, metrics_host: str) -> int:
    """The `webhooks deliver` command: until SIGTERM or SIGINT."""
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)

    async def main() -> None:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        log.info("webhook delivery worker started")
        await worker.run()
        log.info("webhook delivery worker stopped")

    asyncio.run(main())
    return 0
