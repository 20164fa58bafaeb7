-- PayCore ledger: initial schema.
-- Money is BIGINT minor units everywhere. Balances are maintained only by the
-- entries trigger (SECURITY DEFINER), so the runtime role never needs UPDATE on
-- accounts and a stored balance always equals the sum of its entries.

CREATE TABLE merchants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT merchants_name_unique UNIQUE (name),
    CONSTRAINT merchants_name_nonempty CHECK (length(name) BETWEEN 1 AND 200)
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_hash_unique UNIQUE (key_hash)
);
CREATE INDEX api_keys_merchant_idx ON api_keys (merchant_id);

-- Merchant accounts (one per merchant and currency, never below zero) and
-- system accounts (several shards per currency, may go negative: they are the
-- contra side of money entering and leaving the ledger).
CREATE TABLE accounts (
    id          text PRIMARY KEY,
    kind        text NOT NULL,
    merchant_id text REFERENCES merchants (id),
    currency    char(3) NOT NULL,
    shard       smallint,
    balance     bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_kind_valid CHECK (
        (kind = 'merchant' AND merchant_id IS NOT NULL AND shard IS NULL)
        OR (kind = 'system' AND merchant_id IS NULL AND shard IS NOT NULL)
    ),
    CONSTRAINT accounts_currency_format CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT accounts_balance_nonnegative CHECK (kind = 'system' OR balance >= 0),
    CONSTRAINT accounts_merchant_currency_unique UNIQUE (merchant_id, currency),
    CONSTRAINT accounts_system_shard_unique UNIQUE (currency, shard)
);

CREATE TABLE journal_transactions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('payment', 'refund', 'payout')),
    source_id   text NOT NULL,
    currency    char(3) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  bigint NOT NULL REFERENCES journal_transactions (id),
    account_id      text NOT NULL REFERENCES accounts (id),
    direction       text NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount          bigint NOT NULL CHECK (amount > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entries_account_idx ON entries (account_id, id);
CREATE INDEX entries_transaction_idx ON entries (transaction_id);

-- Keep the stored balance equal to the sum of entries. Runs as the owner, so
-- the runtime role needs no UPDATE privilege on accounts. The row lock taken
-- here plus accounts_balance_nonnegative is what makes overdrafts impossible.
CREATE FUNCTION ledger_apply_entry() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    UPDATE accounts
       SET balance = balance + CASE WHEN NEW.direction = 'credit' THEN NEW.amount
                                    ELSE -NEW.amount END
     WHERE id = NEW.account_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER entries_apply_balance AFTER INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_apply_entry();

-- Every transaction balances (debits = credits, one currency, >= 2 entries),
-- checked at commit time so a transaction's entries can be inserted one by one.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    debits bigint;
    credits bigint;
    n_entries int;
    n_currencies int;
    tx_currency char(3);
BEGIN
    SELECT coalesce(sum(e.amount) FILTER (WHERE e.direction = 'debit'), 0),
           coalesce(sum(e.amount) FILTER (WHERE e.direction = 'credit'), 0),
           count(*), count(DISTINCT a.currency), min(a.currency)
      INTO debits, credits, n_entries, n_currencies, tx_currency
      FROM entries e JOIN accounts a ON a.id = e.account_id
     WHERE e.transaction_id = NEW.transaction_id;
    IF debits <> credits OR n_entries < 2 OR n_currencies <> 1
       OR tx_currency <> (SELECT currency FROM journal_transactions WHERE id = NEW.transaction_id)
    THEN
        RAISE EXCEPTION 'journal transaction % does not balance (debits %, credits %)',
            NEW.transaction_id, debits, credits
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_balanced';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER entries_balanced AFTER INSERT ON entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

-- The journal is append-only, whatever role is connected.
CREATE FUNCTION ledger_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER entries_immutable BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER journal_transactions_immutable BEFORE UPDATE OR DELETE ON journal_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER journal_transactions_no_truncate BEFORE TRUNCATE ON journal_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();

CREATE TABLE payments (
    id              text PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants (id),
    account_id      text NOT NULL REFERENCES accounts (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL,
    status          text NOT NULL CHECK (status IN ('succeeded', 'requires_review', 'rejected')),
    amount_refunded bigint NOT NULL DEFAULT 0,
    description     text,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    transaction_id  bigint REFERENCES journal_transactions (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_refund_bounds CHECK (amount_refunded BETWEEN 0 AND amount),
    CONSTRAINT payments_succeeded_posted CHECK (
        (status = 'succeeded') = (transaction_id IS NOT NULL)
    )
);
CREATE INDEX payments_merchant_idx ON payments (merchant_id, created_at);
CREATE INDEX payments_review_idx ON payments (status) WHERE status = 'requires_review';

CREATE TABLE refunds (
    id              text PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants (id),
    payment_id      text NOT NULL REFERENCES payments (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL,
    status          text NOT NULL CHECK (status IN ('succeeded')),
    transaction_id  bigint NOT NULL REFERENCES journal_transactions (id),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment_idx ON refunds (payment_id);

CREATE TABLE payouts (
    id              text PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants (id),
    account_id      text NOT NULL REFERENCES accounts (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL,
    status          text NOT NULL CHECK (status IN ('succeeded')),
    transaction_id  bigint NOT NULL REFERENCES journal_transactions (id),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payouts_merchant_idx ON payouts (merchant_id, created_at);

-- Idempotency keys, scoped per merchant. A row is inserted (the claim) in the
-- same database transaction that performs the request and is completed with
-- the response before commit: while that transaction runs, the uncommitted
-- row is the in-progress state and concurrent requests with the same key
-- wait on it (bounded by lock_timeout, then 409 idempotency_key_in_use).
CREATE TABLE idempotency_keys (
    merchant_id     text NOT NULL REFERENCES merchants (id),
    key             text NOT NULL,
    fingerprint     bytea NOT NULL,
    method          text NOT NULL,
    path            text NOT NULL,
    state           text NOT NULL DEFAULT 'in_progress'
                        CHECK (state IN ('in_progress', 'completed')),
    status_code     int,
    response_body   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (merchant_id, key),
    CONSTRAINT idempotency_completed_has_response CHECK (
        (state = 'completed') = (status_code IS NOT NULL AND response_body IS NOT NULL)
    )
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE reconcile_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ran_at      timestamptz NOT NULL DEFAULT now(),
    ok          boolean NOT NULL,
    problems    int NOT NULL,
    report      jsonb NOT NULL
);
