-- A balance is the sum of its account's entries, so every account starts at 0:
-- only the entries trigger (ledger_apply_entry, SECURITY DEFINER) changes it.
-- The runtime role also loses INSERT on the balance column (migrations.py
-- RUNTIME_GRANTS); this trigger holds for every role, the owner included.
CREATE FUNCTION ledger_account_opens_at_zero() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'account % must be opened with balance 0, not %', NEW.id, NEW.balance
        USING ERRCODE = 'check_violation', CONSTRAINT = 'accounts_open_at_zero';
END
$$;
CREATE TRIGGER accounts_open_at_zero BEFORE INSERT ON accounts
    FOR EACH ROW WHEN (NEW.balance <> 0)
    EXECUTE FUNCTION ledger_account_opens_at_zero();
