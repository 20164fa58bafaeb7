-- Per-merchant rate limits (issue 18), counted in PostgreSQL so every ledger
-- process on every host spends the same budget.
--
-- The design: GCRA (the generic cell rate algorithm, a token bucket written
-- as one timestamp). Each merchant has one row holding its "theoretical
-- arrival time" tat_us; a request at time now is allowed while
-- greatest(tat, now) + 1/rate - now <= burst/rate, and allowing it moves tat
-- on by 1/rate. So the state is one bigint per merchant, there is no refill
-- job, and a check is one UPDATE of one row. A fixed-window counter costs the
-- same but lets 2x the limit through across a window boundary; a sliding
-- log costs a row per request. Chosen as the cheapest correct one.
--
-- Online-safe: a new table, a new function, and a trigger on merchants (its
-- creation briefly blocks merchant inserts only); no rewrite of anything.
--
-- Every merchant has a row (backfilled here, then by the trigger for every new
-- merchant, whichever release's CLI creates it); merchants are never deleted.
-- per_second/burst NULL: the service's defaults (PAYCORE_RATE_LIMIT_*);
-- set by `paycore-ledger merchants rate-limit`.
CREATE TABLE merchant_rate_limits (
    merchant_id text PRIMARY KEY REFERENCES merchants (id),
    per_second  integer,
    burst       integer,
    tat_us      bigint NOT NULL DEFAULT 0,
    CONSTRAINT merchant_rate_limits_per_second_range CHECK (per_second BETWEEN 1 AND 1000000),
    CONSTRAINT merchant_rate_limits_burst_range CHECK (burst BETWEEN 1 AND 1000000)
) WITH (fillfactor = 50);  -- room on the page for HOT updates of tat_us

INSERT INTO merchant_rate_limits (merchant_id)
SELECT id FROM merchants ON CONFLICT DO NOTHING;

CREATE FUNCTION ledger_merchant_rate_limit_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO merchant_rate_limits (merchant_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER merchants_rate_limit_row AFTER INSERT ON merchants
    FOR EACH ROW EXECUTE FUNCTION ledger_merchant_rate_limit_row();

-- One check for each of p_key_hashes (the API keys of one or more requests,
-- the same key possibly several times): authenticates the key (merchant_id
-- NULL: no such key, or revoked) and spends one unit of its merchant's
-- budget if one is left. Items of one merchant are served in idx order; the
-- merchant rows are locked in merchant_id order, so two calls cannot
-- deadlock. Output per item (1-based idx): whether it is allowed, the
-- merchant's burst (RateLimit-Limit), the units left after it, the µs until
-- the next unit (when refused) and until the bucket is full again.
--
-- The service calls it alone, on a connection of its own whose session has
-- synchronous_commit off (ratelimit.py): no WAL flush to wait for, and the
-- row lock goes at once. A crash may forget the last few hundred ms of
-- spending; no money depends on it.
CREATE FUNCTION ledger_rate_limit(p_key_hashes bytea[], p_per_second integer, p_burst integer)
RETURNS TABLE (idx integer, merchant_id text, allowed boolean, quota integer,
               remaining integer, retry_after_us bigint, reset_us bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    v_now bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
BEGIN
    RETURN QUERY
    WITH items AS (
        SELECT i.idx::integer AS idx, k.merchant_id,
               row_number() OVER (PARTITION BY k.merchant_id ORDER BY i.idx) AS nth
          FROM unnest(p_key_hashes) WITH ORDINALITY AS i (key_hash, idx)
          LEFT JOIN api_keys k ON k.key_hash = i.key_hash AND k.revoked_at IS NULL
    ), wanted AS (
        SELECT w.merchant_id, count(*)::integer AS n
          FROM items w WHERE w.merchant_id IS NOT NULL GROUP BY w.merchant_id
    ), locked AS (
        SELECT r.merchant_id, w.n,
               greatest(r.tat_us, v_now) AS tat,
               coalesce(r.per_second, p_per_second) AS per_second,
               coalesce(r.burst, p_burst) AS burst
          FROM merchant_rate_limits r JOIN wanted w ON w.merchant_id = r.merchant_id
         ORDER BY r.merchant_id
           FOR UPDATE OF r
    ), decided AS (
        -- available: whole units left now, 0..burst (a lowered burst can
        -- leave tat further ahead than the new burst allows: 0 then).
        SELECT l.*, a.available, least(l.n, a.available) AS granted
          FROM locked l,
               LATERAL (SELECT greatest(0, least(l.burst,
                   floor(l.burst - (l.tat - v_now) * l.per_second / 1e6)))::integer
                   AS available) a
    ), spent AS (
        UPDATE merchant_rate_limits r
           SET tat_us = d.tat + round(d.granted * 1e6 / d.per_second)::bigint
          FROM decided d
         WHERE r.merchant_id = d.merchant_id AND d.granted > 0
        RETURNING r.merchant_id
    )
    SELECT i.idx, i.merchant_id,
           i.nth <= d.granted,
           d.burst,
           greatest(d.available - i.nth, 0)::integer,
           CASE WHEN i.nth <= d.granted THEN 0::bigint
                ELSE greatest(d.tat + round(d.granted * 1e6 / d.per_second)::bigint
                              + round(1e6 / d.per_second)::bigint
                              - round(d.burst * 1e6 / d.per_second)::bigint - v_now, 1)
           END,
           d.tat + round(d.granted * 1e6 / d.per_second)::bigint - v_now
      FROM items i LEFT JOIN decided d ON d.merchant_id = i.merchant_id
     ORDER BY i.idx;
END
$$;
