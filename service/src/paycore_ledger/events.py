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
