-- paycore: no transaction
-- A backstop against double posting: one journal transaction per payment,
-- refund and payout, whatever a future code path does. Built CONCURRENTLY so
-- postings continue meanwhile; should the ledger already hold a duplicate,
-- the build fails naming the key, and reconcile's
-- journal_transactions_without_source finding shows the extra transaction.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS journal_transactions_kind_source_unique
    ON journal_transactions (kind, source_id);
