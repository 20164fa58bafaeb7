"""Event retention: `paycore-ledger events purge` deletes events older than
PAYCORE_EVENT_RETENTION_DAYS with their finished deliveries and attempts,
keeps an event a delivery still retries, and keeps everything recent."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
from conftest import admin_cli_env, run_cli
from paycore_ledger import config, events

# A month-old history, written as the owner (as sql/0011's triggers would have
# then): an event id starts with the hex milliseconds it was made at.
_OLD_EVENT = """
INSERT INTO events (id, merchant_id, type, object_id, data, created_at)
SELECT 'evt_' || lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || $2,
       $1, 'payout.succeeded', 'po_test', '{}'::jsonb, at
  FROM (SELECT now() - make_interval(days => $3) AS at) t
RETURNING id
"""


async def old_event(owner_conn, merchant_id: str, days: int = 31) -> str:
    return await owner_conn.fetchval(_OLD_EVENT, merchant_id, uuid.uuid4().hex[:20], days)


async def endpoint_of(owner_conn, merchant_id: str) -> str:
    endpoint_id = f"we_{uuid.uuid4().hex[:20]}"
    await owner_conn.execute(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, secret)"
        " VALUES ($1, $2, 'https://receiver.example/hook', 'whsec_test')",
        endpoint_id,
        merchant_id,
    )
    return endpoint_id


async def delivery(owner_conn, endpoint_id: str, event_id: str, state: str) -> int:
    delivery_id = await owner_conn.fetchval(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, state) VALUES ($1, $2, $3)"
        " RETURNING id",
        endpoint_id,
        event_id,
        state,
    )
    await owner_conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempted_at, duration_ms, status_code)"
        " VALUES ($1, now(), 5, 500)",
        delivery_id,
    )
    return delivery_id


async def surviving(owner_conn, merchant_id: str) -> set[str]:
    rows = await owner_conn.fetch("SELECT id FROM events WHERE merchant_id = $1", merchant_id)
    return {r["id"] for r in rows}


async def test_purge_deletes_old_finished_history_and_keeps_retried_and_recent(
    merchant, owner_conn, database
):
    await merchant.open_account()
    await merchant.pay(1_000)  # an event of today
    recent = await surviving(owner_conn, merchant.merchant_id)
    assert len(recent) == 1
    endpoint = await endpoint_of(owner_conn, merchant.merchant_id)
    try:
        _no_deliveries, delivered, failed, retried = [
            await old_event(owner_conn, merchant.merchant_id) for _ in range(4)
        ]
        delivered_id = await delivery(owner_conn, endpoint, delivered, "delivered")
        await delivery(owner_conn, endpoint, failed, "failed")
        await delivery(owner_conn, endpoint, retried, "pending")
        younger = await old_event(owner_conn, merchant.merchant_id, days=29)

        # As on a ledger host: the admin role's credentials, the default retention.
        result = run_cli(["events", "purge"], admin_cli_env(database))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["retention_days"] == 30 and report["deleted"] >= 3

        assert await surviving(owner_conn, merchant.merchant_id) == recent | {retried, younger}
        assert not await owner_conn.fetchval(
            "SELECT count(*) FROM webhook_attempts WHERE delivery_id = $1", delivered_id
        )
        states = await owner_conn.fetch(
            "SELECT state FROM webhook_deliveries WHERE endpoint_id = $1", endpoint
        )
        assert [r["state"] for r in states] == ["pending"]
    finally:
        # Its pending delivery would count in other tests' backlog metrics.
        await owner_conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint)


async def test_purge_deletes_a_backlog_in_batches(merchant, owner_conn, monkeypatch):
    backlog = {await old_event(owner_conn, merchant.merchant_id) for _ in range(7)}
    monkeypatch.setattr(events, "PURGE_BATCH", 3)
    # Batches of 3: a purge that stopped after one batch would leave 4 behind.
    assert await events.purge(owner_conn, 30) >= 7
    assert not backlog & await surviving(owner_conn, merchant.merchant_id)


@pytest.mark.parametrize(
    "env",
    [
        {"PAYCORE_EVENT_RETENTION_DAYS": "3"},  # shorter than the 3 days of retries
        {"PAYCORE_EVENT_RETENTION_DAYS": "10", "PAYCORE_WEBHOOK_RETRY_HOURS": "240"},
        {"PAYCORE_EVENT_RETENTION_DAYS": "0"},
    ],
)
def test_a_retention_shorter_than_the_retries_is_refused(env):
    with pytest.raises(config.ConfigError):
        config.load({"PAYCORE_DATABASE_URL": "postgresql://h/db", **env})


async def test_one_purge_at_a_time(merchant, owner_conn, database):
    await old_event(owner_conn, merchant.merchant_id)
    other = await asyncpg.connect(database.owner_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", events.PURGE_LOCK)
        assert await events.purge(owner_conn, 30) is None
        await other.execute("SELECT pg_advisory_unlock($1)", events.PURGE_LOCK)
        assert await events.purge(owner_conn, 30) >= 1
    finally:
        await other.close()
