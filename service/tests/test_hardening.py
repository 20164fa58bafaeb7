"""Inputs and settings found by the audit: each answers a 4xx/503 problem, never a 500,
and the database enforces what the application promises."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import uuid

import asyncpg
import pytest
from aiohttp import web
from conftest import make_settings
from paycore_ledger import ledger, migrations
from paycore_ledger.app import create_app
from paycore_ledger.handlers.common import DB_KEY
from paycore_ledger.problems import Problem
from test_api import assert_problem

# ---- strings the database cannot store ----------------------------------------------

SURROGATE = "\\ud800"  # as written in the JSON text: a lone UTF-16 surrogate
NUL = "\\u0000"


@pytest.mark.parametrize("junk", [SURROGATE, NUL, "a" + NUL + "b", "x" + SURROGATE])
@pytest.mark.parametrize(
    ("template", "field"),
    [
        ('{"amount": 10, "currency": "NGN", "description": "%s"}', "description"),
        ('{"amount": 10, "currency": "NGN", "metadata": {"k": "%s"}}', "metadata.k"),
        ('{"amount": 10, "currency": "NGN", "metadata": {"%s": "v"}}', "metadata"),
    ],
)
async def test_unstorable_strings_in_payments_are_422(merchant, template, field, junk):
    await merchant.open_account()
    r = await merchant.post("/v1/payments", raw=template % junk)
    assert_problem(r, 422, "validation_error")
    assert r.body["field"] == field
    # Nothing was stored under the key: it is a validation error, not an answer.
    again = await merchant.post(
        "/v1/payments", {"amount": 10, "currency": "NGN"}, idem="after-junk-" + uuid.uuid4().hex
    )
    assert again.status == 201


async def test_unstorable_strings_in_other_bodies_are_422(merchant):
    account = await merchant.open_account()
    paid = (await merchant.pay(100)).body
    for path, raw, field in (
        ("/v1/accounts", '{"currency": "NG' + SURROGATE + '"}', "currency"),
        ("/v1/payouts", '{"amount": 1, "currency": "' + NUL + '"}', "currency"),
        (f"/v1/payments/{paid['id']}/refunds", '{"amount": 1, "x' + SURROGATE + '": 1}', "body"),
    ):
        r = await merchant.post(path, raw=raw)
        assert_problem(r, 422, "validation_error")
        assert r.body["field"] == field, r.body
    assert await merchant.balance(account) == 100


# ---- ids and query parameters ---------------------------------------------------------

JUNK_SUFFIXES = ["%00", "%ED%A0%80", "a%00b", "x" * 300, "%C2%B2", "a%20b", "%F0%9F%92%B8"]


@pytest.mark.parametrize("suffix", JUNK_SUFFIXES)
async def test_ids_that_cannot_exist_are_404(merchant, suffix):
    await merchant.open_account()
    for method, path in (
        ("GET", f"/v1/accounts/acct_{suffix}"),
        ("GET", f"/v1/accounts/acct_{suffix}/entries"),
        ("GET", f"/v1/payments/pay_{suffix}"),
        ("POST", f"/v1/payments/pay_{suffix}/refunds"),
        ("GET", f"/v1/refunds/re_{suffix}"),
        ("GET", f"/v1/payouts/po_{suffix}"),
        ("GET", f"/v1/payouts/{suffix}"),
    ):
        if method == "POST":
            r = await merchant.post(path, {"amount": 1})
        else:
            r = await merchant.get(path)
        assert_problem(r, 404, "not_found")


async def test_non_ascii_digits_in_query_are_422(merchant):
    account = await merchant.open_account()
    await merchant.pay(5)
    for query, field in (
        ("limit=%C2%B2", "limit"),  # superscript two: str.isdigit() is True
        ("limit=%D9%A3", "limit"),  # Arabic-Indic three
        ("limit=%00", "limit"),
        ("starting_after=ent_%C2%B2", "starting_after"),
        ("starting_after=ent_%D9%A3%D9%A3", "starting_after"),
        ("starting_after=ent_%00", "starting_after"),
    ):
        r = await merchant.get(f"/v1/accounts/{account}/entries?{query}")
        assert_problem(r, 422, "validation_error")
        assert r.body["field"] == field


async def test_database_data_error_is_never_a_500(settings, aiohttp_client, caplog):
    """The safety net: a DataError from PostgreSQL that validation missed answers 400."""

    async def leaky(request: web.Request) -> web.Response:
        async with request.app[DB_KEY].connection() as conn:
            await conn.fetchval("SELECT $1::text", "nul\x00inside")
        return web.Response(text="unreachable")

    app = create_app(settings)
    app.router.add_get("/test/leaky", leaky)
    client = await aiohttp_client(app)
    r = await client.get("/test/leaky")
    assert r.status == 400
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert (await r.json())["code"] == "invalid_input"
    assert "Traceback" not in caplog.text


# ---- authentication comes first -------------------------------------------------------


async def test_wrong_key_is_401_before_body_size_or_shape(client, merchant):
    await merchant.open_account()
    paid = (await merchant.pay(10)).body
    wrong = {
        "Authorization": "Bearer pck_" + "z" * 40,
        "Idempotency-Key": "k",
        "Content-Type": "application/json",
    }
    big = json.dumps({"amount": 1, "currency": "NGN", "description": "x" * (1024 * 1024)})
    for path in (
        "/v1/payments",
        "/v1/payouts",
        "/v1/accounts",
        f"/v1/payments/{paid['id']}/refunds",
        "/v1/payments/pay_%00/refunds",
    ):
        for data in (big, "{not json", '{"description": "\\ud800"}'):
            r = await client.post(path, data=data, headers=wrong)
            assert r.status == 401, (path, data[:20], await r.text())
            assert (await r.json())["code"] == "unauthorized"
    for path in ("/v1/accounts/acct_%00", "/v1/payments/pay_%00"):
        r = await client.get(path, headers=wrong)
        assert r.status == 401
    # With the right key the same oversized body is 413.
    r = await merchant.post("/v1/payouts", raw=big)
    assert_problem(r, 413, "payload_too_large")


# ---- statement timeout ------------------------------------------------------------


async def test_statement_timeout_is_503_database_timeout(database, aiohttp_client, owner_conn):
    # lock_timeout above statement_timeout: the waiting statement is cancelled.
    settings = make_settings(database.app_url, statement_timeout_ms=300, lock_timeout_ms=5000)
    client = await aiohttp_client(create_app(settings))
    from conftest import Api
    from paycore_ledger import merchants

    created = await merchants.create(owner_conn, f"timeout-{uuid.uuid4().hex[:12]}")
    api = Api(client, created["api_key"], created["merchant_id"])
    account = await api.open_account()
    tx = owner_conn.transaction()
    await tx.start()
    await owner_conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account)
    try:
        r = await api.pay(10, idem="slow")
        assert_problem(r, 503, "database_timeout")
        assert r.headers["Retry-After"] == "1"
        r = await api.get(f"/v1/accounts/{account}/entries")
        assert r.status == 200
    finally:
        await tx.rollback()
    r = await api.pay(10, idem="slow")
    assert r.status == 201 and "Idempotent-Replayed" not in r.headers


# ---- a standby reached in a failover ---------------------------------------------------


async def test_a_write_that_reaches_a_standby_is_503_and_its_connection_is_not_kept(
    database, aiohttp_client, owner_conn
):
    """In a failover the proxy may send a connection to a server that still
    refuses writes (Patroni said "primary" a moment before PostgreSQL finished
    its promotion). The rate check's write and the payment's each answer 503
    database_unavailable with Retry-After, store nothing, and drop that
    connection: once the server takes writes, the same request goes through."""
    if database.cluster is None:
        pytest.skip("needs the throwaway cluster (ALTER ROLE)")
    from conftest import APP_ROLE, TEST_DB, Api
    from paycore_ledger import merchants

    created = await merchants.create(owner_conn, f"standby-{uuid.uuid4().hex[:12]}")
    setup = await aiohttp_client(create_app(make_settings(database.app_url)))
    await Api(setup, created["api_key"], created["merchant_id"]).open_account()
    # A worker that has no connection yet: each connection below is opened
    # when the step says.
    client = await aiohttp_client(create_app(make_settings(database.app_url, db_pool_min=0)))
    api = Api(client, created["api_key"], created["merchant_id"])

    async def new_sessions_read_only(on: bool) -> None:
        change = "SET default_transaction_read_only = on" if on else "RESET ALL"
        await owner_conn.execute(f"ALTER ROLE {APP_ROLE} IN DATABASE {TEST_DB} {change}")

    async def pay_on_a_standby():
        await new_sessions_read_only(True)
        try:
            return await api.pay(10, idem="standby")
        finally:
            await new_sessions_read_only(False)

    # 1. The rate check's connection is opened on the standby.
    r = await pay_on_a_standby()
    assert_problem(r, 503, "database_unavailable")
    assert r.headers["Retry-After"] == "1"
    # The rate check opens a new connection (on the leader), and no other: the
    # body is refused before the ledger is asked.
    assert_problem(await api.post("/v1/payments", {"amount": -1}), 422, "validation_error")
    # 2. The payment's connection is opened on the standby.
    r = await pay_on_a_standby()
    assert_problem(r, 503, "database_unavailable")
    assert r.headers["Retry-After"] == "1"
    stored = "SELECT count(*) FROM idempotency_keys WHERE merchant_id = $1 AND key = 'standby'"
    assert await owner_conn.fetchval(stored, created["merchant_id"]) == 0
    r = await api.pay(10, idem="standby")
    assert r.status == 201 and "Idempotent-Replayed" not in r.headers, r.body


# ---- readiness whatever the failure -------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://nobody@127.0.0.1:1/none",  # nothing listens
        "postgresql://no_such_role@127.0.0.1:{port}/paycore_test",  # refused login
        "postgresql://postgres@127.0.0.1:{port}/no_such_database",
    ],
)
async def test_readyz_is_503_for_any_database_failure(database, aiohttp_client, url):
    if "{port}" in url:
        if database.cluster is None:
            pytest.skip("needs the throwaway cluster")
        url = url.format(port=database.cluster.port)
    client = await aiohttp_client(create_app(make_settings(url, db_pool_min=0)))
    r = await client.get("/readyz")
    assert r.status == 503
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert (await r.json())["code"] == "database_unavailable"
    r = await client.get("/v1/accounts", headers={"Authorization": "Bearer pck_" + "q" * 40})
    assert r.status == 503


# ---- the database guards balances ----------------------------------------------------


async def test_account_cannot_be_inserted_with_a_balance(database, merchant, owner_conn):
    app_conn = await asyncpg.connect(database.app_url)
    try:
        for conn in (app_conn, owner_conn):
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.CheckViolationError)):
                await conn.execute(
                    "INSERT INTO accounts (id, kind, merchant_id, currency, balance)"
                    " VALUES ($1, 'merchant', $2, 'EUR', 777)",
                    "acct_forged" + uuid.uuid4().hex[:8],
                    merchant.merchant_id,
                )
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.CheckViolationError)):
                await conn.execute(
                    "INSERT INTO accounts (id, kind, currency, shard, balance)"
                    " VALUES ($1, 'system', 'EUR', 99, -5)",
                    "acct_sys_forged" + uuid.uuid4().hex[:8],
                )
        # The owner is refused by the database itself, not by grants.
        with pytest.raises(asyncpg.CheckViolationError, match="balance"):
            await owner_conn.execute(
                "INSERT INTO accounts (id, kind, merchant_id, currency, balance)"
                " VALUES ('acct_forged_owner', 'merchant', $1, 'GBP', 777)",
                merchant.merchant_id,
            )
        # Opening an account the normal way still works for the runtime role.
        assert (await merchant.post("/v1/accounts", {"currency": "EUR"})).status == 201
    finally:
        await app_conn.close()


# ---- system shards exist before any posting needs them -------------------------------


async def test_migrate_creates_all_shards_for_configured_currencies(
    database, owner_conn, monkeypatch
):
    conn = await asyncpg.connect(database.owner_url)
    try:
        await migrations.migrate(conn, None, currencies=("CHF", "NGN"))
        shards = await owner_conn.fetchval(
            "SELECT count(*) FROM accounts WHERE kind = 'system' AND currency = 'CHF'"
        )
        assert shards == ledger.SYSTEM_SHARDS
        # More shards in a newer release: migrate adds them for every currency in use.
        monkeypatch.setattr(ledger, "SYSTEM_SHARDS", ledger.SYSTEM_SHARDS + 2)
        await migrations.migrate(conn, None, currencies=("CHF",))
        rows = await owner_conn.fetch(
            "SELECT currency, count(*) AS n FROM accounts WHERE kind = 'system' GROUP BY currency"
        )
        assert rows and all(r["n"] >= ledger.SYSTEM_SHARDS for r in rows)
    finally:
        await conn.close()


async def test_more_shards_after_migrate_are_usable(database, merchant, monkeypatch):
    """A release with more shards: after `migrate`, postings on the new shards of a
    currency already in use land (no foreign-key failure, no 500)."""
    await merchant.open_account("NGN")
    more = ledger.SYSTEM_SHARDS + 3
    monkeypatch.setattr(ledger, "SYSTEM_SHARDS", more)
    conn = await asyncpg.connect(database.owner_url)
    try:
        await migrations.migrate(conn, None)
    finally:
        await conn.close()
    shards = itertools.cycle(range(more - 3, more))
    monkeypatch.setattr(
        ledger, "pick_system_account", lambda c: ledger.system_account_id(c, next(shards))
    )
    for _ in range(3):
        r = await merchant.pay(1)
        assert r.status == 201, r.body
    r = await merchant.payout(2)
    assert r.status == 201, r.body


# ---- the worker's connection pool ------------------------------------------------------


async def test_readyz_timing_out_never_returns_its_connection_to_the_pool(database, aiohttp_client):
    """readyz gives the database 2 s: a SELECT 1 still pending on a backend
    that stopped answering must not be handed to the next request, whose
    query would then read the stale answer or wait behind it."""
    if database.cluster is None:
        pytest.skip("stops a backend process: needs the throwaway cluster on this host")
    app = create_app(make_settings(database.app_url, db_pool_min=1, db_pool_max=1))
    client = await aiohttp_client(app)
    assert (await client.get("/readyz")).status == 200
    pool = app[DB_KEY]
    assert pool.stats() == (1, 0)
    ((stalled, _),) = pool._idle
    backend = stalled.get_server_pid()
    os.kill(backend, signal.SIGSTOP)
    try:
        r = await client.get("/readyz")
        assert r.status == 503
        assert pool.stats() == (0, 0) and stalled.is_closed()
    finally:
        os.kill(backend, signal.SIGCONT)
    assert (await client.get("/readyz")).status == 200


async def test_pool_bounded_shared_and_recovers_slots(database, monkeypatch):
    from paycore_ledger import db as dbmod

    monkeypatch.setattr(dbmod, "ACQUIRE_TIMEOUT_S", 0.5)
    pool = dbmod.Database(make_settings(database.app_url, db_pool_max=2, db_pool_min=0))
    try:

        async def use(seconds: float) -> int:
            async with pool.connection() as conn:
                return await conn.fetchval("SELECT 1 FROM pg_sleep($1)", seconds)

        # Ten requests over two connections: the waiters are served in turn.
        assert await asyncio.gather(*(use(0.02) for _ in range(10))) == [1] * 10
        assert pool.stats() == (2, 0)
        # Both held longer than the acquire timeout: the third answers 503.
        held = [asyncio.create_task(use(1.0)) for _ in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(Problem) as problem:
            await use(0)
        assert problem.value.status == 503
        await asyncio.gather(*held)

        # A connection left inside a transaction, or interrupted mid-query, is
        # closed, never handed to the next request; its slot is reused.
        async with pool.connection() as conn:
            await conn.execute("BEGIN")
            left_open = conn
        assert left_open.is_closed()
        task = asyncio.create_task(use(5))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.gather(*(use(0) for _ in range(4))) == [1] * 4
        assert pool.stats()[0] <= 2

        # Idle connections past their lifetime are closed.
        monkeypatch.setattr(dbmod, "MAX_IDLE_S", 0.0)
        pool.trim()
        assert pool.stats() == (0, 0)
        assert await use(0) == 1
    finally:
        await pool.close()
    assert pool.stats() == (0, 0)
