-- The payment functions of 0002 and 0003, superseded by ledger_pay (0006). They
-- were kept for a rolling upgrade from the release before 0006; the release
-- that shipped 0006 calls only ledger_pay, and nothing calls these any more.
-- ledger_payment_json (0002) stays: ledger_pay renders its answer with it.
DROP FUNCTION ledger_create_payment_with_key(
    bytea, text, bytea, text, text, text, bigint, text, text, jsonb, boolean, text, text);
DROP FUNCTION ledger_create_payment(
    text, text, bytea, text, text, text, bigint, text, text, jsonb, boolean, text, text);
