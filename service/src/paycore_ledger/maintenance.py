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


async def delete_in_batches(conn: asyncpg.Connection, statement: str, *args, batch: int) -> int:
    """Run `statement`, a DELETE of at most `batch` rows, each time its own
    statement and commit, until it deletes fewer: a backlog of millions stays
    within the statement timeout and never holds row locks for long. Returns
    how many rows went."""
    deleted = 0
    while True:
        done = int((await conn.execute(statement, *args, batch)).split()[-1])
        deleted += done
        if done < batch:
            return deleted
