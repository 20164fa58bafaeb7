#!/usr/bin/env python3
"""PayCore ledger benchmark. Run by hand; prints figures; not a test.

    .venv/bin/python service/bench/bench.py [--duration 15] [--clients 16,64] \
        [--pairs N] [--http-floor] [--batch-max N] [--batch-window-us T] [--idle-merchants N]

Starts a throwaway PostgreSQL 15 (durable settings: fsync on), migrates it,
starts `paycore-ledger serve` on loopback and measures:
  * payments/s and p50/p99 latency with 16 and 64 clients posting payments
    with unique Idempotency-Keys for a fixed time, against pgbench's built-in
    TPC-B-like script with the same client count on the same PostgreSQL;
  * GET /v1/accounts/{id} (balance) p99 with 1 000 and 1 000 000 entries
    (alternating rounds, median p99 of each);
  * idempotent replay latency vs the original request (one client, sequential).
The load comes from wrk (apt-get install wrk), a C client like pgbench's own,
so the comparison does not charge the service for a Python load generator.
Only loopback traffic. Client, service and PostgreSQL share the machine, so the
figures are a lower bound for the service; the CPU each side spends per
payment and per TPC-B transaction (from /proc; their quotient is the
"CPU ratio", what the throughput ratio would be on an otherwise idle
machine) tells where the time goes, and the service workers' run-queue wait
(/proc/PID/schedstat) how much of the machine other work took.
Throughput counts only the expected answers (201/200); others are errors.
--pairs N alternates N payments runs with N pgbench runs per client count and
prints the median ratio: on a machine whose speed drifts (a shared VM's can
double within an hour) only alternated pairs compare the two fairly.
--http-floor adds, per client count, a run of GET /healthz (no database, no
handler work): the service's CPU per request there is what any request costs
it, and the line printed is the CPU ratio payments would reach if they cost
the service no more (PostgreSQL's and wrk's share as measured): the ceiling of
any change to the service's own code on this machine.
--throughput-only skips the hot-account and balance-read runs (the payments/s
runs and the replay comparison remain). --idle-merchants N adds N merchants,
each with an API key and an NGN account, that send nothing, as a site has
many: the payments/s must not fall as they grow. The per-merchant rate limit is set
far above every run's rate (--rate-limit changes it): every request is still
checked, none refused. --fairness runs only the fairness comparison, under
the service's default limits: a calm merchant's payment latency alone and
beside a hot merchant hammering far over its limit. --batch-max/--batch-window-us set the
service's group commit (PAYCORE_POST_BATCH_MAX / _WINDOW_US; --batch-max 1 is
one call and one commit per request); unset, the service's defaults apply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import aiohttp
import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from idle_merchants import add_idle_merchants  # noqa: E402
from paycore_ledger import merchants, migrations  # noqa: E402
from pgcluster import PG_BIN, Cluster, free_port  # noqa: E402


def counts(text: str) -> list[int]:
    """An argparse type: whole numbers of 1 or more, comma-separated."""
    if not all(s.strip().isdigit() and int(s) >= 1 for s in text.split(",")):
        raise argparse.ArgumentTypeError("whole numbers of 1 or more, comma-separated, e.g. 2,8,32")
    return [int(s) for s in text.split(",")]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def start_wrk(
    base: str,
    api_keys: list[str],
    clients: int,
    duration: float,
    get_path: str = "",
    delay_ms: int | None = None,
) -> subprocess.Popen:
    """Start wrk (C, like pgbench's own client) driving the service through load.lua."""
    env = dict(os.environ, BENCH_API_KEYS=",".join(api_keys), BENCH_RUN_ID=uuid.uuid4().hex)
    if get_path:
        env["BENCH_GET_PATH"] = get_path
    if delay_ms is not None:
        env["BENCH_DELAY_MS"] = str(delay_ms)
    return subprocess.Popen(
        [
            "wrk",
            "-t",
            str(min(2, clients)),
            "-c",
            str(clients),
            "-d",
            f"{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "load.lua"),
            base,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wrk_result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr.strip()}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    # Throughput counts only the expected answers (201 for payments, 200 for
    # reads); wrk's request count includes error responses, reported apart.
    figures["ok"] = figures["requests"] - figures["unexpected_status"]
    figures["errors"] = figures["unexpected_status"] + figures["socket_errors"]
    figures["rate"] = figures["ok"] / figures["seconds"]
    return figures


def wrk(base: str, api_keys: list[str], clients: int, duration: float, get_path: str = "") -> dict:
    return wrk_result(start_wrk(base, api_keys, clients, duration, get_path))


async def commits(owner_url: str) -> tuple[int, int]:
    """(payments, transactions that wrote them) so far: payments per commit."""
    conn = await asyncpg.connect(owner_url)
    try:
        row = await conn.fetchrow("SELECT count(*), count(DISTINCT xmin::text) FROM payments")
    finally:
        await conn.close()
    return row[0], row[1]


def children_cpu() -> float:
    """User + system CPU of this script's finished child processes (wrk, pgbench)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_queue_wait(root_pid: int) -> float:
    """Seconds the process tree's live tasks spent runnable but waiting for a CPU
    (/proc/PID/schedstat): on a shared machine, how much CPU others took."""
    total = 0.0
    for pid in descendants(root_pid):
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return total


def descendants(root_pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return found


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU time of a process and its descendants (live or reaped)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, times = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
        if int(entry.name) == root_pid:  # plus its children already reaped
            times[root_pid] += (int(fields[13]) + int(fields[14])) / tick
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


async def replay_vs_original(base: str, key: str, n: int) -> tuple[list[float], list[float]]:
    original, replay = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
            for bucket in (original, replay):
                started = time.perf_counter()
                async with session.post(
                    base + "/v1/payments", json={"amount": 7, "currency": "NGN"}, headers=headers
                ) as resp:
                    await resp.read()
                    assert resp.status == 201
                bucket.append(time.perf_counter() - started)
    return original, replay


def pgbench(cluster: Cluster, clients: int, duration: int) -> float:
    result = subprocess.run(
        [
            str(PG_BIN / "pgbench"),
            "-n",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(duration),
            cluster.url(database="pgbench"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"tps = ([\d.]+) \(without initial", result.stdout)
    return float(match[1])


async def populate(owner_url: str, account: str, entries: int) -> None:
    """Bulk-load `entries` credits onto one account (and matching system debits).

    Uses session_replication_role=replica to skip the per-row triggers for
    speed (throwaway benchmark cluster only), then sets the stored balances to
    what the triggers would have produced, and checks the result balances.
    """
    conn = await asyncpg.connect(owner_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            first = await conn.fetchval("SELECT coalesce(max(id), 0) FROM journal_transactions")
            await conn.execute(
                """
                INSERT INTO journal_transactions (kind, source_id, currency)
                SELECT 'payment', 'pay_bench_' || ($2 + g), 'NGN' FROM generate_series(1, $1) g
                """,
                entries,
                first,
            )
            await conn.execute(
                """
                INSERT INTO entries (transaction_id, account_id, direction, amount)
                SELECT t.id, v.account_id, v.direction, 1
                  FROM journal_transactions t,
                       LATERAL (VALUES ($2, 'credit'),
                                       ('acct_sys_ngn_' || lpad((t.id % 16)::text, 2, '0'),
                                        'debit')) v(account_id, direction)
                 WHERE t.id > $1
                """,
                first,
                account,
            )
            await conn.execute(
                """
                UPDATE accounts a SET balance = s.total FROM (
                    SELECT account_id,
                           sum(CASE WHEN direction = 'credit' THEN amount ELSE -amount END) AS total
                      FROM entries GROUP BY account_id) s
                 WHERE s.account_id = a.id
                """
            )
        await conn.execute("VACUUM ANALYZE entries")
        await conn.execute("VACUUM ANALYZE accounts")
    finally:
        await conn.close()


async def add_idle(owner_url: str, count: int) -> None:
    conn = await asyncpg.connect(owner_url)
    try:
        await add_idle_merchants(conn, count)
    finally:
        await conn.close()


async def setup_merchant(owner_url: str, base: str) -> tuple[str, str]:
    conn = await asyncpg.connect(owner_url)
    try:
        created = await merchants.create(conn, f"bench-{uuid.uuid4().hex[:8]}")
    finally:
        await conn.close()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            base + "/v1/accounts",
            json={"currency": "NGN"},
            headers={"Authorization": f"Bearer {created['api_key']}"},
        ) as resp,
    ):
        account = (await resp.json())["id"]
    return created["api_key"], account


def create_ledger(cluster: Cluster) -> str:
    """Database `ledger`, migrated, runtime role `paycore_app`; returns the owner's URL."""
    cluster.psql("CREATE DATABASE ledger")
    cluster.psql("CREATE ROLE paycore_app LOGIN")
    owner_url = cluster.url(database="ledger")

    async def migrate() -> None:
        conn = await asyncpg.connect(owner_url)
        await migrations.migrate(conn, "paycore_app")
        await conn.close()

    asyncio.run(migrate())
    return owner_url


def wait_ready(base: str) -> None:
    import urllib.request

    for _ in range(100):
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1):  # noqa: S310
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("service did not become ready")


# Far above any run's rate, so no request is refused; each is still checked
# (the check costs the same whatever the limit).
UNBINDING_RATE_LIMIT = 1_000_000
# The calm merchant: two connections, each waiting 20 ms before every
# request, so well below the default 100/s; the hot one: 32 connections,
# each waiting HOT_DELAY_MS (default: about 1 000 requests/s, ten times its
# limit and twice what the edge lets one address send; 0: flat out, which
# on a shared 2-core machine measures wrk taking CPUs from the service).
CALM_CLIENTS, CALM_DELAY_MS, HOT_CLIENTS, HOT_DELAY_MS = 2, 20, 32, 30


def fairness(
    base: str, owner_url: str, duration: int, rounds: int, workers: int, hot_delay_ms: int
) -> None:
    """A calm merchant's payment latency alone, then beside a hot merchant
    hammering far over its limit, alternating; both under the service's limits."""
    calm_key, _ = asyncio.run(setup_merchant(owner_url, base))
    hot_key, _ = asyncio.run(setup_merchant(owner_url, base))
    print(
        f"fairness: service workers={workers}, {duration}s per run, {rounds} rounds; calm merchant:"
        f" {CALM_CLIENTS} connections, {CALM_DELAY_MS} ms between requests; hot merchant:"
        f" {HOT_CLIENTS} connections, "
        + (f"{hot_delay_ms} ms between requests" if hot_delay_ms else "flat out")
    )
    wrk_result(start_wrk(base, [calm_key], CALM_CLIENTS, 2, delay_ms=CALM_DELAY_MS))  # warm-up

    def calm_run() -> subprocess.Popen:
        return start_wrk(base, [calm_key], CALM_CLIENTS, duration, delay_ms=CALM_DELAY_MS)

    alone, beside = [], []
    for i in range(1, rounds + 1):
        calm = wrk_result(calm_run())
        alone.append(calm)
        print(
            f"  round {i} calm alone:  {calm['rate']:6.1f} payments/s  p50={calm['p50_ms']:6.2f}ms"
            f"  p99={calm['p99_ms']:6.2f}ms  errors={calm['errors']}"
        )
        hot_proc = start_wrk(
            base, [hot_key], HOT_CLIENTS, duration + 2, delay_ms=hot_delay_ms or None
        )
        time.sleep(1)  # the hot merchant is already over its limit
        calm = wrk_result(calm_run())
        hot = wrk_result(hot_proc)
        beside.append(calm)
        print(
            f"  round {i} calm beside: {calm['rate']:6.1f} payments/s  p50={calm['p50_ms']:6.2f}ms"
            f"  p99={calm['p99_ms']:6.2f}ms  errors={calm['errors']}"
            f" | hot: {hot['requests'] / hot['seconds']:7.1f} requests/s,"
            f" {hot['rate']:6.1f} payments/s, {hot['limited'] / hot['seconds']:7.1f} 429s/s,"
            f" other errors {hot['errors'] - hot['limited']}"
        )
    p50s = [statistics.median(r["p50_ms"] for r in runs) for runs in (alone, beside)]
    p99s = [statistics.median(r["p99_ms"] for r in runs) for runs in (alone, beside)]
    print(
        f"calm merchant, medians of {rounds}: alone p50={p50s[0]:.2f}ms p99={p99s[0]:.2f}ms;"
        f" beside the hot one p50={p50s[1]:.2f}ms p99={p99s[1]:.2f}ms;"
        f" p99 ratio {p99s[1] / p99s[0]:.2f}x (target <= 2x)"
    )


class PairFigures(NamedTuple):
    """One alternated pair: the throughput ratio and the CPU (ms) per payment
    and per TPC-B transaction."""

    ratio: float
    wrk_ms: float
    service_ms: float
    database_ms: float
    tpcb_ms: float


def throughput_pair(
    cluster: Cluster,
    server_pid: int,
    base: str,
    owner_url: str,
    keys: list[str],
    clients: int,
    args: argparse.Namespace,
) -> PairFigures:
    """One payments run, then one pgbench run, on the same PostgreSQL; prints
    both and the CPU each side spent."""
    scale = len(keys)
    before = cpu_seconds(server_pid), cpu_seconds(cluster.postmaster_pid()), children_cpu()
    waited = run_queue_wait(server_pid)
    written = asyncio.run(commits(owner_url))
    run = wrk(base, keys, clients, args.duration)
    written = [b - a for a, b in zip(written, asyncio.run(commits(owner_url)), strict=True)]
    waited = run_queue_wait(server_pid) - waited
    service_cpu = cpu_seconds(server_pid) - before[0]
    database_cpu = cpu_seconds(cluster.postmaster_pid()) - before[1]
    wrk_cpu = children_cpu() - before[2]
    before = cpu_seconds(cluster.postmaster_pid()), children_cpu()
    tps = pgbench(cluster, clients, args.duration)
    time.sleep(1)  # let the postmaster reap pgbench's backends (their CPU)
    tpcb_database_cpu = cpu_seconds(cluster.postmaster_pid()) - before[0]
    tpcb_client_cpu = children_cpu() - before[1]
    done = max(run["ok"], 1)
    transactions = tps * args.duration
    figures = PairFigures(
        run["rate"] / tps,
        wrk_cpu / done * 1000,
        service_cpu / done * 1000,
        database_cpu / done * 1000,
        (tpcb_client_cpu + tpcb_database_cpu) / transactions * 1000,
    )
    print(
        f"clients={clients:3d} accounts={scale:3d}  payments/s={run['rate']:7.1f}"
        f"  p50={run['p50_ms']:6.1f}ms  p99={run['p99_ms']:6.1f}ms"
        f"  errors={run['errors']} (last status {run['last_unexpected'] or '-'})"
        f"  | pgbench TPC-B (-s {scale}) tps={tps:7.1f}"
        f"  ratio={figures.ratio:.2f}x"
    )
    payment_ms = figures.wrk_ms + figures.service_ms + figures.database_ms
    print(
        f"    CPU per payment: wrk {figures.wrk_ms:.2f} + service {figures.service_ms:.2f}"
        f" + PostgreSQL {figures.database_ms:.2f} = {payment_ms:.2f} ms | per TPC-B"
        f" transaction: pgbench {tpcb_client_cpu / transactions * 1000:.2f} + PostgreSQL"
        f" {tpcb_database_cpu / transactions * 1000:.2f} = {figures.tpcb_ms:.2f} ms"
        f" | CPU ratio {figures.tpcb_ms / payment_ms:.2f}x"
    )
    print(
        f"    service workers waited for a CPU {waited / args.workers:.1f} of"
        f" {args.duration} s each (machine load {os.getloadavg()[0]:.1f});"
        f" {written[0] / max(written[1], 1):.1f} payments per commit",
        flush=True,
    )
    return figures


def http_floor(server_pid: int, base: str, keys: list[str], clients: int, duration: int) -> float:
    """The service's CPU ms per GET /healthz: what any request costs it
    (aiohttp, the middlewares, a small JSON answer), no database, no handler work."""
    wrk(base, keys, clients, 2, get_path="/healthz")  # warm-up (the key is sent, not needed)
    before = cpu_seconds(server_pid)
    run = wrk(base, keys, clients, duration, get_path="/healthz")
    return (cpu_seconds(server_pid) - before) / max(run["ok"], 1) * 1000


def print_ceiling(pairs: list[PairFigures], floor_ms: float) -> None:
    """The CPU ratio if a payment cost the service no more than the HTTP floor,
    PostgreSQL and wrk unchanged (medians over the pairs): the most that any
    change to the service's own code could reach on this machine."""
    tpcb = statistics.median(p.tpcb_ms for p in pairs)
    database = statistics.median(p.database_ms for p in pairs)
    wrk_ms = statistics.median(p.wrk_ms for p in pairs)
    service = statistics.median(p.service_ms for p in pairs)
    print(
        f"    HTTP floor (GET /healthz): service {floor_ms:.3f} ms per request, a payment"
        f" {service:.3f} ms | with the service at the floor: CPU ratio at most"
        f" {tpcb / (wrk_ms + floor_ms + database):.2f}x (TPC-B {tpcb:.2f} ms, PostgreSQL"
        f" {database:.2f} + wrk {wrk_ms:.2f} ms per payment)",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15, help="seconds per throughput run")
    parser.add_argument("--clients", type=counts, default="16,64")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="skip the hot-account and balance-read runs",
    )
    parser.add_argument(
        "--idle-merchants",
        type=int,
        default=0,
        help="merchants with a key and an account that send nothing",
    )
    parser.add_argument("--batch-max", type=int, help="PAYCORE_POST_BATCH_MAX for the service")
    parser.add_argument(
        "--batch-window-us", type=int, help="PAYCORE_POST_BATCH_WINDOW_US for the service"
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        help="PAYCORE_RATE_LIMIT_PER_SECOND for the service (burst: twice that); default:"
        f" {UNBINDING_RATE_LIMIT} (every request is still checked, none refused), with"
        " --fairness the service's own default",
    )
    parser.add_argument(
        "--fairness",
        action="store_true",
        help="only the fairness runs: a calm merchant's latency alone and beside a hot one",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="payments runs alternated with pgbench runs per client count; more than 1:"
        " also prints the median ratio (machines that drift: use 3 or more)",
    )
    parser.add_argument(
        "--http-floor",
        action="store_true",
        help="per client count, also the service's CPU per GET /healthz and the CPU ratio"
        " a payment would reach if it cost the service no more than that",
    )
    parser.add_argument("--rounds", type=int, default=3, help="fairness rounds (alternating)")
    parser.add_argument(
        "--hot-delay-ms",
        type=int,
        default=HOT_DELAY_MS,
        help="fairness: the hot merchant's pause per connection between requests (0: flat out)",
    )
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be 1 or more")
    if args.fairness and (args.http_floor or args.pairs != 1):
        parser.error("--http-floor and --pairs go with the throughput runs, which --fairness skips")
    if shutil.which("wrk") is None:
        print("bench.py needs wrk, the HTTP load generator: apt-get install wrk", file=sys.stderr)
        return 2

    cluster = Cluster(durable=True, extra={"max_connections": "400"}).init()
    cluster.start()
    server = None
    try:
        owner_url = create_ledger(cluster)
        if args.idle_merchants:
            asyncio.run(add_idle(owner_url, args.idle_merchants))
        cluster.psql("CREATE DATABASE pgbench")
        subprocess.run(
            [
                str(PG_BIN / "pgbench"),
                "-i",
                "-q",
                "-s",
                str(max(args.clients)),
                cluster.url(database="pgbench"),
            ],
            capture_output=True,
            check=True,
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYCORE_")}
        env.update(
            PAYCORE_DATABASE_URL=cluster.url(user="paycore_app", database="ledger"),
            PAYCORE_DB_POOL_MAX=str(max(8, max(args.clients) // args.workers)),
            PAYCORE_LOG_LEVEL="WARNING",
        )
        rate_limit = args.rate_limit or (None if args.fairness else UNBINDING_RATE_LIMIT)
        if rate_limit is not None:
            env["PAYCORE_RATE_LIMIT_PER_SECOND"] = str(rate_limit)
            env["PAYCORE_RATE_LIMIT_BURST"] = str(min(2 * rate_limit, UNBINDING_RATE_LIMIT))
        if args.batch_max is not None:
            env["PAYCORE_POST_BATCH_MAX"] = str(args.batch_max)
        if args.batch_window_us is not None:
            env["PAYCORE_POST_BATCH_WINDOW_US"] = str(args.batch_window_us)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paycore_ledger",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        wait_ready(base)
        if args.fairness:
            fairness(base, owner_url, args.duration, args.rounds, args.workers, args.hot_delay_ms)
            return 0
        key, _ = asyncio.run(setup_merchant(owner_url, base))
        print(
            f"PostgreSQL 15 (fsync on), service workers={args.workers}, "
            f"{args.duration}s per run, loopback, {os.cpu_count()} CPUs shared by all, "
            f"batch max={env.get('PAYCORE_POST_BATCH_MAX', 'default')} "
            f"window={env.get('PAYCORE_POST_BATCH_WINDOW_US', 'default')} us, "
            f"rate limit={env.get('PAYCORE_RATE_LIMIT_PER_SECOND', 'default')}/s per merchant,"
            f" {args.idle_merchants} idle merchants"
        )

        # Like pgbench's branches (-s 64: 64 of them, one picked at random per
        # transaction), payments go to one of as many merchant accounts, picked
        # at random per request. A separate run shows one hot merchant.
        scale = max(args.clients)
        keys = [asyncio.run(setup_merchant(owner_url, base))[0] for _ in range(scale)]
        # The set-up wrote pgbench's tables (about 1 GB at -s 64): flushed now,
        # so that a checkpoint's writes do not stall the commits of a measured run.
        cluster.psql("CHECKPOINT")
        for clients in args.clients:
            wrk(base, keys, clients, 2)  # warm-up
            pairs = [
                throughput_pair(cluster, server.pid, base, owner_url, keys, clients, args)
                for _ in range(args.pairs)
            ]
            ratios = [p.ratio for p in pairs]
            if args.http_floor:
                print_ceiling(pairs, http_floor(server.pid, base, keys, clients, args.duration))
            if args.pairs > 1:
                print(
                    f"clients={clients:3d}: ratio median of {args.pairs} alternated pairs"
                    f" {statistics.median(ratios):.2f}x ("
                    + ", ".join(f"{r:.2f}" for r in ratios)
                    + ")"
                )
        original, replay = asyncio.run(replay_vs_original(base, key, 500))
        print(
            f"original payment: p50={statistics.median(original) * 1000:.2f}ms"
            f" p99={pct(original, 99) * 1000:.2f}ms | replay: p50="
            f"{statistics.median(replay) * 1000:.2f}ms p99={pct(replay, 99) * 1000:.2f}ms"
        )
        if args.throughput_only:
            return 0
        hot = args.clients[0]
        run = wrk(base, [key], hot, args.duration)
        print(
            f"clients={hot:3d} accounts=  1  payments/s={run['rate']:7.1f}"
            f"  p50={run['p50_ms']:6.1f}ms  p99={run['p99_ms']:6.1f}ms"
            f"  errors={run['errors']} (last status {run['last_unexpected'] or '-'})"
            "  (one hot merchant account: postings serialize on its row)"
        )

        key_small, small = asyncio.run(setup_merchant(owner_url, base))
        key_big, big = asyncio.run(setup_merchant(owner_url, base))
        asyncio.run(populate(owner_url, small, 1_000))
        started = time.perf_counter()
        asyncio.run(populate(owner_url, big, 1_000_000))
        print(f"(loaded 1 000 000 entries in {time.perf_counter() - started:.1f}s)")
        # A balance read is one indexed row either way. On a shared machine a
        # single p99 is mostly noise, so the two sizes alternate, three rounds
        # each, and the median of each size's p99s is compared.
        p99s: dict[str, list[float]] = {"1k": [], "1M": []}
        for k, acct in ((key_small, small), (key_big, big)):
            wrk(base, [k], 16, 1, get_path=f"/v1/accounts/{acct}")  # warm-up
        for _ in range(3):
            for label, k, acct in (("1k", key_small, small), ("1M", key_big, big)):
                run = wrk(base, [k], 16, 4, get_path=f"/v1/accounts/{acct}")
                assert run["unexpected_status"] == 0, run
                p99s[label].append(run["p99_ms"])
        for label, values in p99s.items():
            print(
                f"balance read, {label:>2} entries: p99 per round "
                + ", ".join(f"{v:.2f}" for v in values)
                + f" ms; median {statistics.median(values):.2f} ms"
            )
        ratio = statistics.median(p99s["1M"]) / statistics.median(p99s["1k"])
        print(f"balance p99 ratio 1M/1k (medians) = {ratio:.2f}x")

    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
