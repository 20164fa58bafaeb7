"""Maintenance jobs that every ledger host schedules (the retention timer)
but that should run once at a time across all of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg


async def run_alone(
    conn: asyncpg.Connection, lock_id: int, job: Callable[[], Awaitable[int]]
) -> int | None:
    """Run `job` under a session advisory lock; None if another session holds it.
    Two purges deleting the same rows in different orders could deadlock; this
    way the second one simply finds nothing to do."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id):
        return None
    try:
        return await job()
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)
