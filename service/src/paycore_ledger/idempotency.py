"""Idempotency-Key handling (draft-ietf-httpapi-idempotency-key-header).

The key is claimed by inserting its row inside the same database transaction
that performs the request, and the final answer is written to that row before
commit. So a request and its stored response commit together or not at all:
a crash or a 5xx leaves no key behind and the client can simply retry.
While the first request runs, its uncommitted row is the in-progress state: a
concurrent request with the same key waits on it (lock_timeout), then either
replays the committed answer or gets 409 idempotency_key_in_use.
The answers are plain data; the HTTP layer records their metrics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .ledger import Outcome, Refusal
from .maintenance import delete_in_batches, run_alone
from .problems import PROBLEM_CONTENT_TYPE, Problem

MAX_ATTEMPTS = 3


class _KeyVanished(Exception):
    """The conflicting key was purged between our insert and our read."""


RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, _KeyVanished)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(method: str, path: str, body: dict[str, Any]) -> bytes:
    canonical = _CANONICAL.encode(body)  # sorted keys, no white space
    return hashlib.sha256(f"{method}\n{path}\n{canonical}".encode()).digest()


class Answer:
    """A response to send: status, JSON text, and whether it is a replay."""

    def __init__(self, status: int, body: str, replayed: bool, outcome: Outcome | None = None):
        self.status = status
        self.body = body
        self.replayed = replayed
        self.outcome = outcome

    @property
    def content_type(self) -> str:
        return PROBLEM_CONTENT_TYPE if self.status >= 400 else "application/json"


async def run(
    conn: asyncpg.Connection,
    *,
    merchant_id: str,
    key: str,
    method: str,
    path: str,
    body: dict[str, Any],
    action: Callable[[asyncpg.Connection], Awaitable[Outcome]],
) -> Answer:
    fp = fingerprint(method, path, body)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return await _attempt(conn, merchant_id, key, method, path, fp, action)
        except RETRYABLE:
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _attempt(conn, merchant_id, key, method, path, fp, action) -> Answer:
    async with conn.transaction():
        try:
            claimed = await conn.fetchval(
                """
                INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (merchant_id, key) DO NOTHING
                RETURNING true
                """,
                merchant_id,
                key,
                fp,
                method,
                path,
            )
        except asyncpg.LockNotAvailableError:
            raise in_use() from None
        if not claimed:
            return await _replay(conn, merchant_id, key, fp)
        try:
            outcome = await action(conn)
        except Refusal as refusal:
            outcome = Outcome(refusal.status, refusal.to_dict())
        text = json.dumps(outcome.body)
        await conn.execute(
            """
            UPDATE idempotency_keys
               SET state = 'completed', status_code = $3, response_body = $4,
                   completed_at = now()
             WHERE merchant_id = $1 AND key = $2
            """,
            merchant_id,
            key,
            outcome.status,
            text,
        )
    return Answer(outcome.status, text, False, outcome)


async def _replay(conn, merchant_id: str, key: str, fp: bytes) -> Answer:
    row = await conn.fetchrow(
        """
        SELECT fingerprint, state, status_code, response_body FROM idempotency_keys
         WHERE merchant_id = $1 AND key = $2
        """,
        merchant_id,
        key,
    )
    if row is None:
        raise _KeyVanished
    if row["fingerprint"] != fp:
        raise reused()
    if row["state"] != "completed":
        raise in_use()
    return replayed(row["status_code"], row["response_body"])


def replayed(status: int, body: str) -> Answer:
    return Answer(status, body, True)


def reused() -> Problem:
    return Problem(
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was used for a different request",
    )


def in_use() -> Problem:
    return Problem(
        409,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is still being processed; retry later",
        headers={"Retry-After": "1"},
    )


PURGE_BATCH = 5000
# The purge's advisory lock ("payidemp"): one at a time, whichever host starts it.
PURGE_LOCK = 0x7061796964656D70
_PURGE = """
DELETE FROM idempotency_keys
 WHERE (merchant_id, key) IN (
       SELECT merchant_id, key FROM idempotency_keys
        WHERE created_at < now() - make_interval(hours => $1)
          AND state = 'completed'
        LIMIT $2)
"""


async def purge(conn: asyncpg.Connection, retention_hours: int) -> int | None:
    """Delete completed keys older than the retention, PURGE_BATCH at a time;
    returns how many, or None when another purge is running."""
    return await run_alone(
        conn,
        PURGE_LOCK,
        lambda: delete_in_batches(conn, _PURGE, retention_hours, batch=PURGE_BATCH),
    )
