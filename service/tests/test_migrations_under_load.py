"""Every migration since the online-safe pattern began (0009: concurrent
indexes, NOT VALID then VALIDATE, no table rewrites) applied to a ledger of a
million entries while payments keep being posted: no posting may wait for a
lock the migration holds for longer than a catalog change takes (sampled every
few milliseconds), let alone longer than the service's lock_timeout (the API
would answer 503 ledger_busy).

The postings are the statement the service has sent since migration 0008,
written out here: the code of the release being rolled out may need the
migrations it ships, the old release still running beside it must not be
blocked by them. The harness first proves it sees a blocking migration: a
lock like the one a plain CREATE INDEX holds must show as a posting waiting,
and kept longer than the lock_timeout, cost postings."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
import uuid

import asyncpg
import pytest
from conftest import APP_ROLE
from ledger_setup import new_merchant_account
from paycore_ledger import ledger, migrations

FIRST_ONLINE_SAFE = 9
ENTRIES = 1_000_000
LOCK_TIMEOUT_MS = 1000
POSTERS = 4
# A catalog-only change (CREATE TRIGGER, a new table referencing an old one)
# takes its lock for the moment its transaction commits; a posting may wait
# that long. A wait that grows with the table (an index build, a rewrite, a
# constraint validated under lock) may not: at a million entries it is
# already well past this.
BRIEF_WAIT_S = 0.25

POST_PAYMENT = """
    WITH t AS (
        INSERT INTO journal_transactions (kind, source_id, currency)
        VALUES ('payment', $1, 'NGN') RETURNING id
    ), posted AS (
        INSERT INTO entries (transaction_id, account_id, direction, amount)
        SELECT t.id, v.account_id, v.direction, 1
          FROM t, (VALUES (1, $2, 'credit'), (2, $3, 'debit')) AS v (ord, account_id, direction)
         ORDER BY v.ord
        RETURNING 1
    )
    INSERT INTO payments (id, merchant_id, account_id, amount, currency, status, transaction_id)
    SELECT $1, $4, $2, 1, 'NGN', 'succeeded', t.id FROM t
"""


@pytest.fixture
async def scratch_ledger(scratch_database, monkeypatch):
    """A database of its own, migrated up to the last migration before the
    online-safe pattern."""
    owner = await asyncpg.connect(scratch_database)
    try:
        older = [m for m in migrations.available() if m.version < FIRST_ONLINE_SAFE]
        with monkeypatch.context() as patch:
            patch.setattr(migrations, "available", lambda: older)
            # No grants yet: today's grants name tables the old schema lacks.
            await migrations.migrate(owner, None, ("NGN",))
        yield owner, scratch_database
    finally:
        await owner.close()


async def open_account(owner: asyncpg.Connection, n: int) -> tuple[str, str]:
    created, account = await new_merchant_account(owner, f"load-{n}-{uuid.uuid4().hex[:6]}")
    return created["merchant_id"], account


async def populate(owner: asyncpg.Connection, merchant_id: str, account: str) -> None:
    """ENTRIES/2 succeeded payments with their journal transactions and
    entries, loaded set-based past the per-row triggers, balances set to match."""
    payments = ENTRIES // 2
    system = ledger.system_account_id("NGN", 0)
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        await owner.execute(
            """
            INSERT INTO journal_transactions (kind, source_id, currency)
            SELECT 'payment', 'pay_seed_' || g, 'NGN' FROM generate_series(1, $1) g
            """,
            payments,
        )
        await owner.execute(
            """
            INSERT INTO entries (transaction_id, account_id, direction, amount)
            SELECT t.id, v.account_id, v.direction, 1
              FROM journal_transactions t,
                   LATERAL (VALUES ($1, 'credit'), ($2, 'debit')) AS v (account_id, direction)
            """,
            account,
            system,
        )
        await owner.execute(
            """
            INSERT INTO payments (id, merchant_id, account_id, amount, currency, status,
                                  transaction_id)
            SELECT t.source_id, $1, $2, 1, 'NGN', 'succeeded', t.id FROM journal_transactions t
            """,
            merchant_id,
            account,
        )
        await owner.execute("UPDATE accounts SET balance = $2 WHERE id = $1", account, payments)
        await owner.execute(
            "UPDATE accounts SET balance = -$2::bigint WHERE id = $1", system, payments
        )
    await owner.execute("ANALYZE")


class Load:
    """POSTERS connections posting 1 NGN payments back to back until stopped,
    each under the service's lock_timeout; the outcomes counted. They connect
    as the owner: the runtime role's grants come with the schema's last
    migration, and a posting takes the same locks under either role."""

    def __init__(self, url: str, accounts: list[tuple[str, str]]) -> None:
        self.url = url
        self.accounts = accounts
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._running = False
        self._tasks: list[asyncio.Task] = []
        self._shards = itertools.cycle(range(ledger.SYSTEM_SHARDS))

    async def _post(self, merchant_id: str, account: str) -> None:
        conn = await asyncpg.connect(
            self.url, server_settings={"lock_timeout": str(LOCK_TIMEOUT_MS)}
        )
        try:
            while self._running:
                system = ledger.system_account_id("NGN", next(self._shards))
                payment = f"pay_load_{uuid.uuid4().hex}"
                try:
                    await conn.execute(POST_PAYMENT, payment, account, system, merchant_id)
                    self.outcomes["posted"] += 1
                except asyncpg.LockNotAvailableError:
                    self.outcomes["lock_timeout"] += 1
        finally:
            await conn.close()

    def start(self) -> None:
        self._running = True
        self._tasks = [asyncio.create_task(self._post(*a)) for a in self.accounts]

    async def stop(self) -> collections.Counter[str]:
        self._running = False
        await asyncio.gather(*self._tasks)
        outcomes, self.outcomes = self.outcomes, collections.Counter()
        return outcomes


class BlockedWatch:
    """Samples every few milliseconds, from a connection of its own, the
    backends waiting for a lock that `blocker_pid` holds, and keeps the
    longest wait seen (from the first to the last sample a backend waited in)."""

    def __init__(self, url: str, blocker_pid: int) -> None:
        self.url = url
        self.blocker_pid = blocker_pid
        self.longest_wait_s = 0.0
        self.longest_waiter = ""
        self._task: asyncio.Task | None = None

    async def _watch(self) -> None:
        conn = await asyncpg.connect(self.url)
        first_seen: dict[int, float] = {}
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT pid, query FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    self.blocker_pid,
                )
                now = time.monotonic()
                waiting = {r["pid"]: r["query"] for r in rows}
                first_seen = {pid: first_seen.get(pid, now) for pid in waiting}
                for pid, since in first_seen.items():
                    if now - since > self.longest_wait_s:
                        self.longest_wait_s = now - since
                        self.longest_waiter = " ".join(waiting[pid].split()[:8])
                await asyncio.sleep(0.005)
        finally:
            await conn.close()

    def __enter__(self) -> BlockedWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()


async def test_online_migrations_never_block_postings(scratch_ledger):
    owner, owner_url = scratch_ledger
    accounts = [await open_account(owner, n) for n in range(POSTERS)]
    await populate(owner, *accounts[0])
    assert await owner.fetchval("SELECT count(*) FROM entries") >= ENTRIES
    load = Load(owner_url, accounts)

    # The harness sees a blocking migration: postings stall behind a SHARE
    # lock on payments (what CREATE INDEX without CONCURRENTLY takes) held
    # three times the lock_timeout.
    load.start()
    await asyncio.sleep(0.5)
    with BlockedWatch(owner_url, owner.get_server_pid()) as watch:
        async with owner.transaction():
            await owner.execute("LOCK TABLE payments IN SHARE MODE")
            await asyncio.sleep(3 * LOCK_TIMEOUT_MS / 1000)
    blocked = await load.stop()
    assert watch.longest_wait_s >= LOCK_TIMEOUT_MS / 1000 * 0.9, watch.longest_wait_s
    assert blocked["lock_timeout"] > 0, blocked

    load.start()
    await asyncio.sleep(0.5)
    with BlockedWatch(owner_url, owner.get_server_pid()) as watch:
        applied = await migrations.migrate(owner, APP_ROLE, ("NGN",))
        await asyncio.sleep(0.5)
    during = await load.stop()
    assert applied and min(applied) == FIRST_ONLINE_SAFE, applied
    print(f"longest posting wait on a migration's lock: {watch.longest_wait_s * 1000:.0f} ms")
    assert watch.longest_wait_s < BRIEF_WAIT_S, (watch.longest_wait_s, watch.longest_waiter)
    assert during["posted"] > 0 and during["lock_timeout"] == 0, during
    assert await migrations.pending(owner) == []
