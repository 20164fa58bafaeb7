"""Prove the ledger: every transaction balances, every entry belongs to an
existing account and transaction in the transaction's currency, stored balances
equal their entries, every currency nets to zero, refund totals match, and each
payment, refund and payout is posted by exactly the journal transaction it
names (kind, account, amount, currency). Read from one consistent snapshot."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

CHECKS: dict[str, str] = {
    "unbalanced_transactions": """
        SELECT t.id AS transaction_id,
               coalesce(sum(e.amount) FILTER (WHERE e.direction = 'debit'), 0) AS debits,
               coalesce(sum(e.amount) FILTER (WHERE e.direction = 'credit'), 0) AS credits,
               count(e.id) AS entries
          FROM journal_transactions t LEFT JOIN entries e ON e.transaction_id = t.id
         GROUP BY t.id
        HAVING count(e.id) < 2
            OR coalesce(sum(e.amount) FILTER (WHERE e.direction = 'debit'), 0)
               <> coalesce(sum(e.amount) FILTER (WHERE e.direction = 'credit'), 0)
         LIMIT 100
    """,
    "balance_mismatches": """
        SELECT a.id AS account_id, a.balance AS stored, coalesce(s.total, 0) AS from_entries
          FROM accounts a
          LEFT JOIN (
                SELECT account_id,
                       sum(CASE WHEN direction = 'credit' THEN amount ELSE -amount END) AS total
                  FROM entries GROUP BY account_id
          ) s ON s.account_id = a.id
         WHERE a.balance <> coalesce(s.total, 0)
         LIMIT 100
    """,
    # Guarded at insert by the posting triggers (sql/0006); accounts and
    # journal transactions cannot be deleted. Checked here all the same.
    "orphan_entries": """
        SELECT e.id AS entry_id, e.account_id, e.transaction_id
          FROM entries e
          LEFT JOIN accounts a ON a.id = e.account_id
          LEFT JOIN journal_transactions t ON t.id = e.transaction_id
         WHERE a.id IS NULL OR t.id IS NULL
         LIMIT 100
    """,
    "currencies_not_netting_to_zero": """
        SELECT a.currency,
               sum(CASE WHEN e.direction = 'credit' THEN e.amount ELSE -e.amount END) AS net
          FROM entries e JOIN accounts a ON a.id = e.account_id
         GROUP BY a.currency
        HAVING sum(CASE WHEN e.direction = 'credit' THEN e.amount ELSE -e.amount END) <> 0
    """,
    "negative_merchant_balances": """
        SELECT id AS account_id, balance FROM accounts
         WHERE kind = 'merchant' AND balance < 0 LIMIT 100
    """,
    "entries_in_another_currency": """
        SELECT e.id AS entry_id, e.transaction_id,
               a.currency AS account_currency, t.currency AS transaction_currency
          FROM entries e
          JOIN accounts a ON a.id = e.account_id
          JOIN journal_transactions t ON t.id = e.transaction_id
         WHERE a.currency <> t.currency
         LIMIT 100
    """,
    # Each succeeded payment, refund and payout against the journal transaction
    # it names: same kind, id and currency, exactly two entries, the merchant
    # leg on its account for its amount in its direction, the other on a
    # system account. Balance and currency of the legs are checked above.
    "postings_not_matching_their_source": """
        WITH sources AS (
            SELECT 'payment' AS kind, p.id, p.transaction_id, p.account_id,
                   p.amount, p.currency, 'credit' AS merchant_leg
              FROM payments p WHERE p.status = 'succeeded'
            UNION ALL
            SELECT 'refund', r.id, r.transaction_id, p.account_id, r.amount, r.currency, 'debit'
              FROM refunds r JOIN payments p ON p.id = r.payment_id
            UNION ALL
            SELECT 'payout', o.id, o.transaction_id, o.account_id, o.amount, o.currency, 'debit'
              FROM payouts o
        )
        SELECT s.kind, s.id AS source_id, s.transaction_id
          FROM sources s
          LEFT JOIN journal_transactions t ON t.id = s.transaction_id
          LEFT JOIN entries e ON e.transaction_id = s.transaction_id
          LEFT JOIN accounts a ON a.id = e.account_id
         GROUP BY s.kind, s.id, s.transaction_id, s.account_id, s.amount, s.currency,
                  s.merchant_leg, t.kind, t.source_id, t.currency
        HAVING t.kind IS DISTINCT FROM s.kind
            OR t.source_id IS DISTINCT FROM s.id
            OR t.currency IS DISTINCT FROM s.currency
            OR count(e.id) <> 2
            OR count(*) FILTER (WHERE e.account_id = s.account_id
                                  AND e.direction = s.merchant_leg
                                  AND e.amount = s.amount) <> 1
            OR count(*) FILTER (WHERE a.kind = 'system') <> 1
         LIMIT 100
    """,
    "journal_transactions_without_source": """
        SELECT t.id AS transaction_id, t.kind, t.source_id
          FROM journal_transactions t
         WHERE NOT (
                (t.kind = 'payment'
                 AND EXISTS (SELECT 1 FROM payments p WHERE p.transaction_id = t.id))
             OR (t.kind = 'refund'
                 AND EXISTS (SELECT 1 FROM refunds r WHERE r.transaction_id = t.id))
             OR (t.kind = 'payout'
                 AND EXISTS (SELECT 1 FROM payouts o WHERE o.transaction_id = t.id)))
         LIMIT 100
    """,
    "refund_totals_mismatch": """
        SELECT p.id AS payment_id, p.amount_refunded, coalesce(sum(r.amount), 0) AS refunds
          FROM payments p LEFT JOIN refunds r ON r.payment_id = p.id
         GROUP BY p.id
        HAVING p.amount_refunded <> coalesce(sum(r.amount), 0)
         LIMIT 100
    """,
}


async def run(
    conn: asyncpg.Connection, record: bool = True, timeout_ms: int | None = None
) -> dict[str, Any]:
    """`timeout_ms` replaces the connection's statement_timeout for the checks:
    the service's few seconds are for requests, and each check reads whole
    tables (minutes at tens of millions of entries)."""
    findings: dict[str, list[dict[str, Any]]] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if timeout_ms is not None:
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        for name, query in CHECKS.items():
            rows = await conn.fetch(query)
            if rows:
                findings[name] = [dict(r) for r in rows]
        totals = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM journal_transactions) AS transactions,"
            " (SELECT count(*) FROM accounts) AS accounts"
        )
    problems = sum(len(v) for v in findings.values())
    report = {
        "ok": problems == 0,
        "problems": problems,
        "checked": {"transactions": totals["transactions"], "accounts": totals["accounts"]},
        "findings": findings,
    }
    if record:
        await conn.execute(
            "INSERT INTO reconcile_runs (ok, problems, report) VALUES ($1, $2, $3::jsonb)",
            report["ok"],
            problems,
            json.dumps(report, default=str),
        )
    return report


def write_textfile(path: str, report: dict[str, Any] | None) -> None:
    """node-exporter textfile collector output, replaced atomically."""
    ok = 1 if report and report["ok"] else 0
    problems = report["problems"] if report else -1
    text = (
        "# HELP paycore_reconcile_last_run_timestamp_seconds When reconcile last ran\n"
        "# TYPE paycore_reconcile_last_run_timestamp_seconds gauge\n"
        f"paycore_reconcile_last_run_timestamp_seconds {time.time():.3f}\n"
        "# HELP paycore_reconcile_ok 1 if the ledger was consistent at the last run\n"
        "# TYPE paycore_reconcile_ok gauge\n"
        f"paycore_reconcile_ok {ok}\n"
        "# HELP paycore_reconcile_problems Problems found (-1: reconcile could not run)\n"
        "# TYPE paycore_reconcile_problems gauge\n"
        f"paycore_reconcile_problems {problems}\n"
    )
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".paycore-reconcile-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
