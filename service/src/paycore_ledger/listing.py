"""Lists of payments, refunds, payouts and events: newest first, cursor pagination
(`limit`, `starting_after`, `ending_before`), filters `created[gte]`,
`created[lt]` (Unix seconds) and `status` (`type` for events).

Pages are keyset pages on (created_at, id), the order of the indexes of
sql/0009, so a page reads `limit` + 1 index entries whatever the table's size
(payments of one batch share created_at, the transaction's start; the id
breaks the tie).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from . import ledger, validation
from .ids import valid_id
from .problems import field_error

_UNIX_SECONDS_RE = re.compile(r"[0-9]{1,12}")  # fullmatch; ASCII digits only
MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True)
class Listing:
    """What one kind of list holds."""

    table: str  # a constant of this module, never input
    prefix: str  # of its ids
    what: str  # in messages: "payment"
    statuses: tuple[str, ...]  # values of the filter below
    view: Callable[[asyncpg.Record], dict[str, Any]]
    filter: str = "status"  # the query parameter and column of the equality filter


PAYMENTS = Listing(
    "payments", "pay", "payment", ("succeeded", "requires_review", "rejected"), ledger.payment_view
)
REFUNDS = Listing("refunds", "re", "refund", ("succeeded",), ledger.refund_view)
PAYOUTS = Listing("payouts", "po", "payout", ("succeeded",), ledger.payout_view)


@dataclass(frozen=True)
class PageRequest:
    limit: int
    status: str | None = None  # the value of the listing's filter
    created_gte: datetime | None = None
    created_lt: datetime | None = None
    starting_after: str | None = None
    ending_before: str | None = None


def page_request(request: web.Request, listing: Listing) -> PageRequest:
    """The query string, checked: 422 naming the parameter otherwise."""
    query = request.query
    if "starting_after" in query and "ending_before" in query:
        raise field_error("ending_before", "cannot be combined with starting_after")
    status = query.get(listing.filter)
    if status is not None and status not in listing.statuses:
        raise field_error(listing.filter, f"must be one of {', '.join(listing.statuses)}")
    return PageRequest(
        limit=validation.limit(request),
        status=status,
        created_gte=_unix_time(query, "created[gte]"),
        created_lt=_unix_time(query, "created[lt]"),
        starting_after=query.get("starting_after"),
        ending_before=query.get("ending_before"),
    )


def _unix_time(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not _UNIX_SECONDS_RE.fullmatch(raw) or int(raw) > MAX_UNIX_SECONDS:
        raise field_error(name, "must be a time in Unix seconds (an integer)")
    return datetime.fromtimestamp(int(raw), UTC)


def page_query(
    listing: Listing,
    scope: Mapping[str, str],
    page: PageRequest,
    cursor: tuple[datetime, str] | None = None,
) -> tuple[str, list[Any]]:
    """SQL and arguments of one page. `scope`: equalities every row meets
    (merchant_id, and payment_id for a payment's refunds); `cursor`: the
    (created_at, id) of the starting_after or ending_before object. Only the
    conditions in use are in the text, so each shape gets its own plan."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    conditions = [f"{column} = {arg(value)}" for column, value in scope.items()]
    if page.status is not None:
        conditions.append(f"{listing.filter} = {arg(page.status)}")
    if page.created_gte is not None:
        conditions.append(f"created_at >= {arg(page.created_gte)}")
    if page.created_lt is not None:
        conditions.append(f"created_at < {arg(page.created_lt)}")
    newer = page.ending_before is not None
    if cursor is not None:
        after = ">" if newer else "<"
        conditions.append(f"(created_at, id) {after} ({arg(cursor[0])}, {arg(cursor[1])})")
    # Towards older rows (the list's order) unless paging back to newer ones.
    direction = "ASC" if newer else "DESC"
    sql = (
        f"SELECT * FROM {listing.table} WHERE {' AND '.join(conditions)}"  # noqa: S608 (constants)
        f" ORDER BY created_at {direction}, id {direction} LIMIT {arg(page.limit + 1)}"
    )
    return sql, args


async def page(
    conn: asyncpg.Connection,
    listing: Listing,
    request: web.Request,
    scope: Mapping[str, str],
    scope_name: str = "merchant",
) -> dict[str, Any]:
    """One page, newest first: {"data": [...], "has_more": bool}. has_more
    says whether more objects lie beyond the page in the direction of travel
    (older ones; newer ones when paging with ending_before)."""
    req = page_request(request, listing)
    cursor = None
    for name in ("starting_after", "ending_before"):
        object_id = getattr(req, name)
        if object_id is not None:
            cursor = await _cursor(conn, listing, scope, name, object_id, scope_name)
    sql, args = page_query(listing, scope, req, cursor)
    rows = await conn.fetch(sql, *args)
    has_more = len(rows) > req.limit
    rows = rows[: req.limit]
    if req.ending_before is not None:
        rows.reverse()
    return {"data": [listing.view(row) for row in rows], "has_more": has_more}


async def _cursor(
    conn: asyncpg.Connection,
    listing: Listing,
    scope: Mapping[str, str],
    name: str,
    object_id: str,
    scope_name: str,
) -> tuple[datetime, str]:
    row = None
    if valid_id(listing.prefix, object_id):
        conditions = " AND ".join(f"{column} = ${i}" for i, column in enumerate(scope, 2))
        row = await conn.fetchrow(
            f"SELECT created_at, id FROM {listing.table} WHERE id = $1 AND {conditions}",  # noqa: S608
            object_id,
            *scope.values(),
        )
    if row is None:
        raise field_error(name, f"is not a {listing.what} of this {scope_name}")
    return row["created_at"], row["id"]
