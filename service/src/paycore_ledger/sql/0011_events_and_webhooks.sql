-- Events (a transactional outbox) and webhook endpoints and deliveries
-- (issue 18).
--
-- Every state change of a payment, refund or payout writes an event row in
-- the transaction that makes it: statement-level triggers on payments,
-- refunds and payouts, so every path that writes them (ledger_pay,
-- ledger_pay_batch, ledger_debit_batch, the refund and payout path of
-- ledger.py, the operator's approve and reject) records its events with the
-- money movement, in the same commit, or neither. One INSERT per statement
-- (a batch of 64 payments writes its 64 events in one statement); the
-- triggers run as the owner (SECURITY DEFINER), so the runtime role may read
-- events but never write or alter one.
--
-- The same statement fans each event out to the merchant's webhook
-- endpoints (one delivery row per endpoint), so a delivery exists exactly
-- when its event committed; the delivery worker (webhooks/delivery.py)
-- claims due ones with FOR UPDATE SKIP LOCKED.
--
-- Online-safe: new tables (empty, so their indexes are built in the
-- transaction), new functions, and three triggers, whose CREATE takes a
-- brief SHARE ROW EXCLUSIVE lock on payments, refunds and payouts (no
-- rewrite, no scan). lock_timeout bounds the wait for that lock behind a
-- long transaction, so writers never queue behind this migration for long;
-- if it runs out, migrate fails and is simply run again.
SET LOCAL lock_timeout = '5s';

-- Event ids: opaque, not a sequence (they reveal no volume). The first 12
-- hex digits are the creation time in milliseconds, so new ids land at the
-- right edge of the primary key's index (as a sequence's would, no random
-- page splits); the remaining 20 are random (gen_random_uuid's bits).
CREATE FUNCTION ledger_new_event_id() RETURNS text
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT 'evt_'
        || lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
        || left(replace(gen_random_uuid()::text, '-', ''), 20)
$$;

CREATE TABLE events (
    id          text PRIMARY KEY,
    merchant_id text NOT NULL,  -- the object's merchant (its row references merchants)
    type        text NOT NULL CHECK (type IN (
                    'payment.succeeded', 'payment.requires_review', 'payment.approved',
                    'payment.rejected', 'payment.refunded', 'refund.succeeded',
                    'payout.succeeded')),
    object_id   text NOT NULL,
    data        jsonb NOT NULL,  -- the object as the API shows it, at this state
    -- clock_timestamp() when the change was written, under the object's row
    -- lock: of two events of one object, the later state has the later
    -- created_at (now(), the transaction's start, would not promise that).
    created_at  timestamptz NOT NULL
);
-- GET /v1/events, newest first (listing.py), and its ?type= filter.
CREATE INDEX events_merchant_created_idx ON events (merchant_id, created_at, id);
CREATE INDEX events_merchant_type_created_idx ON events (merchant_id, type, created_at, id);

CREATE TABLE webhook_endpoints (
    id          text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    url         text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- HMAC key of the Paycore-Signature header; the worker needs it in clear.
    secret      text NOT NULL,
    description text CHECK (length(description) <= 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Health, kept by the delivery worker (the failing-endpoints metric).
    consecutive_failures int NOT NULL DEFAULT 0,
    last_success_at      timestamptz,
    last_failure_at      timestamptz
);
CREATE INDEX webhook_endpoints_merchant_created_idx
    ON webhook_endpoints (merchant_id, created_at, id);

CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- internal only
    endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        text NOT NULL REFERENCES events (id),
    state           text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        int NOT NULL DEFAULT 0,
    -- When a worker may next take it; a claim pushes it out by the lease,
    -- so a worker that dies mid-delivery leaves it due again (at least once).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT webhook_deliveries_once UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_backlog_idx
    ON webhook_deliveries (created_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL,
    duration_ms  int NOT NULL,
    status_code  int,  -- the receiver's answer, or NULL ...
    error        text, -- ... and why not (refused address, timeout, connection error)
    CONSTRAINT webhook_attempts_outcome CHECK (status_code IS NOT NULL OR error IS NOT NULL)
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, id);

CREATE FUNCTION ledger_refund_json(r refunds) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', r.id, 'object', 'refund', 'payment_id', r.payment_id, 'amount', r.amount,
        'currency', r.currency, 'status', r.status,
        'created_at', to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

CREATE FUNCTION ledger_payout_json(p payouts) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p.id, 'object', 'payout', 'account_id', p.account_id, 'amount', p.amount,
        'currency', p.currency, 'status', p.status,
        'created_at', to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

-- The statement's events, and one delivery per event and endpoint of its merchant.
CREATE FUNCTION ledger_events_written() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_TABLE_NAME = 'payments' AND TG_OP = 'INSERT' THEN
        WITH ev AS (
            INSERT INTO events (id, merchant_id, type, object_id, data, created_at)
            SELECT ledger_new_event_id(), n.merchant_id, 'payment.' || n.status, n.id,
                   ledger_payment_json(ROW(n.*)::payments), clock_timestamp()
              FROM new_rows n
            RETURNING events.id, events.merchant_id
        )
        INSERT INTO webhook_deliveries (endpoint_id, event_id)
        SELECT w.id, ev.id FROM ev JOIN webhook_endpoints w ON w.merchant_id = ev.merchant_id;
    ELSIF TG_TABLE_NAME = 'payments' THEN
        -- A status change (an operator's decision) or a refund (its
        -- amount_refunded; the refund itself has its refund.succeeded).
        WITH ev AS (
            INSERT INTO events (id, merchant_id, type, object_id, data, created_at)
            SELECT ledger_new_event_id(), n.merchant_id,
                   CASE WHEN n.status = o.status THEN 'payment.refunded'
                        WHEN o.status = 'requires_review' AND n.status = 'succeeded'
                        THEN 'payment.approved' ELSE 'payment.' || n.status END,
                   n.id, ledger_payment_json(ROW(n.*)::payments), clock_timestamp()
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status <> o.status OR n.amount_refunded <> o.amount_refunded
            RETURNING events.id, events.merchant_id
        )
        INSERT INTO webhook_deliveries (endpoint_id, event_id)
        SELECT w.id, ev.id FROM ev JOIN webhook_endpoints w ON w.merchant_id = ev.merchant_id;
    ELSIF TG_TABLE_NAME = 'refunds' THEN
        WITH ev AS (
            INSERT INTO events (id, merchant_id, type, object_id, data, created_at)
            SELECT ledger_new_event_id(), n.merchant_id, 'refund.' || n.status, n.id,
                   ledger_refund_json(ROW(n.*)::refunds), clock_timestamp()
              FROM new_rows n
            RETURNING events.id, events.merchant_id
        )
        INSERT INTO webhook_deliveries (endpoint_id, event_id)
        SELECT w.id, ev.id FROM ev JOIN webhook_endpoints w ON w.merchant_id = ev.merchant_id;
    ELSE
        WITH ev AS (
            INSERT INTO events (id, merchant_id, type, object_id, data, created_at)
            SELECT ledger_new_event_id(), n.merchant_id, 'payout.' || n.status, n.id,
                   ledger_payout_json(ROW(n.*)::payouts), clock_timestamp()
              FROM new_rows n
            RETURNING events.id, events.merchant_id
        )
        INSERT INTO webhook_deliveries (endpoint_id, event_id)
        SELECT w.id, ev.id FROM ev JOIN webhook_endpoints w ON w.merchant_id = ev.merchant_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER payments_events_inserted AFTER INSERT ON payments
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_written();
CREATE TRIGGER payments_events_updated AFTER UPDATE ON payments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_written();
CREATE TRIGGER refunds_events_inserted AFTER INSERT ON refunds
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_written();
CREATE TRIGGER payouts_events_inserted AFTER INSERT ON payouts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_written();
