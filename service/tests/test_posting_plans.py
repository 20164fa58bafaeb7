"""Posting plans stay index lookups as the ledger grows (sql/0014, 0015, 0016).

PL/pgSQL keeps a statement's plan for the session. A session that first
posts while the ledger is small (a new site) must not keep a plan that scans
a table growing by thousands of rows a second (a sequential scan, or a whole
index as one side of a hash or merge join): every posting would then read all
of it. auto_explain shows the plans the posting functions actually run, with
the rows each step read.
"""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest
from idle_merchants import add_idle_merchants
from ledger_setup import merchant_with_account, new_payment
from paycore_ledger import debit_call, migrations, payment_call

# Tables that grow with every posting.
GROWING = ("journal_transactions", "entries", "payments", "idempotency_keys", "events")
# A plan step over one of them, with the rows it read per loop.
_STEP_ON_GROWING = re.compile(rf"\bon ({'|'.join(GROWING)})\b.*\(actual rows=(\d+) loops=\d+\)")
# What reading by key may return for a batch of 8 payments (2 entries each).
_BY_KEY_AT_MOST = 16
# Tables that grow with the merchants (and payments, with the ledger).
PER_MERCHANT = ("api_keys", "accounts", "payments")
_STEP_ON_PER_MERCHANT = re.compile(
    rf"\bon ({'|'.join(PER_MERCHANT)})\b.*\(actual rows=(\d+) loops=\d+\)"
)
# PL/pgSQL plans a statement for its parameters this many times, then may
# keep one generic plan for the rest of the session.
_CUSTOM_PLANS_FIRST = 5


async def _post_batch(conn: asyncpg.Connection, api_key: str) -> list[str]:
    """Eight payments in one ledger_pay_batch call; their ids."""
    results = await payment_call.call(conn, [new_payment(api_key) for _ in range(8)])
    assert [(outcome, status) for _, _, outcome, status, _ in results] == [("created", 201)] * 8
    return [payment_id for payment_id, *_ in results]


async def _refund_batch(conn: asyncpg.Connection, api_key: str, payment_ids: list[str]) -> None:
    """One refund of each payment in one ledger_debit_batch call."""
    refunds = [
        debit_call.debit_request(
            "POST",
            f"/v1/payments/{payment_id}/refunds",
            token=api_key,
            key=uuid.uuid4().hex,
            body={"amount": 1},
            kind="refund",
            amount=1,
            payment_id=payment_id,
        )
        for payment_id in payment_ids
    ]
    results = await debit_call.call_batch(conn, refunds)
    assert [(outcome, status) for _, _, outcome, status, *_ in results] == [("created", 201)] * 8


async def _log_plans(conn: asyncpg.Connection, plans: list[str]) -> None:
    """auto_explain the statements `conn` runs, nested ones too, into `plans`."""
    await conn.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on;"
        " SET auto_explain.log_timing = off; SET client_min_messages = log"
    )
    conn.add_log_listener(lambda _conn, message: plans.append(message.message))


def _steps_reading_more_than_a_batch(nested: str, steps: re.Pattern) -> list[str]:
    """The plan steps matched by `steps` that read more rows than a batch holds."""
    read = [(step.group(0), int(step.group(2))) for step in steps.finditer(nested)]
    assert read, nested
    return [line for line, rows in read if rows > _BY_KEY_AT_MOST]


@pytest.fixture
async def small_ledger(scratch_database):
    """A new, migrated database with one merchant and its NGN account."""
    conn = await asyncpg.connect(scratch_database)
    try:
        await migrations.migrate(conn, None, ("NGN",))
        api_key = await merchant_with_account(conn, "plans")
    finally:
        await conn.close()
    return scratch_database, api_key


async def test_a_session_that_first_posted_on_a_small_ledger_keeps_index_plans(small_ledger):
    url, api_key = small_ledger
    poster = await asyncpg.connect(url)
    grower = await asyncpg.connect(url)
    plans: list[str] = []
    try:
        await _log_plans(poster, plans)
        # The first postings plan the functions' statements on near-empty tables.
        for _ in range(6):
            await _post_batch(poster, api_key)
        # The ledger grows (no ANALYZE: nothing tells the session's plans).
        await grower.execute(
            "INSERT INTO journal_transactions (kind, source_id, currency)"
            " SELECT 'payment', 'pay_grown_' || g, 'NGN' FROM generate_series(1, 50000) AS g"
        )
        plans.clear()
        await _post_batch(poster, api_key)
    finally:
        await poster.close()
        await grower.close()
    nested = "\n".join(plans)
    assert "journal_transactions" in nested  # the entries trigger's plans were seen
    assert _steps_reading_more_than_a_batch(nested, _STEP_ON_GROWING) == []


async def test_batches_read_only_their_own_merchants_however_many_there_are(small_ledger):
    """A batch's items are joined to api_keys, accounts and payments by key: with
    thousands of merchants, a batch still reads only its own rows (sql/0015)."""
    url, api_key = small_ledger
    conn = await asyncpg.connect(url)
    plans: list[str] = []
    try:
        await add_idle_merchants(conn, 3000)
        payment_ids = await _post_batch(conn, api_key)
        await _log_plans(conn, plans)
        await _post_batch(conn, api_key)
        await _refund_batch(conn, api_key, payment_ids)
    finally:
        await conn.close()
    nested = "\n".join(plans)
    assert "ledger_pay_batch" in nested and "ledger_debit_batch" in nested
    assert _steps_reading_more_than_a_batch(nested, _STEP_ON_PER_MERCHANT) == []


async def test_a_session_that_first_posted_with_few_merchants_keeps_reading_by_key(small_ledger):
    """The generic plans a session keeps were made while the site had one
    merchant; then hundreds sign up before autovacuum analyzes the tables.
    A batch still looks each item's key, account and payment up by key rather
    than reading all of them for every item (sql/0016)."""
    url, api_key = small_ledger
    conn = await asyncpg.connect(url)
    plans: list[str] = []
    try:
        payment_ids = await _post_batch(conn, api_key)
        await conn.execute("VACUUM ANALYZE")
        for _ in range(_CUSTOM_PLANS_FIRST + 1):
            await _post_batch(conn, api_key)
            await _refund_batch(conn, api_key, payment_ids)
        await add_idle_merchants(conn, 300, analyze=False)
        await _log_plans(conn, plans)
        await _post_batch(conn, api_key)
        await _refund_batch(conn, api_key, payment_ids)
    finally:
        await conn.close()
    nested = "\n".join(plans)
    assert "ledger_pay_batch" in nested and "ledger_debit_batch" in nested
    assert _steps_reading_more_than_a_batch(nested, _STEP_ON_PER_MERCHANT) == []
