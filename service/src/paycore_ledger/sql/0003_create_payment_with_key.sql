-- Authentication folded into the payment call: resolve the API key (by its
-- SHA-256, as auth.authenticate does) and create the payment in the same
-- statement, so POST /v1/payments needs one database round trip in all.
-- The key is checked in the same transaction that moves the money, so a
-- revocation takes effect immediately. outcome 'unauthorized': no such key,
-- or revoked (nothing else ran).
CREATE FUNCTION ledger_create_payment_with_key(
    p_key_hash bytea, p_key text, p_fingerprint bytea, p_method text, p_path text,
    p_payment_id text, p_amount bigint, p_currency text, p_description text,
    p_metadata jsonb, p_review boolean, p_system_account text, p_no_account text,
    OUT merchant_id text, OUT outcome text, OUT status_code int, OUT response_body text)
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    SELECT k.merchant_id INTO merchant_id
      FROM api_keys k WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
    IF NOT FOUND THEN
        outcome := 'unauthorized';
        RETURN;
    END IF;
    SELECT c.outcome, c.status_code, c.response_body INTO outcome, status_code, response_body
      FROM ledger_create_payment(merchant_id, p_key, p_fingerprint, p_method, p_path,
                                 p_payment_id, p_amount, p_currency, p_description,
                                 p_metadata, p_review, p_system_account, p_no_account) AS c;
END
$$;
