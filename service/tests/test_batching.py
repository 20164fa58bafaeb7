"""Group commit of payments (issue 19): many payments in one call and one commit,
each with its own answer."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import aiohttp
import asyncpg
import pytest
from conftest import Api, cli_env, make_settings
from paycore_ledger import ledger, merchants, reconcile
from paycore_ledger.app import create_app
from paycore_ledger.batching import MAX_IN_FLIGHT, Batcher
from paycore_ledger.db import Database
from paycore_ledger.idempotency import fingerprint
from test_process import _children

# A wide window so that requests sent together surely share one batch.
WIDE = {"post_batch_max": 64, "post_batch_window_us": 100_000}


@pytest.fixture
async def batch_client(aiohttp_client, database):
    return await aiohttp_client(create_app(make_settings(database.app_url, **WIDE)))


@pytest.fixture
async def api(batch_client, owner_conn):
    created = await merchants.create(owner_conn, f"b-{uuid.uuid4().hex[:12]}")
    return Api(batch_client, created["api_key"], created["merchant_id"])


async def _commits(owner_conn, merchant_id: str) -> int:
    """How many transactions wrote this merchant's payments (one per batch)."""
    return await owner_conn.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM payments WHERE merchant_id = $1", merchant_id
    )


async def test_concurrent_payments_share_one_commit(api, owner_conn):
    account = await api.open_account()
    results = await asyncio.gather(*(api.pay(i + 1) for i in range(20)))
    assert [r.status for r in results] == [201] * 20
    assert len({r.body["id"] for r in results}) == 20
    assert await _commits(owner_conn, api.merchant_id) == 1
    assert await api.balance(account) == 20 * 21 // 2
    journal = await owner_conn.fetchval(
        "SELECT count(DISTINCT t.id) FROM journal_transactions t"
        " JOIN payments p ON p.transaction_id = t.id WHERE p.merchant_id = $1",
        api.merchant_id,
    )
    assert journal == 20  # one balanced journal transaction per payment


async def test_each_item_keeps_its_own_answer(api, batch_client, owner_conn):
    """Unknown key, missing account, review, replay, reused key and duplicates
    inside one batch: every item gets what it would get alone."""
    await api.open_account("NGN")
    first = await api.pay(5, idem="before")
    assert first.status == 201
    stranger = batch_client.post(
        "/v1/payments",
        json={"amount": 5, "currency": "NGN"},
        headers={"Authorization": "Bearer pck_" + "x" * 40, "Idempotency-Key": "k"},
    )
    calls = [
        api.pay(100, idem="a"),
        api.pay(100, idem="a"),  # same request twice in the batch
        api.pay(101, idem="b"),
        api.pay(102, idem="b"),  # same key, other request
        api.pay(7, "USD", idem="no-account"),
        api.pay(60_000_000, idem="review"),  # above the NGN default threshold
        api.pay(5, idem="before"),  # replay of a committed answer
        api.pay(3, idem="plain"),
    ]
    *results, unauthorized = await asyncio.gather(*calls, stranger)
    a1, a2, b1, b2, no_account, review, replay, plain = results
    assert unauthorized.status == 401
    assert {a1.status, a2.status} == {201} and a1.body == a2.body
    assert [r.headers.get("Idempotent-Replayed") for r in (a1, a2)].count("true") == 1
    assert sorted([b1.status, b2.status]) == [201, 422]
    assert "idempotency_key_reused" in (b1.code, b2.code)
    assert no_account.status == 422 and no_account.code == "account_not_found"
    assert review.status == 201 and review.body["status"] == "requires_review"
    assert replay.status == 201 and replay.body == first.body
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert plain.status == 201
    # "before", then the batch; on a loaded machine a straggler may miss the
    # window and make a batch of its own (sharing is what the test above checks).
    assert await _commits(owner_conn, api.merchant_id) in (2, 3)
    rows = await owner_conn.fetch(
        "SELECT amount, status FROM payments WHERE merchant_id = $1 ORDER BY amount",
        api.merchant_id,
    )
    b_amount = b1.body["amount"] if b1.status == 201 else b2.body["amount"]
    assert [(r["amount"], r["status"]) for r in rows] == sorted(
        [
            (3, "succeeded"),
            (5, "succeeded"),
            (100, "succeeded"),
            (b_amount, "succeeded"),
            (60_000_000, "requires_review"),
        ]
    )
    # The 422 account_not_found is stored and replayed like a single request's.
    again = await api.pay(7, "USD", idem="no-account")
    assert again.code == "account_not_found" and again.headers["Idempotent-Replayed"] == "true"


async def test_a_failing_item_fails_alone(api, owner_conn, monkeypatch):
    """A posting PostgreSQL refuses (here: a missing system shard for USD) rolls
    back its batch; the other items are sent again on their own and succeed, the
    faulty one fails as it would alone (500, nothing stored)."""
    ngn = await api.open_account("NGN")
    await api.open_account("USD")
    real = ledger.pick_system_account
    monkeypatch.setattr(
        ledger,
        "pick_system_account",
        lambda currency: "acct_sys_missing" if currency == "USD" else real(currency),
    )
    results = await asyncio.gather(
        *(api.pay(10, idem=f"ok-{i}") for i in range(5)), api.pay(10, "USD", idem="bad")
    )
    assert [r.status for r in results[:5]] == [201] * 5
    assert results[5].status == 500 and results[5].code == "internal_error"
    assert await api.balance(ngn) == 50
    assert not await owner_conn.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE merchant_id = $1 AND key = 'bad'",
        api.merchant_id,
    )
    monkeypatch.undo()
    retry = await api.pay(10, "USD", idem="bad")
    assert retry.status == 201 and "Idempotent-Replayed" not in retry.headers


async def test_a_key_held_elsewhere_does_not_delay_the_batch(api, owner_conn):
    """A duplicate of a request still running elsewhere waits for it (then
    replays); the other items of its batch are answered without waiting."""
    await api.open_account()
    body = {"amount": 42, "currency": "NGN"}
    tx = owner_conn.transaction()
    await tx.start()
    await owner_conn.execute(
        "INSERT INTO idempotency_keys (merchant_id, key, fingerprint, method, path, state,"
        " status_code, response_body) VALUES ($1, 'held', $2, 'POST', '/v1/payments',"
        " 'completed', 201, '{\"id\": \"pay_from_first\"}')",
        api.merchant_id,
        fingerprint("POST", "/v1/payments", body),
    )
    try:
        held = asyncio.create_task(api.post("/v1/payments", body, idem="held"))
        started = time.monotonic()
        others = await asyncio.gather(*(api.pay(i + 1) for i in range(5)))
        waited = time.monotonic() - started
        assert [r.status for r in others] == [201] * 5
        assert waited < 1.0, waited  # well under the 1.5 s lock_timeout of the tests
        assert not held.done()
    finally:
        await tx.commit()
    r = await held
    assert r.status == 201 and r.body == {"id": "pay_from_first"}
    assert r.headers["Idempotent-Replayed"] == "true"


async def test_batch_size_one_is_one_commit_per_payment(aiohttp_client, database, owner_conn):
    client = await aiohttp_client(
        create_app(make_settings(database.app_url, post_batch_max=1, post_batch_window_us=0))
    )
    created = await merchants.create(owner_conn, f"b1-{uuid.uuid4().hex[:12]}")
    api = Api(client, created["api_key"], created["merchant_id"])
    await api.open_account()
    results = await asyncio.gather(*(api.pay(i + 1) for i in range(8)))
    assert [r.status for r in results] == [201] * 8
    assert await _commits(owner_conn, api.merchant_id) == 8


async def test_the_next_batch_leaves_before_the_previous_one_is_answered(database):
    """A finished batch first sends the next one, then answers its own requests:
    PostgreSQL works on the next batch while the worker writes the responses."""
    events: list[tuple[str, str]] = []

    async def call(conn, reqs):
        events.append(("sent", ",".join(reqs)))
        await conn.fetchval("SELECT pg_sleep(0.05)")
        return reqs

    async def ask(req):
        await batcher.answer(req)
        events.append(("answered", req))

    db = Database(make_settings(database.app_url), max_connections=2)
    batcher = Batcher(db, 64, 0, call=call, answer_for=lambda _req, result: result, run_alone=None)
    try:
        first = asyncio.create_task(ask("a"))
        await asyncio.sleep(0.02)  # "a" is in flight: "b" waits for the next batch
        await asyncio.gather(first, ask("b"))
    finally:
        await db.close()
    assert events == [("sent", "a"), ("sent", "b"), ("answered", "a"), ("answered", "b")]


async def test_worker_killed_during_batches_leaves_nothing_half_applied(
    database, serve, owner_conn
):
    """kill -9 of a worker while its batches wait in PostgreSQL: every batch
    commits whole or not at all, and retrying every request with its
    Idempotency-Key gives exactly one payment each."""
    if database.cluster is None:
        pytest.skip("needs the throwaway cluster (reads other sessions' pg_stat_activity)")
    created = await merchants.create(owner_conn, f"crash-{uuid.uuid4().hex[:10]}")
    auth = {"Authorization": f"Bearer {created['api_key']}"}
    env = cli_env(
        database.app_url,
        PAYCORE_LOCK_TIMEOUT_MS="20000",
        PAYCORE_POST_BATCH_MAX="16",
        PAYCORE_POST_BATCH_WINDOW_US="20000",
    )
    server = serve("--workers", "2", env=env, ready="/readyz")
    n = 80
    # A new connection per request, so the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def pay(i: int) -> tuple[int, dict]:
            async with session.post(
                server.base + "/v1/payments",
                json={"amount": i + 1, "currency": "NGN"},
                headers={**auth, "Idempotency-Key": f"crash-{i}"},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp:
                return resp.status, await resp.json()

        async with session.post(
            server.base + "/v1/accounts", json={"currency": "NGN"}, headers=auth
        ) as resp:
            account = (await resp.json())["id"]

        # Hold the account row: batches reach PostgreSQL and wait there.
        watcher = await asyncpg.connect(database.owner_url)
        tx = owner_conn.transaction()
        await tx.start()
        await owner_conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account)
        try:
            first = [asyncio.create_task(pay(i)) for i in range(n)]
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%ledger_pay%'"
            waiting += " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            deadline = time.monotonic() + 20
            # At most MAX_IN_FLIGHT batches per worker: one more waiting means
            # both workers have a batch in PostgreSQL.
            # (pg_stat_activity outside the transaction: it is a snapshot within one)
            while await watcher.fetchval(waiting) < MAX_IN_FLIGHT + 1:
                assert time.monotonic() < deadline, "batches never reached the database"
                await asyncio.sleep(0.05)
            victim = min(_children(server.proc.pid))
            os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(0.3)
        finally:
            await tx.rollback()
            await watcher.close()
        outcomes = await asyncio.gather(*first, return_exceptions=True)
        lost = [o for o in outcomes if isinstance(o, BaseException)]
        assert lost, "the killed worker had no request in flight"
        deadline = time.monotonic() + 20
        while len(_children(server.proc.pid) - {victim}) < 2:  # replaced by the supervisor
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

        # Retry everything with the same keys.
        again = await asyncio.gather(*(pay(i) for i in range(n)))
    assert [status for status, _ in again] == [201] * n
    for before, (_, body) in zip(outcomes, again, strict=True):
        if not isinstance(before, BaseException):
            assert before == (201, body)  # the retry replays the first answer
    payments = await owner_conn.fetch(
        "SELECT id, amount, xmin::text AS tx FROM payments WHERE merchant_id = $1",
        created["merchant_id"],
    )
    assert sorted(p["amount"] for p in payments) == list(range(1, n + 1))  # one each
    assert {p["id"] for p in payments} == {body["id"] for _, body in again}
    assert len({p["tx"] for p in payments}) < n  # several payments per commit
    balance = await owner_conn.fetchval("SELECT balance FROM accounts WHERE id = $1", account)
    assert balance == n * (n + 1) // 2
    report = await reconcile.run(owner_conn, record=False)
    assert report["ok"], report


async def test_payouts_in_one_batch_never_overdraw(api, owner_conn):
    """Insufficient funds is decided per item, in item order, under the lock."""
    account = await api.open_account()
    await api.pay(1000)
    results = await asyncio.gather(*(api.payout(300) for _ in range(6)))
    assert sorted(r.status for r in results) == [201] * 3 + [422] * 3
    assert {r.code for r in results if r.status == 422} == {"insufficient_funds"}
    assert await api.balance(account) == 100
    commits = await owner_conn.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM payouts WHERE merchant_id = $1", api.merchant_id
    )
    assert commits == 1


async def test_refunds_and_payouts_keep_their_own_answers(api, owner_conn):
    account = await api.open_account()
    paid = (await api.pay(500)).body
    review = (await api.pay(60_000_000)).body
    assert review["status"] == "requires_review"
    calls = [
        api.refund(paid["id"], 200, idem="r1"),
        api.refund(paid["id"], 200, idem="r1"),  # duplicate in the batch: replay
        api.refund(paid["id"], 250, idem="r2"),  # 200 + 250 of 500, but see r3
        api.refund(paid["id"], 100, idem="r3"),  # would exceed the payment
        api.refund(review["id"], 10, idem="r4"),  # not refundable
        api.refund("pay_nosuchpayment", 10, idem="r5"),  # 404, not stored
        api.payout(10, "USD", idem="p1"),  # no USD account
        api.payout(50, idem="p2"),  # 500 - 450 refunded = 50 left
    ]
    r1, r1_again, r2, r3, r4, r5, p1, p2 = await asyncio.gather(*calls)
    assert r1.status == r1_again.status == 201 and r1.body == r1_again.body
    # r2 and r3 cannot both fit: whichever the batch took second is refused.
    accepted, refused = (r2, r3) if r2.status == 201 else (r3, r2)
    assert accepted.status == 201 and refused.code == "refund_exceeds_payment"
    assert r4.code == "payment_not_refundable"
    assert r5.status == 404 and r5.code == "not_found"
    assert p1.code == "account_not_found"
    assert p2.status == 201 and p2.body["object"] == "payout"
    refunded = 200 + accepted.body["amount"]
    assert await api.balance(account) == 500 - refunded - 50
    got = await api.get(f"/v1/payments/{paid['id']}")
    assert got.body["amount_refunded"] == refunded
    keys = {
        r["key"]
        for r in await owner_conn.fetch(
            "SELECT key FROM idempotency_keys WHERE merchant_id = $1", api.merchant_id
        )
    }
    assert "r5" not in keys and {"r1", "r2", "r3", "r4", "p1", "p2"} <= keys
    refused_idem = "r2" if refused is r2 else "r3"
    replays = (
        (api.refund(paid["id"], 250 if refused is r2 else 100, idem=refused_idem), refused),
        (api.payout(50, idem="p2"), p2),
    )
    for call, first in replays:
        again = await call
        assert (again.status, again.body) == (first.status, first.body)
        assert again.headers["Idempotent-Replayed"] == "true"
    report = await reconcile.run(owner_conn, record=False)
    assert report["ok"], report


def test_batch_settings_are_validated():
    from paycore_ledger import config

    base = {"PAYCORE_DATABASE_URL": "postgresql://u@127.0.0.1/db"}
    loaded = config.load(base)
    assert (loaded.post_batch_max, loaded.post_batch_window_us) == (64, 200)
    off = config.load({**base, "PAYCORE_POST_BATCH_MAX": "1", "PAYCORE_POST_BATCH_WINDOW_US": "0"})
    assert (off.post_batch_max, off.post_batch_window_us) == (1, 0)
    for name, value in (
        ("PAYCORE_POST_BATCH_MAX", "0"),
        ("PAYCORE_POST_BATCH_MAX", "many"),
        ("PAYCORE_POST_BATCH_WINDOW_US", "-1"),
        ("PAYCORE_POST_BATCH_WINDOW_US", "100001"),
    ):
        with pytest.raises(config.ConfigError, match=name):
            config.load({**base, name: value})
