-- Plans of the posting functions that stay good as the ledger grows.
--
-- 1. Index lookups only. PL/pgSQL plans a statement once per session (a
-- statement without parameters at its first run, one with parameters after
-- five) and keeps the plan. A session that first posts while a table is
-- small, as on a new site, can keep a plan that reads all of a table that
-- grows by thousands of rows a second (journal_transactions,
-- idempotency_keys, payments) -- a sequential scan, or a whole index as the
-- inner side of a hash or merge join -- so every posting reads the whole
-- table until autovacuum's next ANALYZE invalidates the plan. Under the
-- benchmark's load (service/README.md) the balance check of
-- ledger_post_entries, planned that way, took 0.8-3 ms per batch instead of
-- 0.045 and the throughput fell by a quarter or more. Every statement of
-- these functions reads those tables by key, so an index is always the right
-- access path (enable_seqscan off: tables without a usable index are still
-- scanned, the planner only stops preferring it). Where a statement joins
-- the rows it is given (a statement's new entries, a batch's items) to such a
-- table, a nested loop of index lookups is always the right join: its outer
-- side is bounded by the batch, its inner side is not (hash and merge joins
-- off, in the entries trigger and the key lookup).
ALTER FUNCTION ledger_post_entries() SET enable_seqscan = off;
ALTER FUNCTION ledger_post_entries() SET enable_hashjoin = off;
ALTER FUNCTION ledger_post_entries() SET enable_mergejoin = off;
ALTER FUNCTION ledger_claim_keys(int[], text[], text[], bytea[], text, text[], int[], text[])
    SET enable_seqscan = off;
ALTER FUNCTION ledger_pay(bytea, text, bytea, text, text, text, bigint, text, text, jsonb,
                          boolean, text, text)
    SET enable_seqscan = off;
ALTER FUNCTION ledger_pay_batch(bytea[], text[], bytea[], text, text, text[], bigint[], text[],
                                text[], jsonb[], boolean[], text[], text[])
    SET enable_seqscan = off;
ALTER FUNCTION ledger_debit_batch(bytea[], text[], bytea[], text, text[], text[], text[], text[],
                                  bigint[], text[], int[], text[], jsonb)
    SET enable_seqscan = off;

-- 2. ledger_key_lookup (0008) in PL/pgSQL instead of SQL: a SQL function
-- that cannot be inlined (it has SET clauses) is planned again on every
-- call; planning took 0.075 ms of the 0.08 ms each call cost, once per
-- payment batch and per refund and payout batch. Same signature, same rows.
CREATE OR REPLACE FUNCTION ledger_key_lookup(
    p_idx int[], p_merchant text[], p_key text[], p_fingerprint bytea[], p_skip int[])
RETURNS TABLE (idx int, outcome text, status_code int, response_body text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT p_idx[i],
           CASE WHEN k.key IS NULL THEN 'vanished'
                WHEN k.fingerprint <> p_fingerprint[i] THEN 'reused'
                WHEN k.state <> 'completed' THEN 'in_use'
                ELSE 'replayed' END,
           CASE WHEN k.fingerprint = p_fingerprint[i] THEN k.status_code END,
           CASE WHEN k.fingerprint = p_fingerprint[i] THEN k.response_body END
      FROM generate_subscripts(p_idx, 1) AS i
      LEFT JOIN idempotency_keys k ON k.merchant_id = p_merchant[i] AND k.key = p_key[i]
     WHERE NOT p_idx[i] = ANY (p_skip);
END
$$;
