"""Migrations that run outside a transaction (the online-safe pattern:
CREATE INDEX CONCURRENTLY), and their recovery from an interrupted run."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from paycore_ledger import migrations
from paycore_ledger.migrations import NO_TRANSACTION, Migration


def test_the_list_indexes_migration_runs_statement_by_statement():
    (migration,) = [m for m in migrations.available() if m.version == 9]
    assert not migration.transactional
    statements = migration.statements()
    assert len(statements) == 8
    assert all(
        s.upper().startswith(("CREATE INDEX CONCURRENTLY", "DROP INDEX")) for s in statements
    )
    assert "payments_merchant_status_created_idx" in migration.concurrent_indexes()
    # Every earlier migration still runs in one transaction.
    assert all(m.transactional for m in migrations.available() if m.version < 9)


async def test_the_list_indexes_exist_and_are_valid(owner_conn):
    names = [
        "payments_merchant_created_idx",
        "payments_merchant_status_created_idx",
        "refunds_merchant_created_idx",
        "refunds_payment_created_idx",
        "payouts_merchant_created_idx",
    ]
    rows = await owner_conn.fetch(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = ANY($1) OR c.relname IN"
        " ('payments_merchant_idx', 'payouts_merchant_idx', 'refunds_payment_idx')",
        names,
    )
    # All valid; the three they superseded are gone.
    assert dict(rows) == dict.fromkeys(names, True)


async def test_an_index_left_invalid_by_an_interrupted_run_is_built_again(owner_conn):
    """A CREATE INDEX CONCURRENTLY that fails (here: duplicates under a unique
    index; in production a cancel or a crash) leaves an invalid index that
    IF NOT EXISTS would keep for good. The runner drops it and builds it anew."""
    table = f"online_{uuid.uuid4().hex[:8]}"
    index = f"{table}_x_idx"
    await owner_conn.execute(f"CREATE TABLE {table} (x int)")
    try:
        # The names are made here, not input.
        await owner_conn.execute(f"INSERT INTO {table} VALUES (1), (1)")  # noqa: S608
        sql = (
            f"{NO_TRANSACTION}\n"
            f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {index}\n    ON {table} (x);\n"
        )
        migration = Migration(9999, "scratch", sql)
        with pytest.raises(asyncpg.UniqueViolationError):
            await migrations._apply_without_transaction(owner_conn, migration)
        valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = $1::regclass"
        assert await owner_conn.fetchval(valid, index) is False
        await owner_conn.execute(f"TRUNCATE {table}")
        await owner_conn.execute(f"INSERT INTO {table} VALUES (1)")  # noqa: S608
        await migrations._apply_without_transaction(owner_conn, migration)
        assert await owner_conn.fetchval(valid, index) is True
        # Again: a no-op.
        await migrations._apply_without_transaction(owner_conn, migration)
    finally:
        await owner_conn.execute(f"DROP TABLE {table}")


async def test_a_second_migrate_waiting_for_the_lock_does_not_block_a_concurrent_index(
    database, owner_conn
):
    """Two hosts run migrate at once: the one holding the lock builds an index
    CONCURRENTLY while the other waits for the lock. A waiter blocked inside
    pg_advisory_lock would hold a snapshot the build waits for (a deadlock,
    measured); the waiter polls instead, and then finds nothing to do."""
    table = f"online_{uuid.uuid4().hex[:8]}"
    await owner_conn.execute(f"CREATE TABLE {table} (x int)")
    await owner_conn.execute("SELECT pg_advisory_lock($1)", migrations.ADVISORY_LOCK_KEY)
    other = await asyncpg.connect(database.owner_url)
    try:
        second = asyncio.create_task(migrations.migrate(other))
        await asyncio.sleep(0.5)  # the second migrate is waiting for the lock
        assert not second.done()
        await asyncio.wait_for(
            owner_conn.execute(f"CREATE INDEX CONCURRENTLY {table}_x_idx ON {table} (x)"), 30
        )
        await owner_conn.execute("SELECT pg_advisory_unlock($1)", migrations.ADVISORY_LOCK_KEY)
        assert await asyncio.wait_for(second, 30) == []
    finally:
        await owner_conn.execute("SELECT pg_advisory_unlock_all()")
        await other.close()
        await owner_conn.execute(f"DROP TABLE {table}")
