-- Posting with less work per payment; the invariants of 0001-0005 are unchanged.
-- Measured with one backend calling the payment function (PostgreSQL CPU per
-- call, service/README.md): most of it went to per-statement set-up, above
-- all foreign-key checks (one SPI query and one row lock each, 8 per payment)
-- and the nested function with a separate claim-then-complete UPDATE of the
-- Idempotency-Key row.
--
-- 1. Entries reference their account and journal transaction through the
--    posting triggers instead of foreign keys. The BEFORE INSERT trigger
--    already updates the entry's account row: if there is none, it now
--    raises foreign_key_violation. The per-statement balance check already
--    joins each new entry's journal transaction: a missing one now fails it.
--    The other half of a foreign key (the referenced row cannot go away) is
--    kept by making accounts and merchants permanent for every role: no
--    DELETE, no TRUNCATE, no change of an account's identity (id, kind,
--    merchant, currency, shard); journal transactions were already
--    append-only (0001). Merchant accounts and the journal are therefore
--    referenced exactly as before, at two fewer queries and row locks per
--    entry.
-- 2. A payment references its account and merchant with one composite key,
--    (account_id, merchant_id) -> accounts (id, merchant_id): stronger than
--    the two keys it replaces (the account must be the payment merchant's
--    own), one check instead of two, and its row lock falls on the account
--    row the posting has already locked instead of the merchant row that
--    every concurrent payment of that merchant would lock (MultiXacts).
-- 3. Idempotency keys no longer reference merchants by a foreign key (which
--    locked the merchant's row for each request): the merchant of a key is
--    always the owner of the API key checked in the same statement
--    (api_keys -> merchants is a foreign key) and merchants are permanent.
-- 4. ledger_pay: POST /v1/payments in one flat function. The answer (201
--    payment or 422 account_not_found) is known before anything is written,
--    so the Idempotency-Key row is inserted once, already completed, as the
--    claim: until commit it is invisible and a concurrent duplicate waits on
--    it exactly as before; a failure later in the statement rolls back the
--    key with everything else. Same locks and lock order (key row, merchant
--    account, one system shard). ledger_create_payment(_with_key) stay for
--    a rolling upgrade (hosts still on the previous release).

-- 1. --------------------------------------------------------------------------
ALTER TABLE entries DROP CONSTRAINT entries_account_id_fkey,
                    DROP CONSTRAINT entries_transaction_id_fkey;

CREATE OR REPLACE FUNCTION ledger_apply_entry() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    UPDATE accounts
       SET balance = balance + CASE WHEN NEW.direction = 'credit' THEN NEW.amount
                                    ELSE -NEW.amount END
     WHERE id = NEW.account_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'entry for account %, which does not exist', NEW.account_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'entries_account_exists';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    bad record;
BEGIN
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
    RETURN NULL;
END
$$;

CREATE FUNCTION ledger_reject_removal() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are permanent: % rejected', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER accounts_permanent BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_removal();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_removal();
-- Fires only for an UPDATE that names one of these columns, so the balance
-- updates of the entries trigger do not pay for it.
CREATE TRIGGER accounts_identity_fixed
    BEFORE UPDATE OF id, kind, merchant_id, currency, shard ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_removal();
CREATE TRIGGER merchants_permanent BEFORE DELETE ON merchants
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_removal();
CREATE TRIGGER merchants_no_truncate BEFORE TRUNCATE ON merchants
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_removal();
CREATE TRIGGER merchants_id_fixed BEFORE UPDATE OF id ON merchants
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_removal();

-- 2. --------------------------------------------------------------------------
ALTER TABLE accounts ADD CONSTRAINT accounts_id_merchant_unique UNIQUE (id, merchant_id);
ALTER TABLE payments
    DROP CONSTRAINT payments_account_id_fkey,
    DROP CONSTRAINT payments_merchant_id_fkey,
    ADD CONSTRAINT payments_account_merchant_fkey
        FOREIGN KEY (account_id, merchant_id) REFERENCES accounts (id, merchant_id);

-- 3. --------------------------------------------------------------------------
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_merchant_id_fkey;

-- 4. --------------------------------------------------------------------------
-- outcome: 'unauthorized' (no such key, or revoked: nothing else ran),
-- 'created' (status_code/response_body are the new answer, stored),
-- 'replayed' (the stored answer), 'reused' (same key, other request),
-- 'in_use' (the first request is still running), 'vanished' (purged
-- meanwhile: retry). p_no_account is the 422 answer to store if the merchant
-- has no account in p_currency.
CREATE FUNCTION ledger_pay(
    p_key_hash bytea, p_key text, p_fingerprint bytea, p_method text, p_path text,
    p_payment_id text, p_amount bigint, p_currency text, p_description text,
    p_metadata jsonb, p_review boolean, p_system_account text, p_no_account text,
    OUT merchant_id text, OUT outcome text, OUT status_code int, OUT response_body text)
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    v_payment payments;
    v_key record;
BEGIN
    SELECT k.merchant_id INTO merchant_id
      FROM api_keys k WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
    IF NOT FOUND THEN
        outcome := 'unauthorized';
        RETURN;
    END IF;

    -- The answer first (nothing is locked or written yet).
    SELECT a.id INTO v_payment.account_id FROM accounts a
     WHERE a.merchant_id = ledger_pay.merchant_id AND a.currency = p_currency;
    IF FOUND THEN
        v_payment.id := p_payment_id;
        v_payment.merchant_id := ledger_pay.merchant_id;
        v_payment.amount := p_amount;
        v_payment.currency := p_currency;
        v_payment.status := CASE WHEN p_review THEN 'requires_review' ELSE 'succeeded' END;
        v_payment.amount_refunded := 0;
        v_payment.description := p_description;
        v_payment.metadata := p_metadata;
        v_payment.created_at := now();  -- the transaction's start, as the column default
        v_payment.updated_at := v_payment.created_at;
        status_code := 201;
        response_body := ledger_payment_json(v_payment)::text;
    ELSE
        status_code := 422;
        response_body := p_no_account;
    END IF;

    -- Claim the key with its final answer; a duplicate waits on this row.
    BEGIN
        INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path, state,
                                      status_code, response_body, completed_at)
        VALUES (ledger_pay.merchant_id, p_key, p_fingerprint, p_method, p_path, 'completed',
                ledger_pay.status_code, ledger_pay.response_body, now())
        ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
    EXCEPTION WHEN lock_not_available THEN
        status_code := NULL;
        response_body := NULL;
        outcome := 'in_use';
        RETURN;
    END;
    IF NOT FOUND THEN
        status_code := NULL;
        response_body := NULL;
        SELECT k.fingerprint, k.state, k.status_code, k.response_body INTO v_key
          FROM idempotency_keys k
         WHERE k.merchant_id = ledger_pay.merchant_id AND k.key = p_key;
        IF NOT FOUND THEN
            outcome := 'vanished';
        ELSIF v_key.fingerprint <> p_fingerprint THEN
            outcome := 'reused';
        ELSIF v_key.state <> 'completed' THEN
            outcome := 'in_use';
        ELSE
            outcome := 'replayed';
            status_code := v_key.status_code;
            response_body := v_key.response_body;
        END IF;
        RETURN;
    END IF;

    outcome := 'created';
    IF ledger_pay.status_code = 201 THEN
        IF NOT p_review THEN
            INSERT INTO journal_transactions (kind, source_id, currency)
            VALUES ('payment', p_payment_id, p_currency)
            RETURNING id INTO v_payment.transaction_id;
            -- Merchant entry first: the entries trigger locks in this order.
            INSERT INTO entries (transaction_id, account_id, direction, amount)
            VALUES (v_payment.transaction_id, v_payment.account_id, 'credit', p_amount),
                   (v_payment.transaction_id, p_system_account, 'debit', p_amount);
        END IF;
        INSERT INTO payments SELECT v_payment.*;
    END IF;
END
$$;
