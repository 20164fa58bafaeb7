"""Invariants the database itself enforces, whatever the application does."""

from __future__ import annotations

import asyncpg
import pytest
from paycore_ledger import ledger


async def _funded_account(merchant, amount: int = 1000) -> str:
    account = await merchant.open_account()
    await merchant.pay(amount)
    return account


@pytest.fixture
async def app_conn(database):
    conn = await asyncpg.connect(database.app_url)
    yield conn
    await conn.close()


def _needs_separate_roles(database):
    if database.app_url == database.owner_url:
        pytest.skip("no separate runtime role configured")


async def test_entries_are_immutable_even_for_the_owner(merchant, owner_conn):
    account = await _funded_account(merchant)
    entry_id = await owner_conn.fetchval(
        "SELECT id FROM entries WHERE account_id = $1 LIMIT 1", account
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await owner_conn.execute("UPDATE entries SET amount = 1 WHERE id = $1", entry_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await owner_conn.execute("DELETE FROM entries WHERE id = $1", entry_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await owner_conn.execute("TRUNCATE entries CASCADE")


async def test_runtime_role_has_least_privileges(database, merchant, app_conn):
    _needs_separate_roles(database)
    account = await _funded_account(merchant)
    for statement in (
        "UPDATE entries SET amount = amount WHERE account_id = $1",
        "DELETE FROM entries WHERE account_id = $1",
        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
        "DELETE FROM accounts WHERE id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app_conn.execute(statement, account)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.execute("CREATE TABLE sneaky (id int)")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.execute("ALTER TABLE entries DISABLE TRIGGER ALL")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.execute("DELETE FROM payments")


async def test_unbalanced_insert_rejected(merchant, owner_conn):
    account = await merchant.open_account()
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        async with owner_conn.transaction():
            tx = await owner_conn.fetchval(
                "INSERT INTO journal_transactions (kind, source_id, currency)"
                " VALUES ('payment', 'pay_fake', 'NGN') RETURNING id"
            )
            await owner_conn.execute(
                "INSERT INTO entries (transaction_id, account_id, direction, amount)"
                " VALUES ($1, $2, 'credit', 100)",
                tx,
                account,
            )
    assert await merchant.balance(account) == 0


async def test_each_insert_must_balance_on_its_own(merchant, owner_conn):
    """Entries of one transaction go in together: a debit and its credit sent
    as two statements are refused at the first, never left half-posted."""
    account = await merchant.open_account()
    system = ledger.system_account_id("NGN", 0)
    # Rolled back at the end: a posting with no payment behind it would be a
    # finding for every later reconcile on this database.
    outer = owner_conn.transaction()
    await outer.start()
    try:
        tx = await owner_conn.fetchval(
            "INSERT INTO journal_transactions (kind, source_id, currency)"
            " VALUES ('payment', 'pay_split', 'NGN') RETURNING id"
        )
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with owner_conn.transaction():
                await owner_conn.execute(
                    "INSERT INTO entries (transaction_id, account_id, direction, amount)"
                    " VALUES ($1, $2, 'credit', 100)",
                    tx,
                    account,
                )
        await owner_conn.execute(
            "INSERT INTO entries (transaction_id, account_id, direction, amount)"
            " VALUES ($1, $2, 'credit', 100), ($1, $3, 'debit', 100)",
            tx,
            account,
            system,
        )
        balance = "SELECT balance FROM accounts WHERE id = $1"
        assert await owner_conn.fetchval(balance, account) == 100
    finally:
        await outer.rollback()


async def test_mixed_currency_transaction_rejected(merchant, owner_conn):
    ngn = await merchant.open_account("NGN")
    await merchant.open_account("USD")
    with pytest.raises(asyncpg.CheckViolationError):
        async with owner_conn.transaction():
            tx = await owner_conn.fetchval(
                "INSERT INTO journal_transactions (kind, source_id, currency)"
                " VALUES ('payment', 'pay_fake', 'NGN') RETURNING id"
            )
            await owner_conn.execute(
                "INSERT INTO entries (transaction_id, account_id, direction, amount)"
                " VALUES ($1, $2, 'credit', 100), ($1, $3, 'debit', 100)",
                tx,
                ngn,
                ledger.system_account_id("USD", 0),
            )


async def test_balance_can_never_go_negative(merchant, owner_conn):
    account = await _funded_account(merchant, 100)
    with pytest.raises(asyncpg.CheckViolationError):
        async with owner_conn.transaction():
            await ledger.post(
                owner_conn,
                kind="payout",
                source_id="po_fake",
                currency="NGN",
                merchant_account=account,
                merchant_direction="debit",
                amount=101,
            )
    assert await merchant.balance(account) == 100


async def test_one_account_per_merchant_and_currency_by_constraint(merchant, owner_conn):
    await merchant.open_account("NGN")
    with pytest.raises(asyncpg.UniqueViolationError):
        await owner_conn.execute(
            "INSERT INTO accounts (id, kind, merchant_id, currency)"
            " VALUES ('acct_dup', 'merchant', $1, 'NGN')",
            merchant.merchant_id,
        )


async def test_money_columns_are_bigint_and_amounts_positive(owner_conn):
    types = {
        (r["table_name"], r["column_name"]): r["data_type"]
        for r in await owner_conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE column_name IN ('amount', 'balance', 'amount_refunded')"
            " AND table_schema = 'public'"
        )
    }
    assert types and set(types.values()) == {"bigint"}, types


async def test_system_accounts_are_sharded(merchant, owner_conn):
    await merchant.open_account("EUR")
    for _ in range(40):
        await merchant.pay(1, "EUR")
    used = await owner_conn.fetchval(
        "SELECT count(DISTINCT e.account_id) FROM entries e JOIN accounts a ON a.id = e.account_id"
        " WHERE a.kind = 'system' AND a.currency = 'EUR'"
    )
    assert used > 4


async def test_entries_reference_existing_accounts_and_transactions(merchant, owner_conn):
    """sql/0006: the posting triggers, not foreign keys, check an entry's account
    and journal transaction, and neither can go away afterwards."""
    account = await merchant.open_account()

    async def post(tx_id, accounts):
        async with owner_conn.transaction():
            if tx_id is None:
                tx_id = await owner_conn.fetchval(
                    "INSERT INTO journal_transactions (kind, source_id, currency)"
                    " VALUES ('payment', 'pay_x', 'NGN') RETURNING id"
                )
            await owner_conn.execute(
                "INSERT INTO entries (transaction_id, account_id, direction, amount)"
                " VALUES ($1, $2, 'credit', 5), ($1, $3, 'debit', 5)",
                tx_id,
                *accounts,
            )

    with pytest.raises(asyncpg.ForeignKeyViolationError, match="acct_missing"):
        await post(None, (account, "acct_missing"))
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="journal transaction"):
        await post(987654321, (account, "acct_sys_ngn_00"))
    assert await merchant.balance(account) == 0

    await merchant.pay(10)
    for statement in (
        "DELETE FROM accounts WHERE id = $1",
        "UPDATE accounts SET currency = 'USD' WHERE id = $1",
        "UPDATE accounts SET id = 'acct_renamed' WHERE id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permanent"):
            await owner_conn.execute(statement, account)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permanent"):
        await owner_conn.execute("DELETE FROM merchants WHERE id = $1", merchant.merchant_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permanent"):
        await owner_conn.execute("TRUNCATE accounts CASCADE")
    assert await merchant.balance(account) == 10


async def test_payment_account_must_be_the_merchants_own(new_merchant, owner_conn):
    a, b = await new_merchant(), await new_merchant()
    account_b = await b.open_account()
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await owner_conn.execute(
            "INSERT INTO payments (id, merchant_id, account_id, amount, currency, status)"
            " VALUES ('pay_cross', $1, $2, 5, 'NGN', 'requires_review')",
            a.merchant_id,
            account_b,
        )


async def test_failed_posting_stores_no_idempotency_answer(merchant, monkeypatch, owner_conn):
    """ledger_pay writes the key with its answer before posting: a failure later in
    the statement must roll the key back with everything else."""
    account = await merchant.open_account()
    monkeypatch.setattr(ledger, "pick_system_account", lambda currency: "acct_sys_missing")
    r = await merchant.pay(25, idem="fails-then-works")
    assert r.status == 500 and r.code == "internal_error"
    assert not await owner_conn.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE merchant_id = $1", merchant.merchant_id
    )
    monkeypatch.undo()
    r = await merchant.pay(25, idem="fails-then-works")
    assert r.status == 201 and "Idempotent-Replayed" not in r.headers
    assert await merchant.balance(account) == 25


async def test_reconcile_reports_orphan_entries(database, merchant, owner_conn):
    """Defence in depth for sql/0006: an entry smuggled past the triggers (only a
    superuser can, with session_replication_role) is reported."""
    if database.cluster is None:
        pytest.skip("needs superuser rights on the throwaway cluster")
    from paycore_ledger import reconcile

    account = await merchant.open_account()
    async with owner_conn.transaction():
        await owner_conn.execute("SET LOCAL session_replication_role = replica")
        entry_id = await owner_conn.fetchval(
            "INSERT INTO entries (transaction_id, account_id, direction, amount)"
            " VALUES (987654321, $1, 'credit', 1) RETURNING id",
            account,
        )
    try:
        report = await reconcile.run(owner_conn, record=False)
        assert not report["ok"]
        assert [r["entry_id"] for r in report["findings"]["orphan_entries"]] == [entry_id]
    finally:
        async with owner_conn.transaction():
            await owner_conn.execute("SET LOCAL session_replication_role = replica")
            await owner_conn.execute("DELETE FROM entries WHERE id = $1", entry_id)
    assert (await reconcile.run(owner_conn, record=False))["ok"]


async def test_legacy_payment_functions_are_dropped(owner_conn):
    """sql/0007: only ledger_pay (and the JSON renderer it uses) remain."""
    names = {
        r["proname"]
        for r in await owner_conn.fetch("SELECT proname FROM pg_proc WHERE proname LIKE 'ledger%'")
    }
    assert {"ledger_pay", "ledger_payment_json"} <= names
    assert not names & {"ledger_create_payment", "ledger_create_payment_with_key"}
