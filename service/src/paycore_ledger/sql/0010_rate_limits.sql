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
    tat_us      bigint NOT NULL DEFAULT 0,  -- GCRA's theoretical arrival time, µs
    -- Units the last check granted (RETURNING sees only the new row).
    last_granted integer NOT NULL DEFAULT 0,
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

-- Whole units a bucket holds at p_now (0..burst): what GCRA allows now.
-- (A lowered burst can leave tat further ahead than the new burst allows: 0.)
CREATE FUNCTION ledger_rate_limit_available(
    p_tat bigint, p_now bigint, p_per_second integer, p_burst integer
) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT greatest(0, least(p_burst,
        floor(p_burst - (greatest(p_tat, p_now) - p_now)::float8 * p_per_second / 1e6::float8)
    ))::integer
$$;

-- Spends up to p_wanted units of one merchant's budget at p_now: one
-- single-row UPDATE (its row lock held to the end of the transaction).
-- Returns the new tat, the units granted, and the merchant's rate and burst.
CREATE FUNCTION ledger_rate_limit_spend(
    p_merchant_id text, p_wanted integer, p_now bigint, p_per_second integer, p_burst integer,
    OUT tat bigint, OUT granted integer, OUT per_second integer, OUT burst integer
)
LANGUAGE plpgsql AS $$
BEGIN
    -- Both SET expressions read the row as it was before this UPDATE.
    UPDATE public.merchant_rate_limits b
       SET last_granted = least(p_wanted, public.ledger_rate_limit_available(
               b.tat_us, p_now, coalesce(b.per_second, p_per_second),
               coalesce(b.burst, p_burst))),
           tat_us = greatest(b.tat_us, p_now) + round(
               least(p_wanted, public.ledger_rate_limit_available(
                   b.tat_us, p_now, coalesce(b.per_second, p_per_second),
                   coalesce(b.burst, p_burst)))
               * 1e6::float8 / coalesce(b.per_second, p_per_second))::bigint
     WHERE b.merchant_id = p_merchant_id
    RETURNING b.tat_us, b.last_granted, coalesce(b.per_second, p_per_second),
              coalesce(b.burst, p_burst)
      INTO tat, granted, per_second, burst;
END
$$;

-- One check for each of p_key_hashes (the API keys of one or more requests,
-- the same key possibly several times): authenticates the key (merchant_id
-- NULL: no such key, or revoked) and spends one unit of its merchant's
-- budget if one is left. A merchant's items are served in idx order. One
-- single-row UPDATE per merchant, merchants in merchant_id order, so two
-- calls cannot deadlock. Output per item (1-based idx): whether it is
-- allowed, the merchant's burst (RateLimit-Limit), the units left after it,
-- the µs until the next unit (refused items) and until the bucket is full.
-- SECURITY INVOKER, and no search_path of its own (a SET clause costs every
-- call): every name it uses is schema-qualified.
--
-- The service calls it alone, on a connection of its own whose session has
-- synchronous_commit off (ratelimit.py): no WAL flush to wait for, and the
-- row lock goes at once. A crash may forget the last few hundred ms of
-- spending; no money depends on it.
CREATE FUNCTION ledger_rate_limit(p_key_hashes bytea[], p_per_second integer, p_burst integer)
RETURNS TABLE (idx integer, merchant_id text, allowed boolean, quota integer,
               remaining integer, retry_after_us bigint, reset_us bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1e6)::bigint;
    m record;
    s record;
    v_left integer;
    v_nth integer;
BEGIN
    IF pg_catalog.cardinality(p_key_hashes) = 1 THEN
        -- The common case (one request per check): no grouping.
        FOR m IN
            SELECT k.merchant_id AS id, ARRAY[1] AS items FROM public.api_keys k
             WHERE k.key_hash = p_key_hashes[1] AND k.revoked_at IS NULL
        LOOP
            s := public.ledger_rate_limit_spend(m.id, 1, v_now, p_per_second, p_burst);
            idx := 1;
            merchant_id := m.id;
            allowed := s.granted = 1;
            quota := s.burst;
            remaining := public.ledger_rate_limit_available(s.tat, v_now, s.per_second, s.burst);
            retry_after_us := CASE WHEN allowed THEN 0 ELSE greatest(
                s.tat + round((1 - s.burst) * 1e6::float8 / s.per_second)::bigint - v_now, 1) END;
            reset_us := s.tat - v_now;
            RETURN NEXT;
            RETURN;
        END LOOP;
        idx := 1; merchant_id := NULL; allowed := false; quota := 0;
        remaining := 0; retry_after_us := 0; reset_us := 0;
        RETURN NEXT;
        RETURN;
    END IF;
    FOR m IN
        SELECT k.merchant_id AS id, pg_catalog.array_agg(i.idx::integer ORDER BY i.idx) AS items
          FROM pg_catalog.unnest(p_key_hashes) WITH ORDINALITY AS i (key_hash, idx)
          LEFT JOIN public.api_keys k ON k.key_hash = i.key_hash AND k.revoked_at IS NULL
         GROUP BY k.merchant_id
         ORDER BY k.merchant_id
    LOOP
        IF m.id IS NULL THEN
            FOREACH v_nth IN ARRAY m.items LOOP
                idx := v_nth; merchant_id := NULL; allowed := false; quota := 0;
                remaining := 0; retry_after_us := 0; reset_us := 0;
                RETURN NEXT;
            END LOOP;
            CONTINUE;
        END IF;
        s := public.ledger_rate_limit_spend(
            m.id, pg_catalog.cardinality(m.items), v_now, p_per_second, p_burst);
        -- Units left after the last granted item.
        v_left := public.ledger_rate_limit_available(s.tat, v_now, s.per_second, s.burst);
        FOR v_nth IN 1 .. pg_catalog.cardinality(m.items) LOOP
            idx := m.items[v_nth];
            merchant_id := m.id;
            allowed := v_nth <= s.granted;
            quota := s.burst;
            remaining := greatest(v_left + s.granted - v_nth, 0);
            retry_after_us := CASE WHEN allowed THEN 0 ELSE greatest(
                s.tat + round((1 - s.burst) * 1e6::float8 / s.per_second)::bigint - v_now, 1) END;
            reset_us := s.tat - v_now;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
