-- The batch functions look each item's API key, account and (refunds)
-- payment up by key, whatever the planner believes about the tables' sizes
-- (issue 19).
--
-- A session keeps PL/pgSQL's generic plans. Made while the site had few
-- merchants, such a plan read all of api_keys and accounts once per call and
-- matched every item against all of them (a Materialize under a nested loop:
-- cheaper, for the planner, than 1 000 index lookups, its guess for a batch),
-- and went on doing so as merchants signed up until autovacuum's next
-- ANALYZE; with a few hundred merchants that was a tenth of a batch's cost.
-- Each lookup is now a LATERAL subquery with OFFSET 0, which the planner
-- cannot flatten into a join: it runs once per item, by index
-- (test_posting_plans.py). The settings of 0014 and 0015 are restated, as
-- CREATE OR REPLACE resets them, and plan_cache_mode = force_generic_plan
-- spares the final statement of ledger_pay_batch a custom plan per call.
--
-- ledger_pay_batch also draws each payment's journal transaction id up front
-- (nextval), so the entries and the payment rows take it from the item
-- instead of joining the inserted transactions back to the items by source
-- id (a join of every item with every other). ledger_key_lookup returns at
-- once when every key of the batch was claimed or is busy (the usual case),
-- instead of planning a query for no row.
--
-- Same statements, locks, lock order and answers otherwise: 0008 says what
-- each step does and why.

CREATE OR REPLACE FUNCTION ledger_pay_batch(
    p_key_hash bytea[], p_key text[], p_fingerprint bytea[], p_method text, p_path text,
    p_payment_id text[], p_amount bigint[], p_currency text[], p_description text[],
    p_metadata jsonb[], p_review boolean[], p_system_account text[], p_no_account text[])
RETURNS TABLE (idx int, merchant_id text, outcome text, status_code int, response_body text)
LANGUAGE plpgsql SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_items ledger_pay_item[];
    v_claim record;
BEGIN
    -- Who is asking, which account, and the answer (nothing locked or written yet).
    SELECT array_agg(ROW(
               i, k.merchant_id, p_key[i], p_fingerprint[i], p_payment_id[i], a.id,
               p_amount[i], p_currency[i], p_description[i], p_metadata[i], p_review[i],
               p_system_account[i],
               CASE WHEN a.id IS NOT NULL THEN 201 WHEN k.merchant_id IS NOT NULL THEN 422 END,
               CASE WHEN a.id IS NOT NULL THEN ledger_payment_json(ROW(
                        p_payment_id[i], k.merchant_id, a.id, p_amount[i], p_currency[i],
                        CASE WHEN p_review[i] THEN 'requires_review' ELSE 'succeeded' END,
                        0, p_description[i], p_metadata[i], NULL, now(), now())::payments)::text
                    WHEN k.merchant_id IS NOT NULL THEN p_no_account[i] END,
               CASE WHEN k.merchant_id IS NULL THEN 'unauthorized' END
           )::ledger_pay_item ORDER BY i)
      INTO v_items
      FROM generate_subscripts(p_key_hash, 1) AS i
      LEFT JOIN LATERAL (SELECT k.merchant_id FROM api_keys k
                          WHERE k.key_hash = p_key_hash[i] AND k.revoked_at IS NULL
                         OFFSET 0) k ON true
      LEFT JOIN LATERAL (SELECT a.id FROM accounts a
                          WHERE a.merchant_id = k.merchant_id AND a.currency = p_currency[i]
                         OFFSET 0) a ON true;

    -- Claim the keys with their final answers, in lock order.
    SELECT a.*, c.claimed, c.busy INTO v_claim
      FROM (SELECT array_agg(it.idx) AS idx, array_agg(it.merchant_id) AS merchant,
                   array_agg(it.key) AS key, array_agg(it.fingerprint) AS fp,
                   array_agg(p_path) AS path, array_agg(it.status_code) AS status,
                   array_agg(it.response_body) AS body
              FROM unnest(v_items) it WHERE it.outcome IS NULL) a,
           ledger_claim_keys(a.idx, a.merchant, a.key, a.fp, p_method, a.path, a.status,
                             a.body) c;

    -- Post and record the new payments: one journal transaction each (its id
    -- drawn up front, so no step has to find its payment again), all entries
    -- in one INSERT, so the statement trigger above checks and applies them
    -- together (and locks their accounts in lock order).
    WITH created AS (
        SELECT it.*, CASE WHEN NOT it.review
                          THEN nextval('journal_transactions_id_seq'::regclass) END AS tx_id
          FROM unnest(v_items) it
         WHERE it.idx = ANY (v_claim.claimed) AND it.status_code = 201
         ORDER BY it.idx
    ), tx AS (
        INSERT INTO journal_transactions (id, kind, source_id, currency)
        OVERRIDING SYSTEM VALUE
        SELECT c.tx_id, 'payment', c.payment_id, c.currency FROM created c WHERE NOT c.review
    ), posted AS (
        INSERT INTO entries (transaction_id, account_id, direction, amount)
        SELECT c.tx_id, leg.account_id, leg.direction, c.amount
          FROM created c
         CROSS JOIN LATERAL (VALUES (c.account_id, 'credit'), (c.system_account, 'debit'))
               AS leg (account_id, direction)
         WHERE NOT c.review
    )
    INSERT INTO payments (id, merchant_id, account_id, amount, currency, status,
                          amount_refunded, description, metadata, transaction_id,
                          created_at, updated_at)
    SELECT c.payment_id, c.merchant_id, c.account_id, c.amount, c.currency,
           CASE WHEN c.review THEN 'requires_review' ELSE 'succeeded' END,
           0, c.description, c.metadata, c.tx_id, now(), now()
      FROM created c;

    -- Every other item: what its key holds now (committed before, or claimed
    -- above by an earlier item of this batch).
    RETURN QUERY
        SELECT it.idx, it.merchant_id,
               CASE WHEN it.outcome IS NOT NULL THEN it.outcome
                    WHEN it.idx = ANY (v_claim.claimed) THEN 'created'
                    WHEN it.idx = ANY (v_claim.busy) THEN 'busy'
                    ELSE l.outcome END,
               CASE WHEN it.outcome IS NOT NULL OR it.idx = ANY (v_claim.claimed)
                    THEN it.status_code ELSE l.status_code END,
               CASE WHEN it.outcome IS NOT NULL OR it.idx = ANY (v_claim.claimed)
                    THEN it.response_body ELSE l.response_body END
          FROM unnest(v_items) it
          LEFT JOIN ledger_key_lookup(v_claim.idx, v_claim.merchant, v_claim.key, v_claim.fp,
                                      v_claim.claimed || v_claim.busy) l
            ON l.idx = it.idx
         ORDER BY it.idx;
END
$$;

CREATE OR REPLACE FUNCTION ledger_debit_batch(
    p_key_hash bytea[], p_key text[], p_fingerprint bytea[], p_method text, p_path text[],
    p_kind text[], p_object_id text[], p_payment_id text[], p_amount bigint[],
    p_currency text[], p_shard int[], p_no_account text[], p_refusals jsonb)
RETURNS TABLE (idx int, merchant_id text, outcome text, status_code int, response_body text,
               currency text)
LANGUAGE plpgsql SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_items ledger_debit_item[];
    v_done ledger_debit_item[] := '{}';
    v_claim record;
    v record;
    v_it ledger_debit_item;
    v_balance jsonb := '{}';  -- account id -> balance left, in item order
    v_left jsonb := '{}';  -- payment id -> amount left to refund, in item order
    v_have bigint;
BEGIN
    SELECT array_agg(ROW(
               i, k.merchant_id, p_key[i], p_fingerprint[i], p_path[i], p_kind[i],
               p_object_id[i], p_payment_id[i], a.id, p_amount[i], p_currency[i], p_shard[i],
               NULL, NULL, CASE WHEN k.merchant_id IS NULL THEN 'unauthorized' END
           )::ledger_debit_item ORDER BY i)
      INTO v_items
      FROM generate_subscripts(p_key_hash, 1) AS i
      LEFT JOIN LATERAL (SELECT k.merchant_id FROM api_keys k
                          WHERE k.key_hash = p_key_hash[i] AND k.revoked_at IS NULL
                         OFFSET 0) k ON true
      LEFT JOIN LATERAL (SELECT a.id FROM accounts a
                          WHERE p_kind[i] = 'payout' AND a.merchant_id = k.merchant_id
                            AND a.currency = p_currency[i]
                         OFFSET 0) a ON true;

    -- 1. Keys, claimed in progress: the answers depend on the rows locked next.
    SELECT a.*, c.claimed, c.busy INTO v_claim
      FROM (SELECT array_agg(it.idx) AS idx, array_agg(it.merchant_id) AS merchant,
                   array_agg(it.key) AS key, array_agg(it.fingerprint) AS fp,
                   array_agg(it.path) AS path
              FROM unnest(v_items) it WHERE it.outcome IS NULL) a,
           ledger_claim_keys(a.idx, a.merchant, a.key, a.fp, p_method, a.path, NULL, NULL) c;

    -- 2. Refunded payments, then 3. merchant accounts, each locked in id order.
    PERFORM 1 FROM payments p
      WHERE p.id = ANY (ARRAY(SELECT it.payment_id FROM unnest(v_items) it
                               WHERE it.idx = ANY (v_claim.claimed) AND it.kind = 'refund'))
      ORDER BY p.id
        FOR UPDATE;
    PERFORM ledger_lock_accounts(array_agg(coalesce(it.account_id, p.account_id)))
       FROM unnest(v_items) it
       LEFT JOIN LATERAL (SELECT p.account_id FROM payments p
                           WHERE it.kind = 'refund' AND p.id = it.payment_id
                             AND p.merchant_id = it.merchant_id
                          OFFSET 0) p ON true
      WHERE it.idx = ANY (v_claim.claimed);

    -- Decide each claimed item in item order, as the single path would one
    -- after the other: not found, not refundable, exceeds the payment, no
    -- account, insufficient funds, or accepted (and then counted against the
    -- balance and the payment for the items after it).
    FOR v IN
        SELECT it.*, p.id AS p_id, p.status AS p_status, p.amount - p.amount_refunded AS p_left,
               p.account_id AS p_account, p.currency AS p_currency, a.balance
          FROM unnest(v_items) it
          LEFT JOIN LATERAL (SELECT p.* FROM payments p
                              WHERE it.kind = 'refund' AND p.id = it.payment_id
                                AND p.merchant_id = it.merchant_id
                             OFFSET 0) p ON true
          LEFT JOIN LATERAL (SELECT a.balance FROM accounts a
                              WHERE a.id = coalesce(it.account_id, p.account_id)
                             OFFSET 0) a ON true
         WHERE it.idx = ANY (v_claim.claimed)
         ORDER BY it.idx
    LOOP
        v_it := ROW(v.idx, v.merchant_id, v.key, v.fingerprint, v.path, v.kind, v.object_id,
                    v.payment_id, coalesce(v.account_id, v.p_account),
                    v.amount, coalesce(v.currency, v.p_currency), v.shard, 422, NULL, 'created');
        v_have := coalesce((v_balance ->> v_it.account_id)::bigint, v.balance);
        IF v.kind = 'refund' AND v.p_id IS NULL THEN
            v_it.status_code := NULL;
            v_it.outcome := 'not_found';
        ELSIF v.kind = 'refund' AND v.p_status <> 'succeeded' THEN
            v_it.response_body := p_refusals ->> ('payment_not_refundable:' || v.p_status);
        ELSIF v.kind = 'refund'
              AND v.amount > coalesce((v_left ->> v.p_id)::bigint, v.p_left) THEN
            v_it.response_body := p_refusals ->> 'refund_exceeds_payment';
        ELSIF v_it.account_id IS NULL THEN
            v_it.response_body := p_no_account[v.idx];
        ELSIF v.amount > v_have THEN
            v_it.response_body := p_refusals ->> 'insufficient_funds';
        ELSE
            v_it.status_code := 201;
            v_balance := v_balance || jsonb_build_object(v_it.account_id, v_have - v.amount);
            IF v.kind = 'refund' THEN
                v_left := v_left || jsonb_build_object(
                    v.p_id, coalesce((v_left ->> v.p_id)::bigint, v.p_left) - v.amount);
            END IF;
            v_it.response_body := jsonb_build_object(
                'id', v_it.object_id, 'object', v_it.kind,
                CASE WHEN v.kind = 'refund' THEN 'payment_id' ELSE 'account_id' END,
                CASE WHEN v.kind = 'refund' THEN v_it.payment_id ELSE v_it.account_id END,
                'amount', v_it.amount, 'currency', v_it.currency, 'status', 'succeeded',
                'created_at',
                to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text;
        END IF;
        v_done := v_done || v_it;
    END LOOP;

    -- 4. Post the accepted ones (the entries trigger locks the shards last)
    -- and record them.
    WITH ok AS (
        SELECT * FROM unnest(v_done) d WHERE d.status_code = 201
    ), tx AS (
        INSERT INTO journal_transactions (kind, source_id, currency)
        SELECT ok.kind, ok.object_id, ok.currency FROM ok ORDER BY ok.idx
        RETURNING journal_transactions.id, journal_transactions.source_id
    ), posted AS (
        INSERT INTO entries (transaction_id, account_id, direction, amount)
        SELECT tx.id, leg.account_id, leg.direction, ok.amount
          FROM tx JOIN ok ON ok.object_id = tx.source_id
         CROSS JOIN LATERAL (
               VALUES (ok.account_id, 'debit'),
                      ('acct_sys_' || lower(ok.currency) || '_' || lpad(ok.shard::text, 2, '0'),
                       'credit')) AS leg (account_id, direction)
        RETURNING 1
    ), refunded AS (
        INSERT INTO refunds (id, merchant_id, payment_id, amount, currency, status,
                             transaction_id, created_at)
        SELECT ok.object_id, ok.merchant_id, ok.payment_id, ok.amount, ok.currency,
               'succeeded', tx.id, now()
          FROM ok JOIN tx ON tx.source_id = ok.object_id WHERE ok.kind = 'refund'
        RETURNING 1
    ), paid_out AS (
        INSERT INTO payouts (id, merchant_id, account_id, amount, currency, status,
                             transaction_id, created_at)
        SELECT ok.object_id, ok.merchant_id, ok.account_id, ok.amount, ok.currency,
               'succeeded', tx.id, now()
          FROM ok JOIN tx ON tx.source_id = ok.object_id WHERE ok.kind = 'payout'
        RETURNING 1
    )
    UPDATE payments p
       SET amount_refunded = p.amount_refunded + r.total, updated_at = now()
      FROM (SELECT ok.payment_id, sum(ok.amount) AS total
              FROM ok WHERE ok.kind = 'refund' GROUP BY ok.payment_id) r
     WHERE p.id = r.payment_id;

    -- 5. Store the answers; a refund of no such payment stores nothing (404).
    UPDATE idempotency_keys k
       SET state = 'completed', status_code = d.status_code,
           response_body = d.response_body, completed_at = now()
      FROM unnest(v_done) d
     WHERE d.outcome = 'created' AND k.merchant_id = d.merchant_id AND k.key = d.key;
    DELETE FROM idempotency_keys k
     USING unnest(v_done) d
     WHERE d.outcome = 'not_found' AND k.merchant_id = d.merchant_id AND k.key = d.key;

    -- 6. Every other item: what its key holds now (duplicates inside the batch
    -- see their first item's stored answer).
    RETURN QUERY
        SELECT it.idx, it.merchant_id,
               coalesce(d.outcome, it.outcome,
                        CASE WHEN it.idx = ANY (v_claim.busy) THEN 'busy' END, l.outcome),
               coalesce(d.status_code, l.status_code),
               coalesce(d.response_body, l.response_body),
               d.currency
          FROM unnest(v_items) it
          LEFT JOIN unnest(v_done) d ON d.idx = it.idx
          LEFT JOIN ledger_key_lookup(v_claim.idx, v_claim.merchant, v_claim.key, v_claim.fp,
                                      v_claim.claimed || v_claim.busy) l
            ON l.idx = it.idx
         ORDER BY it.idx;
END
$$;

CREATE OR REPLACE FUNCTION ledger_key_lookup(
    p_idx int[], p_merchant text[], p_key text[], p_fingerprint bytea[], p_skip int[])
RETURNS TABLE (idx int, outcome text, status_code int, response_body text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
#variable_conflict use_column
BEGIN
    IF cardinality(p_skip) >= cardinality(p_idx) THEN
        RETURN;  -- every key was claimed or is busy: nothing to look up
    END IF;
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
