"""GET /v1/payments, /v1/refunds, /v1/payouts, /v1/payments/{id}/refunds
(issue 18): newest first, cursor pages both ways, filters, and a page read
through an index whatever the table's size (EXPLAIN)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from paycore_ledger import listing
from test_api import assert_problem

T0 = 1_800_000_000  # a fixed Unix time for created_at set by hand


async def ids(api, path: str, **params: str | int) -> tuple[list[str], bool]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    r = await api.get(f"{path}?{query}" if query else path)
    assert r.status == 200, r.body
    return [item["id"] for item in r.body["data"]], r.body["has_more"]


async def set_created(owner_conn, table: str, object_ids: list[str], start: int) -> None:
    """created_at = start, start + 1, ... in the order given."""
    for i, object_id in enumerate(object_ids):
        await owner_conn.execute(
            f"UPDATE {table} SET created_at = $2 WHERE id = $1",  # noqa: S608
            object_id,
            datetime.fromtimestamp(start + i, UTC),
        )


async def test_payments_newest_first_pages_both_ways(merchant, new_merchant, owner_conn):
    await merchant.open_account()
    made = [(await merchant.pay(10 + i)).body["id"] for i in range(7)]
    # Three more in one batch: they share created_at, the id breaks the tie.
    batch = await asyncio.gather(*(merchant.pay(100 + i) for i in range(3)))
    made += [r.body["id"] for r in batch]
    other = await new_merchant()
    await other.open_account()
    await other.pay(5)  # never in this merchant's list

    rows = await owner_conn.fetch(
        "SELECT id FROM payments WHERE merchant_id = $1 ORDER BY created_at DESC, id DESC",
        merchant.merchant_id,
    )
    newest_first = [r["id"] for r in rows]
    assert sorted(newest_first) == sorted(made)
    everything, has_more = await ids(merchant, "/v1/payments", limit=100)
    assert (everything, has_more) == (newest_first, False)
    assert (await ids(merchant, "/v1/payments"))[0] == newest_first  # default limit 20

    # Forward, three at a time.
    pages, cursor = [], None
    while True:
        params = {"limit": 3, **({"starting_after": cursor} if cursor else {})}
        page, has_more = await ids(merchant, "/v1/payments", **params)
        pages.append(page)
        cursor = page[-1]
        if not has_more:
            break
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [i for p in pages for i in p] == newest_first
    # Back again with ending_before: the adjacent newer page, newest first.
    page, has_more = await ids(merchant, "/v1/payments", limit=3, ending_before=pages[2][0])
    assert (page, has_more) == (pages[1], True)
    page, has_more = await ids(merchant, "/v1/payments", limit=3, ending_before=pages[1][0])
    assert (page, has_more) == (pages[0], False)
    page, has_more = await ids(merchant, "/v1/payments", limit=5, ending_before=pages[1][0])
    assert (page, has_more) == (pages[0], False)
    assert await ids(merchant, "/v1/payments", ending_before=newest_first[0]) == ([], False)
    assert await ids(merchant, "/v1/payments", starting_after=newest_first[-1]) == ([], False)


async def test_payment_filters(merchant, owner_conn):
    await merchant.open_account("USD")
    made = [(await merchant.pay(1000 + i, "USD")).body for i in range(4)]
    review = (await merchant.pay(60_000, "USD")).body  # above the test threshold
    assert review["status"] == "requires_review"
    all_ids = [p["id"] for p in made] + [review["id"]]
    await set_created(owner_conn, "payments", all_ids, T0)  # review is the newest

    got, _ = await ids(merchant, "/v1/payments", status="requires_review")
    assert got == [review["id"]]
    got, _ = await ids(merchant, "/v1/payments", status="succeeded")
    assert got == [p["id"] for p in reversed(made)]
    assert await ids(merchant, "/v1/payments", status="rejected") == ([], False)
    got, _ = await ids(merchant, "/v1/payments", **{"created[gte]": T0 + 1, "created[lt]": T0 + 3})
    assert got == [made[2]["id"], made[1]["id"]]
    got, more = await ids(
        merchant,
        "/v1/payments",
        limit=1,
        status="succeeded",
        starting_after=made[3]["id"],
        **{"created[gte]": T0 + 1},
    )
    assert (got, more) == ([made[2]["id"]], True)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("status=pending", "status"),
        ("status=", "status"),
        ("created[gte]=-1", "created[gte]"),
        ("created[gte]=1.5", "created[gte]"),
        ("created[lt]=99999999999999", "created[lt]"),
        ("created[lt]=%C2%B2", "created[lt]"),
        ("starting_after=pay_nope", "starting_after"),
        ("ending_before=pay_%00", "ending_before"),
        ("starting_after=re_x", "starting_after"),
        ("starting_after=a&ending_before=b", "ending_before"),
    ],
)
async def test_bad_list_parameters_are_422_naming_them(merchant, query, field):
    r = await merchant.get(f"/v1/payments?{query}")
    assert_problem(r, 422, "validation_error")
    assert r.body["field"] == field


async def test_another_merchants_objects_are_no_cursors(merchant, new_merchant):
    other = await new_merchant()
    await other.open_account()
    theirs = (await other.pay(50)).body
    refund = (await other.refund(theirs["id"], 5)).body
    r = await merchant.get(f"/v1/payments?starting_after={theirs['id']}")
    assert_problem(r, 422, "validation_error")
    r = await merchant.get(f"/v1/refunds?ending_before={refund['id']}")
    assert_problem(r, 422, "validation_error")
    r = await merchant.get(f"/v1/payments/{theirs['id']}/refunds")
    assert_problem(r, 404, "not_found")
    assert await ids(merchant, "/v1/refunds") == ([], False)


async def test_refund_and_payout_lists(merchant, owner_conn):
    await merchant.open_account()
    first = (await merchant.pay(1000)).body
    second = (await merchant.pay(1000)).body
    refunds = [(await merchant.refund(first["id"], 10 + i)).body["id"] for i in range(3)]
    refunds.append((await merchant.refund(second["id"], 5)).body["id"])
    await set_created(owner_conn, "refunds", refunds, T0)
    payouts = [(await merchant.payout(7 + i)).body["id"] for i in range(3)]
    await set_created(owner_conn, "payouts", payouts, T0)

    assert await ids(merchant, "/v1/refunds") == (refunds[::-1], False)
    path = f"/v1/payments/{first['id']}/refunds"
    assert await ids(merchant, path, limit=2) == ([refunds[2], refunds[1]], True)
    assert await ids(merchant, path, starting_after=refunds[1]) == ([refunds[0]], False)
    # A refund of another payment is not a cursor of this payment's list.
    r = await merchant.get(f"{path}?starting_after={refunds[3]}")
    assert_problem(r, 422, "validation_error")
    assert "payment" in r.body["detail"]
    r = await merchant.get(f"/v1/payments/{second['id']}/refunds")
    assert [x["id"] for x in r.body["data"]] == [refunds[3]]
    assert r.body["data"][0]["object"] == "refund"

    assert await ids(merchant, "/v1/payouts") == (payouts[::-1], False)
    assert await ids(merchant, "/v1/payouts", status="succeeded", limit=1) == ([payouts[2]], True)
    got = await ids(merchant, "/v1/payouts", **{"created[lt]": T0 + 1})
    assert got == ([payouts[0]], False)
    r = await merchant.get("/v1/payouts")
    assert r.body["data"][0]["object"] == "payout"


async def test_lists_need_the_key(client):
    for path in ("/v1/payments", "/v1/refunds", "/v1/payouts", "/v1/payments/pay_x/refunds"):
        r = await client.get(path + "?limit=0")
        assert r.status == 401


# ---- bounded cost: the plans ----------------------------------------------------------


@pytest.fixture
async def many_objects(merchant, new_merchant, owner_conn):
    """30 000 payments (1 % under review), refunds and payouts of this merchant
    among as many of another, statistics fresh; all in a transaction of the
    owner's connection that is rolled back afterwards (the shared database,
    and the checks other tests run on it, never see them)."""
    account = await merchant.open_account()
    other = await new_merchant()
    other_account = await other.open_account()
    paid = (await merchant.pay(1000)).body
    for refund_amount in (1, 2, 3):
        assert (await merchant.refund(paid["id"], refund_amount)).status == 201
    assert (await merchant.payout(1)).status == 201
    refund_txn, payout_txn = await owner_conn.fetchrow(
        "SELECT (SELECT max(transaction_id) FROM refunds),"
        " (SELECT max(transaction_id) FROM payouts)"
    )
    transaction = owner_conn.transaction()
    await transaction.start()
    try:
        for who, acct in ((merchant, account), (other, other_account)):
            await owner_conn.execute(
                """
                INSERT INTO payments (id, merchant_id, account_id, amount, currency, status,
                                      created_at)
                SELECT 'pay_bulk_' || $1 || '_' || i, $1, $2, 100, 'NGN',
                       CASE WHEN i % 100 = 0 THEN 'requires_review' ELSE 'rejected' END,
                       to_timestamp($3 + i / 10)
                  FROM generate_series(1, 30000) AS i
                """,
                who.merchant_id,
                acct,
                T0,
            )
            await owner_conn.execute(
                """
                INSERT INTO refunds (id, merchant_id, payment_id, amount, currency, status,
                                     transaction_id, created_at)
                SELECT 're_bulk_' || $1 || '_' || i, $1, 'pay_bulk_' || $1 || '_' || i, 1,
                       'NGN', 'succeeded', $2, to_timestamp($3 + i / 10)
                  FROM generate_series(1, 30000) AS i
                """,
                who.merchant_id,
                refund_txn,
                T0,
            )
            await owner_conn.execute(
                """
                INSERT INTO payouts (id, merchant_id, account_id, amount, currency, status,
                                     transaction_id, created_at)
                SELECT 'po_bulk_' || $1 || '_' || i, $1, $2, 1, 'NGN', 'succeeded', $3,
                       to_timestamp($4 + i / 10)
                  FROM generate_series(1, 30000) AS i
                """,
                who.merchant_id,
                acct,
                payout_txn,
                T0,
            )
        for table in ("payments", "refunds", "payouts"):
            await owner_conn.execute(f"ANALYZE {table}")
        yield merchant, paid["id"]
    finally:
        await transaction.rollback()


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


PLAN_CASES = [
    ("payments", {}, "payments_merchant_created_idx"),
    ("payments", {"status": "requires_review"}, "payments_merchant_status_created_idx"),
    ("payments", {"cursor": "after", "created_lt": T0 + 2000}, "payments_merchant_created_idx"),
    ("payments", {"cursor": "before"}, "payments_merchant_created_idx"),
    ("payments", {"status": "rejected", "cursor": "after"}, None),
    ("refunds", {}, "refunds_merchant_created_idx"),
    ("payment_refunds", {}, "refunds_payment_created_idx"),
    ("payouts", {"cursor": "after"}, "payouts_merchant_created_idx"),
]


async def test_a_page_is_read_through_an_index(many_objects, owner_conn):
    """The query each list runs, EXPLAINed over tens of thousands of rows: one
    index scan in the list's order, no sort and no sequential scan, so a page
    costs its LIMIT whatever the table's size."""
    merchant, payment_id = many_objects
    lists = {
        "payments": listing.PAYMENTS,
        "refunds": listing.REFUNDS,
        "payment_refunds": listing.REFUNDS,
        "payouts": listing.PAYOUTS,
    }
    prefixes = {"payments": "pay", "refunds": "re", "payment_refunds": "re", "payouts": "po"}
    for kind, params, index in PLAN_CASES:
        scope = {"merchant_id": merchant.merchant_id}
        if kind == "payment_refunds":
            scope = {"payment_id": payment_id, "merchant_id": merchant.merchant_id}
        cursor_id = f"{prefixes[kind]}_bulk_{merchant.merchant_id}_15000"
        cursor = None
        if "cursor" in params:
            cursor = (datetime.fromtimestamp(T0 + 1500, UTC), cursor_id)
        created_lt = params.get("created_lt")
        page = listing.PageRequest(
            limit=20,
            status=params.get("status"),
            created_lt=datetime.fromtimestamp(created_lt, UTC) if created_lt else None,
            starting_after=cursor_id if params.get("cursor") == "after" else None,
            ending_before=cursor_id if params.get("cursor") == "before" else None,
        )
        sql, args = listing.page_query(lists[kind], scope, page, cursor)
        explained = await owner_conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        nodes = list(_nodes(json.loads(explained)[0]["Plan"]))
        types = [n["Node Type"] for n in nodes]
        case = (kind, params, types)
        assert not {"Seq Scan", "Sort", "Incremental Sort"} & set(types), case
        scans = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan")]
        assert len(scans) == 1, case
        if index is not None:
            assert scans[0]["Index Name"] == index, (case, scans[0]["Index Name"])
        else:
            assert scans[0]["Index Name"].startswith("payments_merchant_"), case
