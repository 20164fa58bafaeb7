-- The key that turns entry and journal transaction numbers into opaque public
-- ids (public_ids.py): sequential numbers would tell a merchant how many
-- postings the whole platform makes. One row, made once here from
-- PostgreSQL's strong random source, so every ledger host (and a restore)
-- uses the same key and ids stay stable. Rotating it would change every
-- public id already handed out: do not.
CREATE TABLE IF NOT EXISTS public_id_key (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    key bytea NOT NULL CHECK (length(key) = 32)
);
INSERT INTO public_id_key (key)
VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))
ON CONFLICT DO NOTHING;
