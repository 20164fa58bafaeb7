-- POST /v1/payments in one statement (one round trip, one implicit
-- transaction): claim the Idempotency-Key, find the merchant account, post the
-- balanced transaction, record the payment and store the answer, or report
-- what the key already holds. Same steps, locks and lock order as the
-- general path in idempotency.py and ledger.py (key row, merchant account,
-- one system shard); the invariants stay in the constraints and triggers of
-- 0001. SECURITY INVOKER: it runs with the caller's (runtime role's) rights.

-- The JSON of a payment, as ledger.payment_view renders it.
CREATE FUNCTION ledger_payment_json(p payments) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p.id,
        'object', 'payment',
        'account_id', p.account_id,
        'amount', p.amount,
        'currency', p.currency,
        'status', p.status,
        'amount_refunded', p.amount_refunded,
        'description', p.description,
        'metadata', p.metadata,
        'created_at', to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )
$$;

-- outcome: 'created' (status_code/response_body are the new answer, stored),
-- 'replayed' (the stored answer), 'reused' (same key, other request),
-- 'in_use' (the first request is still running), 'vanished' (purged meanwhile:
-- retry). p_no_account is the 422 answer to store if the merchant has no
-- account in p_currency.
CREATE FUNCTION ledger_create_payment(
    p_merchant_id text, p_key text, p_fingerprint bytea, p_method text, p_path text,
    p_payment_id text, p_amount bigint, p_currency text, p_description text,
    p_metadata jsonb, p_review boolean, p_system_account text, p_no_account text,
    OUT outcome text, OUT status_code int, OUT response_body text)
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    v_account text;
    v_tx bigint;
    v_payment payments;
    v_key record;
BEGIN
    BEGIN
        INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path)
        VALUES (p_merchant_id, p_key, p_fingerprint, p_method, p_path)
        ON CONFLICT (merchant_id, key) DO NOTHING;
    EXCEPTION WHEN lock_not_available THEN
        outcome := 'in_use';
        RETURN;
    END;
    IF NOT FOUND THEN
        SELECT k.fingerprint, k.state, k.status_code, k.response_body INTO v_key
          FROM idempotency_keys k WHERE k.merchant_id = p_merchant_id AND k.key = p_key;
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
    SELECT a.id INTO v_account FROM accounts a
     WHERE a.merchant_id = p_merchant_id AND a.currency = p_currency;
    IF NOT FOUND THEN
        status_code := 422;
        response_body := p_no_account;
    ELSE
        IF NOT p_review THEN
            INSERT INTO journal_transactions (kind, source_id, currency)
            VALUES ('payment', p_payment_id, p_currency) RETURNING id INTO v_tx;
            -- Merchant entry first: the entries trigger locks in this order.
            INSERT INTO entries (transaction_id, account_id, direction, amount)
            VALUES (v_tx, v_account, 'credit', p_amount),
                   (v_tx, p_system_account, 'debit', p_amount);
        END IF;
        INSERT INTO payments (id, merchant_id, account_id, amount, currency, status,
                              description, metadata, transaction_id)
        VALUES (p_payment_id, p_merchant_id, v_account, p_amount, p_currency,
                CASE WHEN p_review THEN 'requires_review' ELSE 'succeeded' END,
                p_description, p_metadata, v_tx)
        RETURNING * INTO v_payment;
        status_code := 201;
        response_body := ledger_payment_json(v_payment)::text;
    END IF;
    UPDATE idempotency_keys
       SET state = 'completed', status_code = ledger_create_payment.status_code,
           response_body = ledger_create_payment.response_body, completed_at = now()
     WHERE merchant_id = p_merchant_id AND key = p_key;
END
$$;
