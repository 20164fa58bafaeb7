-- Group commit for POST /v1/payments (issue 19). ledger_pay_batch does what
-- ledger_pay (0006) does for many payments at once, in one statement and so
-- one transaction and one commit, with set-based SQL (no subtransaction per
-- item). Each item keeps its own answer: an unknown API key, a missing
-- account, a replay or a reused key is that item's outcome and changes
-- nothing for the others. Same invariants (the constraints of 0001-0006 and
-- the entries trigger below), same Idempotency-Key rules, same lock order:
--   1. Idempotency-Key rows, claimed in (merchant_id, key) order;
--   2. merchant accounts, in id order;
--   3. system shards, in id order
-- (2 and 3 by the entries statement trigger below).
-- A single posting (ledger_pay, or the refund/payout path) locks its key,
-- then one merchant account, then one shard: the same global order, so no
-- two transactions can wait on each other in a cycle.
--
-- A key held by another transaction that has not committed yet (a duplicate
-- request running elsewhere) would make the whole batch wait for it. Keys are
-- therefore claimed with a 1 ms lock_timeout; if that runs out, the keys are
-- claimed one by one, each in a subtransaction (only on that rare path), and
-- an item whose key is still held is answered 'busy': the service sends it
-- alone through ledger_pay, which waits for the other request up to the
-- configured lock_timeout exactly as before. A key that appears twice in one
-- batch is claimed by its first item; the later item then finds it (same
-- transaction) and replays that answer or is told 'reused', as a duplicate
-- that waited for the first request would be; its answer, like every answer
-- of the batch, is sent only after the commit.
--
-- Output: one row per item, `idx` being its 1-based position; outcome as
-- ledger_pay's, plus 'busy'.

-- Balances are applied once per INSERT statement into entries instead of once
-- per entry row: an AFTER STATEMENT trigger (it already checked that every
-- journal transaction of the statement balances) locks the statement's
-- accounts in lock order, merchant accounts then system shards, each by id,
-- and adds each account's net amount in one UPDATE. For a single posting
-- (one merchant account, one shard) that is the order the row trigger of
-- 0004 locked them in; for a batch it is the sorted order above. An entry
-- for an account that does not exist is still a foreign_key_violation, the
-- CHECK accounts_balance_nonnegative still refuses an overdraft (on the
-- account's balance after the statement), and the balance still equals the
-- sum of the entries at every statement boundary. Per payment this saves two
-- trigger calls and two UPDATE statements, the largest item of a batched
-- payment's cost.

DROP TRIGGER entries_apply_balance ON entries;
DROP FUNCTION ledger_apply_entry();
DROP TRIGGER entries_balanced ON entries;
DROP FUNCTION ledger_check_balanced();

CREATE FUNCTION ledger_post_entries() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.account_id INTO bad
      FROM new_entries n LEFT JOIN accounts a ON a.id = n.account_id
     WHERE a.id IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entry for account %, which does not exist', bad.account_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'entries_account_exists';
    END IF;

    SELECT n.transaction_id, t.id IS NULL AS missing,
           coalesce(sum(n.amount) FILTER (WHERE n.direction = 'debit'), 0) AS debits,
           coalesce(sum(n.amount) FILTER (WHERE n.direction = 'credit'), 0) AS credits
      INTO bad
      FROM new_entries n
      JOIN accounts a ON a.id = n.account_id
      LEFT JOIN journal_transactions t ON t.id = n.transaction_id
     GROUP BY n.transaction_id, t.id, t.currency
    HAVING t.id IS NULL
        OR coalesce(sum(n.amount) FILTER (WHERE n.direction = 'debit'), 0)
               <> coalesce(sum(n.amount) FILTER (WHERE n.direction = 'credit'), 0)
        OR count(*) < 2
        OR count(DISTINCT a.currency) <> 1
        OR min(a.currency) <> t.currency
     LIMIT 1;
    IF FOUND AND bad.missing THEN
        RAISE EXCEPTION 'entry for journal transaction %, which does not exist',
            bad.transaction_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'entries_transaction_exists';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'journal transaction % does not balance (debits %, credits %)',
            bad.transaction_id, bad.debits, bad.credits
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_balanced';
    END IF;

    -- Lock order: merchant accounts, then system shards, each by id.
    PERFORM 1 FROM accounts a
      WHERE a.id IN (SELECT n.account_id FROM new_entries n)
      ORDER BY a.kind = 'system', a.id
        FOR NO KEY UPDATE;
    UPDATE accounts a
       SET balance = a.balance + d.net
      FROM (SELECT n.account_id,
                   sum(CASE WHEN n.direction = 'credit' THEN n.amount ELSE -n.amount END) AS net
              FROM new_entries n GROUP BY n.account_id) d
     WHERE a.id = d.account_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER entries_post AFTER INSERT ON entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_post_entries();

CREATE TYPE ledger_pay_item AS (
    idx int, merchant_id text, key text, fingerprint bytea, payment_id text,
    account_id text, amount bigint, currency text, description text, metadata jsonb,
    review boolean, system_account text, status_code int, response_body text,
    outcome text
);

CREATE FUNCTION ledger_pay_batch(
    p_key_hash bytea[], p_key text[], p_fingerprint bytea[], p_method text, p_path text,
    p_payment_id text[], p_amount bigint[], p_currency text[], p_description text[],
    p_metadata jsonb[], p_review boolean[], p_system_account text[], p_no_account text[])
RETURNS TABLE (idx int, merchant_id text, outcome text, status_code int, response_body text)
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    v_items ledger_pay_item[];
    v_claimed int[] := '{}';
    v_busy int[] := '{}';
    v_lock_timeout text := current_setting('lock_timeout');
    v_item ledger_pay_item;
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
      LEFT JOIN api_keys k ON k.key_hash = p_key_hash[i] AND k.revoked_at IS NULL
      LEFT JOIN accounts a ON a.merchant_id = k.merchant_id AND a.currency = p_currency[i];

    -- Claim the keys with their final answers, in lock order.
    PERFORM set_config('lock_timeout', '1ms', true);
    BEGIN
        WITH claimed AS (
            INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path, state,
                                          status_code, response_body, completed_at)
            SELECT DISTINCT ON (it.merchant_id, it.key)
                   it.merchant_id, it.key, it.fingerprint, p_method, p_path, 'completed',
                   it.status_code, it.response_body, now()
              FROM unnest(v_items) it
             WHERE it.outcome IS NULL
             ORDER BY it.merchant_id, it.key, it.idx
            ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING
            RETURNING idempotency_keys.merchant_id, idempotency_keys.key
        )
        SELECT coalesce(array_agg(first.idx), '{}') INTO v_claimed
          FROM claimed c
          CROSS JOIN LATERAL (
              SELECT min(it.idx) AS idx FROM unnest(v_items) it
               WHERE it.merchant_id = c.merchant_id AND it.key = c.key) first;
    EXCEPTION WHEN lock_not_available THEN
        v_claimed := '{}';
        FOR v_item IN
            SELECT DISTINCT ON (it.merchant_id, it.key) it.*
              FROM unnest(v_items) it
             WHERE it.outcome IS NULL
             ORDER BY it.merchant_id, it.key, it.idx
        LOOP
            BEGIN
                INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path,
                                              state, status_code, response_body, completed_at)
                VALUES (v_item.merchant_id, v_item.key, v_item.fingerprint, p_method, p_path,
                        'completed', v_item.status_code, v_item.response_body, now())
                ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
                IF FOUND THEN
                    v_claimed := v_claimed || v_item.idx;
                END IF;
            EXCEPTION WHEN lock_not_available THEN
                v_busy := v_busy || v_item.idx;
            END;
        END LOOP;
    END;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);

    -- Every other item: what its key already holds (committed, or claimed above).
    SELECT array_agg(ROW(
               it.idx, it.merchant_id, it.key, it.fingerprint, it.payment_id, it.account_id,
               it.amount, it.currency, it.description, it.metadata, it.review,
               it.system_account,
               CASE WHEN it.outcome IS NOT NULL OR it.idx = ANY (v_claimed) THEN it.status_code
                    WHEN it.idx = ANY (v_busy) OR k.key IS NULL
                         OR k.fingerprint <> it.fingerprint OR k.state <> 'completed' THEN NULL
                    ELSE k.status_code END,
               CASE WHEN it.outcome IS NOT NULL OR it.idx = ANY (v_claimed) THEN it.response_body
                    WHEN it.idx = ANY (v_busy) OR k.key IS NULL
                         OR k.fingerprint <> it.fingerprint OR k.state <> 'completed' THEN NULL
                    ELSE k.response_body END,
               CASE WHEN it.outcome IS NOT NULL THEN it.outcome
                    WHEN it.idx = ANY (v_claimed) THEN 'created'
                    WHEN it.idx = ANY (v_busy) THEN 'busy'
                    WHEN k.key IS NULL THEN 'vanished'
                    WHEN k.fingerprint <> it.fingerprint THEN 'reused'
                    WHEN k.state <> 'completed' THEN 'in_use'
                    ELSE 'replayed' END
           )::ledger_pay_item ORDER BY it.idx)
      INTO v_items
      FROM unnest(v_items) it
      LEFT JOIN idempotency_keys k
        ON k.merchant_id = it.merchant_id AND k.key = it.key
       AND it.outcome IS NULL AND NOT it.idx = ANY (v_claimed);

    -- Post and record the new payments: one journal transaction each, all
    -- entries in one INSERT, so the statement trigger above checks and applies
    -- them together (and locks their accounts in lock order).
    WITH created AS (
        SELECT * FROM unnest(v_items) it WHERE it.outcome = 'created' AND it.status_code = 201
    ), tx AS (
        INSERT INTO journal_transactions (kind, source_id, currency)
        SELECT 'payment', c.payment_id, c.currency FROM created c WHERE NOT c.review
         ORDER BY c.idx
        RETURNING journal_transactions.id, journal_transactions.source_id
    ), posted AS (
        INSERT INTO entries (transaction_id, account_id, direction, amount)
        SELECT tx.id, leg.account_id, leg.direction, c.amount
          FROM tx JOIN created c ON c.payment_id = tx.source_id
         CROSS JOIN LATERAL (VALUES (c.account_id, 'credit'), (c.system_account, 'debit'))
               AS leg (account_id, direction)
        RETURNING 1
    )
    INSERT INTO payments (id, merchant_id, account_id, amount, currency, status,
                          amount_refunded, description, metadata, transaction_id,
                          created_at, updated_at)
    SELECT c.payment_id, c.merchant_id, c.account_id, c.amount, c.currency,
           CASE WHEN c.review THEN 'requires_review' ELSE 'succeeded' END,
           0, c.description, c.metadata, tx.id, now(), now()
      FROM created c LEFT JOIN tx ON tx.source_id = c.payment_id
     ORDER BY c.idx;

    RETURN QUERY
        SELECT it.idx, it.merchant_id, it.outcome, it.status_code, it.response_body
          FROM unnest(v_items) it ORDER BY it.idx;
END
$$;
