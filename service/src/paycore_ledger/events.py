"""Events: what changed, written by the database in the transaction that
changed it (sql/0011's triggers, a transactional outbox), listed by
GET /v1/events and sent to webhook endpoints.

An event's JSON (the API's view and a webhook's body):
    {"id": "evt_...", "object": "event", "type": "payment.approved",
     "created_at": "2026-12-04T14:03:07.123456Z", "data": {"object": {...}}}
data.object is the payment, refund or payout as GET would have shown it just
after the change. Of two events of one object, the later state has the later
created_at (taken under the object's row lock), which is how a receiver
keeps a late retry of an older state from overwriting a newer one.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from .ledger import _iso
from .listing import Listing
from .maintenance import delete_in_batches, run_alone

TYPES = (
    "payment.succeeded",
    "payment.requires_review",
    "payment.approved",
    "payment.rejected",
    "payment.refunded",
    "refund.succeeded",
    "payout.succeeded",
)


def event_view(row: asyncpg.Record) -> dict[str, Any]:
    data = row["data"]
    if isinstance(data, str):
        data = json.loads(data)
    return {
        "id": row["id"],
        "object": "event",
        "type": row["type"],
        "created_at": _iso(row["created_at"]),
        "data": {"object": data},
    }


EVENTS = Listing("events", "evt", "event", TYPES, event_view, filter="type")


PURGE_BATCH = 5000

# Events older than the retention, with their deliveries (their attempts
# cascade), except an event a delivery is still retrying. The bound on the id
# (ids start with the hex milliseconds they were made at, sql/0011) lets the
# primary key find the old rows at any table size; created_at decides.
_PURGE = """
WITH cutoff AS (
    SELECT now() - make_interval(days => $1) AS at
), doomed AS (
    SELECT e.id
      FROM events e, cutoff
     WHERE e.id < 'evt_' || lpad(to_hex((extract(epoch FROM cutoff.at) * 1000)::bigint), 12, '0')
       AND e.created_at < cutoff.at
       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                        WHERE d.event_id = e.id AND d.state = 'pending')
     ORDER BY e.id
     LIMIT $2
), deliveries AS (
    DELETE FROM webhook_deliveries d USING doomed WHERE d.event_id = doomed.id
)
DELETE FROM events e USING doomed WHERE e.id = doomed.id
"""


# The purge's advisory lock ("payevent"): one at a time, whichever host starts it.
PURGE_LOCK = 0x7061796576656E74


async def purge(conn: asyncpg.Connection, retention_days: int) -> int | None:
    """Delete events older than the retention, PURGE_BATCH at a time; returns
    how many, or None when another purge is running."""
    return await run_alone(
        conn,
        PURGE_LOCK,
        lambda: delete_in_batches(conn, _PURGE, retention_days, batch=PURGE_BATCH),
    )
