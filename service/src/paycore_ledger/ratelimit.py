"""Per-merchant rate limits, counted in PostgreSQL (`ledger_rate_limit`, sql/0010, 0017).

Every ledger process on every host spends the same budget: the state is one
row per merchant (GCRA: a token bucket written as one timestamp), changed by
one UPDATE in a statement that commits asynchronously (no WAL flush waited
for, see RateLimiter). The check also authenticates the API key, so on the read
routes it replaces the key lookup; on the money-moving routes the key is
checked again inside the transaction that moves the money (revocation stays
immediate).

Cost per request: within a worker, the checks of requests arriving together go
as one call (the group commit machinery of batching.py: a batcher and a
connection of their own, so a check never waits for a posting batch to
commit, nor for a pooled connection), and a worker that was told
a key's merchant is out of budget refuses that key's requests itself until
the next unit is due (at most REFUSAL_CACHE_S), without asking PostgreSQL:
a merchant hammering far over its limit costs the database about one check
per worker per unit, not one per request, and holds no pooled connection.
That is what keeps one hot merchant from slowing the others down.

Idempotent replays count like any request: the check runs before the
Idempotency-Key is looked at. A 429 stores nothing, so the request may be sent
again with the same key after Retry-After.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from .auth import hash_key
from .batching import Batcher
from .config import Settings
from .db import Database
from .problems import Problem

# Longest a worker refuses a key on its own after PostgreSQL said "out of
# budget": bounds how long a raised override (`merchants rate-limit`) or a
# revoked key (429 instead of 401) takes to show.
REFUSAL_CACHE_S = 1.0
# Most checks in one statement.
CHECK_BATCH_MAX = 256
# Past this many cached refusals, expired ones are dropped.
_CACHE_PRUNE_AT = 10_000


_CALL = (
    "SELECT idx, merchant_id, allowed, quota, remaining, retry_after_us, reset_us"
    " FROM ledger_rate_limit($1::bytea[], $2, $3)"
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One request's check: its merchant (None: unknown or revoked key) and budget."""

    merchant_id: str | None
    allowed: bool
    limit: int = 0  # the merchant's burst: RateLimit-Limit
    remaining: int = 0  # units left after this request
    retry_after_s: float = 0.0  # until the next unit (refused requests)
    reset_s: float = 0.0  # until the budget is whole again

    def headers(self) -> dict[str, str]:
        """draft-ietf-httpapi-ratelimit-headers: the quota is the burst, Reset
        the whole seconds until all of it is available again."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }

    def problem(self) -> Problem:
        retry_after = max(1, math.ceil(self.retry_after_s))
        return Problem(
            429,
            "rate_limited",
            f"too many requests for this merchant; retry after {retry_after} s",
            headers={**self.headers(), "Retry-After": str(retry_after)},
        )


# The request's Verdict, for the handlers (its merchant) and the response headers.
VERDICT = web.RequestKey("rate_limit_verdict", Verdict)


def _verdict(row) -> Verdict:
    _, merchant_id, allowed, quota, remaining, retry_after_us, reset_us = row
    if merchant_id is None:
        return Verdict(None, False)
    return Verdict(merchant_id, allowed, quota, remaining, retry_after_us / 1e6, reset_us / 1e6)


class RateLimiter:
    """One worker's view of the shared budgets.

    Its checks go over a connection of their own, whose session commits
    asynchronously (synchronous_commit off: no WAL flush to wait for, so the
    merchant's row is locked for microseconds). A crash may forget the last
    few hundred ms of spending, so a merchant may get that much more once; no
    money depends on it, and no money-moving statement ever runs on that
    connection. Checks always go in batches (one in flight per worker, the
    next forming meanwhile), so one connection per worker is enough, whatever
    PAYCORE_POST_BATCH_MAX says about postings. It is one of the worker's
    PAYCORE_DB_POOL_MAX (app.create_app gives the request pool one fewer), so
    the connection budget of a site does not change.
    """

    def __init__(self, settings: Settings) -> None:
        self._per_second = settings.rate_limit_per_second
        self._burst = settings.rate_limit_burst
        # key hash -> (monotonic time the refusal holds until, its verdict, when it was made)
        self._refused: dict[bytes, tuple[float, Verdict, float]] = {}
        self.db = Database(settings, max_connections=1, session={"synchronous_commit": "off"})
        self._batcher = Batcher(
            self.db,
            CHECK_BATCH_MAX,
            settings.post_batch_window_us / 1e6,
            call=self._call,
            answer_for=lambda _key_hash, verdict: verdict,
            run_alone=self._call_one,
        )

    async def check(self, token: str) -> Verdict:
        """Spend one unit of the key's merchant's budget, if one is left."""
        key_hash = hash_key(token)
        cached = self._refused.get(key_hash)
        if cached is not None:
            until, verdict, since = cached
            now = time.monotonic()
            if now < until:
                elapsed = now - since
                return Verdict(
                    verdict.merchant_id,
                    False,
                    verdict.limit,
                    0,
                    verdict.retry_after_s - elapsed,
                    max(verdict.reset_s - elapsed, 0.0),
                )
            del self._refused[key_hash]
        verdict = await self._batcher.answer(key_hash)
        if not verdict.allowed and verdict.merchant_id is not None:
            self._remember_refusal(key_hash, verdict)
        return verdict

    def _remember_refusal(self, key_hash: bytes, verdict: Verdict) -> None:
        now = time.monotonic()
        if len(self._refused) >= _CACHE_PRUNE_AT:
            self._refused = {k: v for k, v in self._refused.items() if v[0] > now}
        self._refused[key_hash] = (now + min(verdict.retry_after_s, REFUSAL_CACHE_S), verdict, now)

    async def _call(self, conn: asyncpg.Connection, key_hashes: list[bytes]) -> list[Verdict]:
        rows = await conn.fetch(_CALL, key_hashes, self._per_second, self._burst)
        verdicts: list[Verdict] = [None] * len(key_hashes)  # type: ignore[list-item]
        for row in rows:
            verdicts[row[0] - 1] = _verdict(row)
        return verdicts

    async def _call_one(self, conn: asyncpg.Connection, key_hash: bytes) -> Verdict:
        return (await self._call(conn, [key_hash]))[0]
