"""Merchants that send nothing, in bulk: a site with many merchants, for the
plan tests (test_posting_plans.py) and the benchmark (bench.py --idle-merchants)."""

from __future__ import annotations

import asyncpg


async def add_idle_merchants(conn: asyncpg.Connection, count: int, analyze: bool = True) -> None:
    """`count` merchants, each with an API key and an NGN account; then vacuumed
    and analyzed, so the planner knows the tables' sizes and autovacuum has
    nothing of them left to do later (`analyze=False`: merchants that signed up
    since autovacuum last looked, which the planner does not know of)."""
    await conn.execute(
        "INSERT INTO merchants (id, name)"
        " SELECT 'mch_idle' || g, 'idle-' || g FROM generate_series(1, $1::int) AS g",
        count,
    )
    await conn.execute(
        "INSERT INTO api_keys (id, merchant_id, key_hash)"
        " SELECT 'key_idle' || g, 'mch_idle' || g, sha256(('idle' || g)::bytea)"
        "   FROM generate_series(1, $1::int) AS g",
        count,
    )
    await conn.execute(
        "INSERT INTO accounts (id, kind, merchant_id, currency)"
        " SELECT 'acct_idle' || g, 'merchant', 'mch_idle' || g, 'NGN'"
        "   FROM generate_series(1, $1::int) AS g",
        count,
    )
    if analyze:
        await conn.execute("VACUUM ANALYZE merchants, api_keys, accounts, merchant_rate_limits")
