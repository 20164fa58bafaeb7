-- Group commit (issue 19). ledger_pay_batch does what ledger_pay (0006) does
-- for many payments at once, ledger_debit_batch what the refund and payout
-- path does (idempotency.py + ledger.py) for many refunds and payouts: in one
-- statement and so one transaction and one commit, with set-based SQL (no
-- subtransaction per item). Each item keeps its own answer: an unknown API key, a missing
-- account, a replay or a reused key is that item's outcome and changes
-- nothing for the others; so is a refund's or payout's refusal
-- (insufficient_funds, ...), decided under the row locks in item order.
-- Same invariants (the constraints of 0001-0006 and the entries trigger
-- below), same Idempotency-Key rules, same lock order:
--   1. Idempotency-Key rows, claimed in (merchant_id, key) order;
--   2. refunded payments' rows, in id order;
--   3. merchant accounts, in id order;
--   4. system shards, in id order (3 and 4 by the entries trigger below).
-- A single posting (ledger_pay, or the refund/payout path) locks its key,
-- then its payment row (refund), then one merchant account, then one
-- shard: the same global order, so no two transactions can wait on each
-- other in a cycle.
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
-- ledger_pay's, plus 'busy' (and for refunds 'not_found': no such payment
-- of this merchant, 404, nothing stored).

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

-- Claims the Idempotency-Keys of a batch in lock order, each key for its
-- first item (p_idx ascending): with its final answer if p_status is given
-- (payments), else in progress. Returns the items claimed, and those whose
-- key another transaction holds uncommitted ('busy'; 1 ms lock_timeout, then
-- one subtransaction per key, only on that path).
CREATE FUNCTION ledger_claim_keys(
    p_idx int[], p_merchant text[], p_key text[], p_fingerprint bytea[], p_method text,
    p_path text[], p_status int[], p_body text[], OUT claimed int[], OUT busy int[])
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    v_lock_timeout text := current_setting('lock_timeout');
    v record;
BEGIN
    claimed := '{}';
    busy := '{}';
    PERFORM set_config('lock_timeout', '1ms', true);
    BEGIN
        WITH candidate AS (
            SELECT DISTINCT ON (p_merchant[i], p_key[i]) i, p_idx[i] AS idx
              FROM generate_subscripts(p_idx, 1) AS i
             ORDER BY p_merchant[i], p_key[i], p_idx[i]
        ), inserted AS (
            INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path, state,
                                          status_code, response_body, completed_at)
            SELECT p_merchant[c.i], p_key[c.i], p_fingerprint[c.i], p_method, p_path[c.i],
                   CASE WHEN p_status[c.i] IS NULL THEN 'in_progress' ELSE 'completed' END,
                   p_status[c.i], p_body[c.i],
                   CASE WHEN p_status[c.i] IS NOT NULL THEN now() END
              FROM candidate c
             ORDER BY p_merchant[c.i], p_key[c.i]
            ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING
            RETURNING idempotency_keys.merchant_id, idempotency_keys.key
        )
        SELECT coalesce(array_agg(c.idx), '{}') INTO claimed
          FROM inserted n
          JOIN candidate c ON p_merchant[c.i] = n.merchant_id AND p_key[c.i] = n.key;
    EXCEPTION WHEN lock_not_available THEN
        FOR v IN
            SELECT DISTINCT ON (p_merchant[i], p_key[i]) i
              FROM generate_subscripts(p_idx, 1) AS i
             ORDER BY p_merchant[i], p_key[i], p_idx[i]
        LOOP
            BEGIN
                INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path,
                                              state, status_code, response_body, completed_at)
                VALUES (p_merchant[v.i], p_key[v.i], p_fingerprint[v.i], p_method, p_path[v.i],
                        CASE WHEN p_status[v.i] IS NULL THEN 'in_progress' ELSE 'completed' END,
                        p_status[v.i], p_body[v.i],
                        CASE WHEN p_status[v.i] IS NOT NULL THEN now() END)
                ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
                IF FOUND THEN
                    claimed := claimed || p_idx[v.i];
                END IF;
            EXCEPTION WHEN lock_not_available THEN
                busy := busy || p_idx[v.i];
            END;
        END LOOP;
    END;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
END
$$;

-- What each key already holds, for the items that did not claim theirs (all
-- but p_skip): 'replayed' with the stored answer, 'reused' (another
-- request), 'in_use' (not completed) or 'vanished' (not there: purged, or
-- its claim was undone).
CREATE FUNCTION ledger_key_lookup(
    p_idx int[], p_merchant text[], p_key text[], p_fingerprint bytea[], p_skip int[])
RETURNS TABLE (idx int, outcome text, status_code int, response_body text)
LANGUAGE sql STABLE SET search_path = pg_catalog, public AS $$
    SELECT p_idx[i],
           CASE WHEN k.key IS NULL THEN 'vanished'
                WHEN k.fingerprint <> p_fingerprint[i] THEN 'reused'
                WHEN k.state <> 'completed' THEN 'in_use'
                ELSE 'replayed' END,
           CASE WHEN k.fingerprint = p_fingerprint[i] THEN k.status_code END,
           CASE WHEN k.fingerprint = p_fingerprint[i] THEN k.response_body END
      FROM generate_subscripts(p_idx, 1) AS i
      LEFT JOIN idempotency_keys k ON k.merchant_id = p_merchant[i] AND k.key = p_key[i]
     WHERE NOT p_idx[i] = ANY (p_skip)
$$;

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
      LEFT JOIN api_keys k ON k.key_hash = p_key_hash[i] AND k.revoked_at IS NULL
      LEFT JOIN accounts a ON a.merchant_id = k.merchant_id AND a.currency = p_currency[i];

    -- Claim the keys with their final answers, in lock order.
    SELECT a.*, c.claimed, c.busy INTO v_claim
      FROM (SELECT array_agg(it.idx) AS idx, array_agg(it.merchant_id) AS merchant,
                   array_agg(it.key) AS key, array_agg(it.fingerprint) AS fp,
                   array_agg(p_path) AS path, array_agg(it.status_code) AS status,
                   array_agg(it.response_body) AS body
              FROM unnest(v_items) it WHERE it.outcome IS NULL) a,
           ledger_claim_keys(a.idx, a.merchant, a.key, a.fp, p_method, a.path, a.status,
                             a.body) c;

    -- Post and record the new payments: one journal transaction each, all
    -- entries in one INSERT, so the statement trigger above checks and applies
    -- them together (and locks their accounts in lock order).
    WITH created AS (
        SELECT * FROM unnest(v_items) it
         WHERE it.idx = ANY (v_claim.claimed) AND it.status_code = 201
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

-- Refunds and payouts. p_kind: 'refund' (p_payment_id) or 'payout'
-- (p_currency; p_no_account is its stored 422 when the merchant has none).
-- p_refusals holds the stored 422 answers by code ('insufficient_funds',
-- 'refund_exceeds_payment', 'payment_not_refundable:<status>'). p_shard
-- picks the system shard of the item's currency. Also returns the currency
-- moved (a refund's is its payment's).
CREATE TYPE ledger_debit_item AS (
    idx int, merchant_id text, key text, fingerprint bytea, path text, kind text,
    object_id text, payment_id text, account_id text, amount bigint, currency text,
    shard int, status_code int, response_body text, outcome text
);

-- Locks accounts as a posting would (FOR NO KEY UPDATE, in id order), so a
-- batch can decide insufficient_funds under the lock. SECURITY DEFINER: the
-- runtime role has no UPDATE on accounts, which such a lock requires; it may
-- execute this (migrate --app-role grants it), nobody else.
CREATE FUNCTION ledger_lock_accounts(p_ids text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM 1 FROM accounts a WHERE a.id = ANY (p_ids) ORDER BY a.id FOR NO KEY UPDATE;
END
$$;
REVOKE EXECUTE ON FUNCTION ledger_lock_accounts(text[]) FROM PUBLIC;

CREATE FUNCTION ledger_debit_batch(
    p_key_hash bytea[], p_key text[], p_fingerprint bytea[], p_method text, p_path text[],
    p_kind text[], p_object_id text[], p_payment_id text[], p_amount bigint[],
    p_currency text[], p_shard int[], p_no_account text[], p_refusals jsonb)
RETURNS TABLE (idx int, merchant_id text, outcome text, status_code int, response_body text,
               currency text)
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
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
      LEFT JOIN api_keys k ON k.key_hash = p_key_hash[i] AND k.revoked_at IS NULL
      LEFT JOIN accounts a
        ON p_kind[i] = 'payout' AND a.merchant_id = k.merchant_id AND a.currency = p_currency[i];

    -- 1. Keys, claimed in progress: the answers depend on the rows locked next.
    SELECT a.*, c.claimed, c.busy INTO v_claim
      FROM (SELECT array_agg(it.idx) AS idx, array_agg(it.merchant_id) AS merchant,
                   array_agg(it.key) AS key, array_agg(it.fingerprint) AS fp,
                   array_agg(it.path) AS path
              FROM unnest(v_items) it WHERE it.outcome IS NULL) a,
           ledger_claim_keys(a.idx, a.merchant, a.key, a.fp, p_method, a.path, NULL, NULL) c;

    -- 2. Refunded payments, then 3. merchant accounts, each locked in id order.
    PERFORM 1 FROM payments p
      WHERE p.id IN (SELECT it.payment_id FROM unnest(v_items) it
                      WHERE it.idx = ANY (v_claim.claimed) AND it.kind = 'refund')
      ORDER BY p.id
        FOR UPDATE;
    PERFORM ledger_lock_accounts(array_agg(coalesce(it.account_id, p.account_id)))
       FROM unnest(v_items) it
       LEFT JOIN payments p
         ON it.kind = 'refund' AND p.id = it.payment_id AND p.merchant_id = it.merchant_id
      WHERE it.idx = ANY (v_claim.claimed);

    -- Decide each claimed item in item order, as the single path would one
    -- after the other: not found, not refundable, exceeds the payment, no
    -- account, insufficient funds, or accepted (and then counted against the
    -- balance and the payment for the items after it).
    FOR v IN
        SELECT it.*, p.id AS p_id, p.status AS p_status, p.amount - p.amount_refunded AS p_left,
               p.account_id AS p_account, p.currency AS p_currency, a.balance
          FROM unnest(v_items) it
          LEFT JOIN payments p
            ON it.kind = 'refund' AND p.id = it.payment_id AND p.merchant_id = it.merchant_id
          LEFT JOIN accounts a ON a.id = coalesce(it.account_id, p.account_id)
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
