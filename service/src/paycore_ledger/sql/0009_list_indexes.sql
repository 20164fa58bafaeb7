-- paycore: no transaction
-- Indexes of the list endpoints (GET /v1/payments, /v1/refunds, /v1/payouts,
-- /v1/payments/{id}/refunds): newest first by (created_at, id), a page costs
-- LIMIT rows whatever the table's size. Online-safe: each is built
-- CONCURRENTLY, outside a transaction, so payments keep flowing while it
-- builds; the runner drops one left invalid by an interrupted run first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS payments_merchant_created_idx
    ON payments (merchant_id, created_at, id);
-- ?status= (a rare status must not mean scanning past every other one).
CREATE INDEX CONCURRENTLY IF NOT EXISTS payments_merchant_status_created_idx
    ON payments (merchant_id, status, created_at, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS refunds_merchant_created_idx
    ON refunds (merchant_id, created_at, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS refunds_payment_created_idx
    ON refunds (payment_id, created_at, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS payouts_merchant_created_idx
    ON payouts (merchant_id, created_at, id);
-- Superseded by the indexes above (each is their prefix): one index fewer
-- to maintain per posting.
DROP INDEX CONCURRENTLY IF EXISTS payments_merchant_idx;
DROP INDEX CONCURRENTLY IF EXISTS payouts_merchant_idx;
DROP INDEX CONCURRENTLY IF EXISTS refunds_payment_idx;
