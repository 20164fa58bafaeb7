"""Reconcile ties each payment, refund and payout to the journal transaction it
names, and each entry's currency to its transaction's; one journal transaction
per source object is a unique index. Corruption is simulated as the owner, the
way no role of the running service could cause it."""

from __future__ import annotations

import json

import asyncpg
import pytest
from conftest import admin_cli_env, run_cli
from paycore_ledger import idempotency, ledger, reconcile


async def findings(conn: asyncpg.Connection, check: str) -> list[dict]:
    return [dict(r) for r in await conn.fetch(reconcile.CHECKS[check])]


async def test_a_payment_whose_amount_differs_from_its_posting_is_found(
    database, merchant, owner_conn
):
    env = admin_cli_env(database)
    await merchant.open_account()
    paid = (await merchant.pay(500)).body
    assert run_cli(["reconcile"], env).returncode == 0

    await owner_conn.execute("UPDATE payments SET amount = 501 WHERE id = $1", paid["id"])
    try:
        dirty = run_cli(["reconcile"], env)
        assert dirty.returncode == 1, dirty.stdout
        found = json.loads(dirty.stdout)["findings"]["postings_not_matching_their_source"]
        assert [(f["kind"], f["source_id"]) for f in found] == [("payment", paid["id"])]
    finally:
        await owner_conn.execute("UPDATE payments SET amount = 500 WHERE id = $1", paid["id"])
    assert run_cli(["reconcile"], env).returncode == 0


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE refunds SET currency = 'USD' WHERE id = $1",
        "UPDATE refunds SET transaction_id = transaction_id - 1 WHERE id = $1",
    ],
    ids=["currency", "another transaction"],
)
async def test_a_refund_tied_to_the_wrong_posting_is_found(merchant, owner_conn, tamper):
    await merchant.open_account()
    paid = (await merchant.pay(900)).body
    refund = (await merchant.refund(paid["id"], 300)).body
    assert await findings(owner_conn, "postings_not_matching_their_source") == []
    outer = owner_conn.transaction()
    await outer.start()
    try:
        await owner_conn.execute(tamper, refund["id"])
        found = await findings(owner_conn, "postings_not_matching_their_source")
        assert ("refund", refund["id"]) in {(f["kind"], f["source_id"]) for f in found}
    finally:
        await outer.rollback()


async def test_a_payout_posted_to_another_account_is_found(new_merchant, owner_conn):
    first, second = await new_merchant(), await new_merchant()
    await first.open_account()
    other_account = await second.open_account()
    await first.pay(1000)
    payout = (await first.payout(400)).body
    outer = owner_conn.transaction()
    await outer.start()
    try:
        await owner_conn.execute(
            "UPDATE payouts SET account_id = $2 WHERE id = $1", payout["id"], other_account
        )
        found = await findings(owner_conn, "postings_not_matching_their_source")
        assert ("payout", payout["id"]) in {(f["kind"], f["source_id"]) for f in found}
    finally:
        await outer.rollback()


async def test_a_posting_with_no_source_and_an_entry_in_another_currency_are_found(
    merchant, owner_conn
):
    account = await merchant.open_account("NGN")
    outer = owner_conn.transaction()
    await outer.start()
    try:
        # Past the posting triggers, which refuse both (test_schema.py).
        await owner_conn.execute("SET LOCAL session_replication_role = replica")
        tx = await owner_conn.fetchval(
            "INSERT INTO journal_transactions (kind, source_id, currency)"
            " VALUES ('payout', 'po_nobody', 'USD') RETURNING id"
        )
        await owner_conn.execute(
            "INSERT INTO entries (transaction_id, account_id, direction, amount)"
            " VALUES ($1, $2, 'debit', 7), ($1, $3, 'credit', 7)",
            tx,
            account,
            ledger.system_account_id("USD", 0),
        )
        orphans = await findings(owner_conn, "journal_transactions_without_source")
        assert {"transaction_id": tx, "kind": "payout", "source_id": "po_nobody"} in orphans
        mixed = await findings(owner_conn, "entries_in_another_currency")
        assert [(m["transaction_id"], m["account_currency"]) for m in mixed] == [(tx, "NGN")]
    finally:
        await outer.rollback()


async def test_one_journal_transaction_per_source_object(merchant, owner_conn):
    await merchant.open_account()
    paid = (await merchant.pay(50)).body
    with pytest.raises(asyncpg.UniqueViolationError, match="journal_transactions_kind_source"):
        await owner_conn.execute(
            "INSERT INTO journal_transactions (kind, source_id, currency)"
            " VALUES ('payment', $1, 'NGN')",
            paid["id"],
        )


async def test_reconcile_has_its_own_statement_timeout(database, monkeypatch):
    """The service's statement_timeout (seconds) bounds requests; reconcile
    reads whole tables and runs under PAYCORE_RECONCILE_TIMEOUT_MS instead."""
    slow_check = "SELECT 1 FROM pg_sleep(0.5) WHERE random() < 0"
    monkeypatch.setitem(reconcile.CHECKS, "slow_check", slow_check)
    conn = await asyncpg.connect(database.app_url, server_settings={"statement_timeout": "100"})
    try:
        with pytest.raises(asyncpg.QueryCanceledError):
            await reconcile.run(conn, record=False)
        report = await reconcile.run(conn, record=False, timeout_ms=5000)
        assert "slow_check" not in report["findings"]
    finally:
        await conn.close()


async def test_purge_deletes_a_backlog_in_batches(merchant, owner_conn, monkeypatch):
    await merchant.open_account()
    for n in range(7):
        await merchant.pay(1, idem=f"old-{n}")
    await merchant.pay(1, idem="fresh")
    await owner_conn.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
        " WHERE merchant_id = $1 AND key LIKE 'old-%'",
        merchant.merchant_id,
    )
    # Batches of 3: a purge that stopped after one batch would leave 4 behind.
    monkeypatch.setattr(idempotency, "PURGE_BATCH", 3)
    assert await idempotency.purge(owner_conn, 24) >= 7
    keys = await owner_conn.fetch(
        "SELECT key FROM idempotency_keys WHERE merchant_id = $1", merchant.merchant_id
    )
    assert [k["key"] for k in keys] == ["fresh"]
