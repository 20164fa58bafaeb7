"""Per-merchant rate limits (ratelimit.py, sql/0010): shared by every process,
one merchant's budget apart from another's, overridable from the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest
from conftest import Api, admin_cli_env, make_settings, run_cli
from paycore_ledger import merchants
from paycore_ledger.app import create_app
from paycore_ledger.app_keys import DB_KEY, RATE_LIMITER_KEY
from paycore_ledger.auth import hash_key

# 1 unit per second (the slowest rate there is): a test's few requests see no
# refill unless they wait for it.
SLOW = {"rate_limit_per_second": 1}


@pytest.fixture
async def limited(database, aiohttp_client):
    """make(burst=..., per_second=..., **settings) -> (client, make_merchant)."""
    conn = await asyncpg.connect(database.owner_url)

    async def make(**overrides):
        settings = make_settings(database.app_url, **{**SLOW, **overrides})
        client = await aiohttp_client(create_app(settings))

        async def merchant() -> Api:
            created = await merchants.create(conn, f"rl-{uuid.uuid4().hex[:12]}")
            return Api(client, created["api_key"], created["merchant_id"])

        return client, merchant

    yield make
    await conn.close()


def limit_headers(response) -> tuple[int, int, int]:
    h = response.headers
    return int(h["RateLimit-Limit"]), int(h["RateLimit-Remaining"]), int(h["RateLimit-Reset"])


async def test_headers_count_down(limited):
    _, new = await limited(rate_limit_burst=5)
    m = await new()
    seen = []
    for _ in range(3):
        r = await m.get("/v1/accounts")
        assert r.status == 200, r.body
        seen.append(limit_headers(r))
    assert [limit for limit, _, _ in seen] == [5, 5, 5]
    assert [remaining for _, remaining, _ in seen] == [4, 3, 2]
    # Bucket of 5 at 1/s with 1-3 units spent: whole again in 1-3 s.
    assert all(1 <= reset <= 3 for _, _, reset in seen), seen


async def test_every_authenticated_answer_carries_the_headers(limited):
    _, new = await limited(rate_limit_burst=10)
    m = await new()
    await m.open_account("NGN")
    for r in (
        await m.get("/v1/payments/pay_nosuchthing"),  # 404
        await m.pay(0),  # 422
        await m.pay(100),  # 201
        await m.call("POST", "/v1/payments", raw="{", idem="k-bad"),  # 400
    ):
        assert "RateLimit-Remaining" in r.headers, (r.status, r.body)
    remaining = [int((await m.get("/v1/accounts")).headers["RateLimit-Remaining"])]
    assert remaining == [10 - 6]


async def test_over_the_limit_is_429_problem_with_retry_after(limited):
    _, new = await limited(rate_limit_burst=3)
    m = await new()
    for _ in range(3):
        assert (await m.get("/v1/accounts")).status == 200
    r = await m.get("/v1/accounts")
    assert r.status == 429
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.body["code"] == "rate_limited"
    assert r.body["status"] == 429
    assert r.body["title"] == "Too Many Requests"
    assert r.body["type"].endswith("/rate-limited")
    assert int(r.headers["Retry-After"]) >= 1
    assert limit_headers(r)[:2] == (3, 0)
    # A refused request stays refused (answered by this worker without
    # PostgreSQL now) and does not push the refill further out.
    again = await m.get("/v1/accounts")
    assert again.status == 429
    assert int(again.headers["Retry-After"]) == 1


async def test_budget_refills_at_the_rate(limited):
    _, new = await limited(rate_limit_burst=1)
    m = await new()
    assert (await m.get("/v1/accounts")).status == 200
    assert (await m.get("/v1/accounts")).status == 429
    await asyncio.sleep(1.05)  # 1 s per unit, plus slack
    assert (await m.get("/v1/accounts")).status == 200


async def test_wrong_key_is_still_401_without_limit_headers(limited):
    client, _ = await limited(rate_limit_burst=1)
    bad = Api(client, "pck_" + "x" * 40, "mch_none")
    r = await bad.get("/v1/accounts")
    assert r.status == 401
    assert "RateLimit-Limit" not in r.headers


async def test_one_merchant_over_its_limit_leaves_another_alone(limited):
    _, new = await limited(rate_limit_burst=2)
    hot, calm = await new(), await new()
    statuses = [(await hot.get("/v1/accounts")).status for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    r = await calm.get("/v1/accounts")
    assert r.status == 200
    assert limit_headers(r)[:2] == (2, 1)


@pytest.mark.parametrize("batch_max", [64, 1])
async def test_concurrent_requests_get_exactly_the_burst(limited, batch_max):
    """Checks made together (several keys in one call, the same key several
    times) spend the budget exactly once per allowed request, whether the
    postings are batched or not (the checks always are)."""
    _, new = await limited(rate_limit_burst=7, post_batch_max=batch_max)
    m, other = await new(), await new()
    answers = await asyncio.gather(
        *(m.get("/v1/accounts") for _ in range(20)),
        *(other.get("/v1/accounts") for _ in range(3)),
    )
    mine = [a.status for a in answers[:20]]
    assert mine.count(200) == 7
    assert mine.count(429) == 13
    assert [a.status for a in answers[20:]] == [200, 200, 200]
    allowed = [a for a in answers[:20] if a.status == 200]
    assert sorted(int(a.headers["RateLimit-Remaining"]) for a in allowed) == list(range(7))


async def test_two_app_instances_share_one_budget(database, aiohttp_client, owner_conn):
    """Two ledger processes (separate apps and pools) count the same budget."""
    settings = make_settings(database.app_url, rate_limit_per_second=1, rate_limit_burst=6)
    first = await aiohttp_client(create_app(settings))
    second = await aiohttp_client(create_app(settings))
    created = await merchants.create(owner_conn, f"rl-{uuid.uuid4().hex[:12]}")
    on_first = Api(first, created["api_key"], created["merchant_id"])
    on_second = Api(second, created["api_key"], created["merchant_id"])
    statuses = []
    for i in range(8):
        statuses.append((await (on_first if i % 2 == 0 else on_second).get("/v1/accounts")).status)
    assert statuses == [200] * 6 + [429] * 2


async def test_idempotent_replays_count(limited):
    """A replay spends a unit like any request; refused, it stores nothing and
    replays the original answer once the budget is back."""
    _, new = await limited(rate_limit_burst=3)
    m = await new()
    await m.open_account("NGN")  # 1
    first = await m.pay(100, idem="same-key")  # 2
    assert first.status == 201
    replay = await m.pay(100, idem="same-key")  # 3
    assert replay.status == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert limit_headers(replay)[1] == 0
    refused = await m.pay(100, idem="same-key")
    assert refused.status == 429
    await asyncio.sleep(float(refused.headers["Retry-After"]))
    later = await m.pay(100, idem="same-key")
    assert later.status == 201
    assert later.body == first.body


async def test_cli_override_is_honoured_and_can_be_dropped(database, limited):
    _, new = await limited(rate_limit_per_second=1000, rate_limit_burst=1000)
    m = await new()
    env = admin_cli_env(database)
    result = run_cli(
        [
            "merchants",
            "rate-limit",
            "--merchant-id",
            m.merchant_id,
            "--per-second",
            "1",
            "--burst",
            "2",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"merchant_id": m.merchant_id, "per_second": 1, "burst": 2}
    statuses = [(await m.get("/v1/accounts")).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    r = await m.get("/v1/accounts")
    assert limit_headers(r)[:2] == (2, 0)

    result = run_cli(["merchants", "rate-limit", "--merchant-id", m.merchant_id, "--default"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["per_second"] is None
    await asyncio.sleep(1.1)  # the worker's own memory of the refusal ends
    r = await m.get("/v1/accounts")
    assert r.status == 200
    assert limit_headers(r)[0] == 1000

    shown = run_cli(["merchants", "rate-limit", "--merchant-id", m.merchant_id], env)
    assert json.loads(shown.stdout) == {
        "merchant_id": m.merchant_id,
        "per_second": None,
        "burst": None,
    }


def test_cli_refuses_bad_overrides(database):
    env = admin_cli_env(database)
    for args, expected in (
        (["--name", "nobody-such", "--burst", "5"], "no such merchant"),
        (["--name", "x", "--burst", "0"], "--burst must be from 1"),
        (["--name", "x", "--default", "--burst", "5"], "--default"),
    ):
        result = run_cli(["merchants", "rate-limit", *args], env)
        assert result.returncode == 1
        assert expected in result.stderr, result.stderr


async def test_runtime_role_cannot_change_overrides(database, merchant):
    conn = await asyncpg.connect(database.app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "UPDATE merchant_rate_limits SET per_second = 1000000 WHERE merchant_id = $1",
                merchant.merchant_id,
            )
    finally:
        await conn.close()


async def test_every_merchant_has_a_budget_row(owner_conn, merchant):
    missing = await owner_conn.fetchval(
        "SELECT count(*) FROM merchants m WHERE NOT EXISTS"
        " (SELECT 1 FROM merchant_rate_limits r WHERE r.merchant_id = m.id)"
    )
    assert missing == 0


async def test_checks_commit_asynchronously_on_their_own_connection(limited, database):
    """The checks' session has synchronous_commit off; the pool that moves money does not."""
    client, new = await limited()
    m = await new()
    assert (await m.get("/v1/accounts")).status == 200
    app = client.server.app
    # The test cluster itself runs with synchronous_commit off: look at who set it.
    query = "SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'"
    async with app[RATE_LIMITER_KEY].db.connection() as conn:
        assert tuple(await conn.fetchrow(query)) == ("off", "client")
    async with app[DB_KEY].connection() as conn:
        assert (await conn.fetchrow(query))["source"] != "client"


async def test_one_call_serves_each_merchants_checks_in_order(owner_conn):
    """ledger_rate_limit with many keys (one call for the requests arriving
    together, sql/0010): each merchant's items in idx order, the first `burst`
    allowed, remaining counting down, an unknown key answered apart."""
    a = await merchants.create(owner_conn, f"rl-{uuid.uuid4().hex[:12]}")
    b = await merchants.create(owner_conn, f"rl-{uuid.uuid4().hex[:12]}")
    ka, kb, unknown = hash_key(a["api_key"]), hash_key(b["api_key"]), b"\x00" * 32
    rows = await owner_conn.fetch(
        "SELECT * FROM ledger_rate_limit($1, 1, 3)", [ka, kb, ka, unknown, ka, ka, kb]
    )
    # A full bucket of 3 at 1 unit/s: A spends 3 of its 4, B 2 of 3; the
    # budgets are whole again 3 and 2 s later, A's 4th may retry in 1 s.
    # (Sorted by idx: the function promises no order of its rows.)
    m_a, m_b = a["merchant_id"], b["merchant_id"]
    assert sorted(tuple(row) for row in rows) == [
        (1, m_a, True, 3, 2, 0, 3_000_000),
        (2, m_b, True, 3, 2, 0, 2_000_000),
        (3, m_a, True, 3, 1, 0, 3_000_000),
        (4, None, False, 0, 0, 0, 0),
        (5, m_a, True, 3, 0, 0, 3_000_000),
        (6, m_a, False, 3, 0, 1_000_000, 3_000_000),
        (7, m_b, True, 3, 1, 0, 2_000_000),
    ]


async def test_checks_of_the_same_merchants_in_opposite_orders_never_deadlock(database, owner_conn):
    """Two workers' calls naming the same merchants in opposite orders lock
    their budget rows in one order (sql/0017), so neither waits on the other
    in a cycle: no deadlock_detected, every call answered."""
    hashes = [
        hash_key((await merchants.create(owner_conn, f"rl-{uuid.uuid4().hex[:12]}"))["api_key"])
        for _ in range(20)
    ]
    first = await asyncpg.connect(database.app_url)
    second = await asyncpg.connect(database.app_url)

    async def check(conn: asyncpg.Connection, keys: list[bytes]) -> None:
        for _ in range(100):
            async with conn.transaction():  # hold the locks a little longer
                rows = await conn.fetch("SELECT * FROM ledger_rate_limit($1, 1000, 1000)", keys)
                await conn.execute("SELECT pg_sleep(0.0005)")
            assert len(rows) == len(keys)

    try:
        await asyncio.gather(check(first, hashes), check(second, hashes[::-1]))
    finally:
        await first.close()
        await second.close()
