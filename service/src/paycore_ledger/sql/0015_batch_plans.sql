-- The batch functions' own statements join the items they are given to
-- api_keys, accounts and payments, as 0014 made the entries trigger and the
-- key lookup do: each item is one index lookup, hash and merge joins off.
-- The planner takes a batch's generate_subscripts() for 1 000 rows (it cannot
-- know the array's length), so with many merchants it read the whole of
-- api_keys and accounts (ledger_pay_batch, ledger_debit_batch) and of payments
-- (a refund batch) into a hash table on every call: with 20 000 merchants a
-- batch of 8 payments cost 6.6 ms of PostgreSQL's CPU instead of 1.7, a
-- batch of 8 refunds 7.5 ms instead of 2.4 (service/README.md). Its outer
-- side is bounded by the batch (PAYCORE_POST_BATCH_MAX), its inner side grows
-- with the merchants and the ledger.
ALTER FUNCTION ledger_pay_batch(bytea[], text[], bytea[], text, text, text[], bigint[], text[],
                                text[], jsonb[], boolean[], text[], text[])
    SET enable_hashjoin = off;
ALTER FUNCTION ledger_pay_batch(bytea[], text[], bytea[], text, text, text[], bigint[], text[],
                                text[], jsonb[], boolean[], text[], text[])
    SET enable_mergejoin = off;
ALTER FUNCTION ledger_debit_batch(bytea[], text[], bytea[], text, text[], text[], text[], text[],
                                  bigint[], text[], int[], text[], jsonb)
    SET enable_hashjoin = off;
ALTER FUNCTION ledger_debit_batch(bytea[], text[], bytea[], text, text[], text[], text[], text[],
                                  bigint[], text[], int[], text[], jsonb)
    SET enable_mergejoin = off;
