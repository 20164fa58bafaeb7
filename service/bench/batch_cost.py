#!/usr/bin/env python3
"""What one posting call costs PostgreSQL, by batch size. Run by hand; prints figures.

    .venv/bin/python service/bench/batch_cost.py [--sizes 2,8,32] [--calls 300] \\
        [--rounds 3] [--variant FILE] [--statements]

Starts a throwaway PostgreSQL 15 (fsync on), migrates it, adds 16 merchants
with an NGN account, and posts batches of new payments the way the service
does (payment_call.call: `ledger_pay_batch`, or `ledger_pay` for one) on one
connection in a loop, with nothing else asking: no HTTP, no rate checks, no
other client. bench.py measures the whole service; this measures the
database's share of a batch, which is what a change of the posting SQL
changes. Per batch size it prints the backend's CPU per call
(/proc/PID/schedstat) and the wall time per call, per round and their
medians, then the straight line through the medians: CPU per call = a fixed
part + a part per payment. The machine's speed still moves the figures;
compare only rounds that alternate.

--variant FILE: SQL that replaces functions (CREATE OR REPLACE FUNCTION ...),
compared with the migrated ones on the same database: rounds alternate
migrated, variant, migrated, variant, ...; the functions the file replaces
are put back (pg_get_functiondef) before each migrated round, and each round
has a new connection (PL/pgSQL keeps its plans per session).
--statements: pg_stat_statements (track = all) for the last round of each size
and variant: the statements that took the most time, nested ones included,
with their mean time and how many ran per posting call.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from pathlib import Path

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from bench import counts, create_ledger  # noqa: E402
from ledger_setup import merchant_with_account, new_payment  # noqa: E402
from paycore_ledger import ledger, payment_call  # noqa: E402
from pgcluster import Cluster  # noqa: E402

MERCHANTS = 16
WARM_UP_CALLS = 50
MIGRATED = "migrated"


def backend_cpu_ms(pid: int) -> float:
    # schedstat counts in nanoseconds; /proc/PID/stat (bench.cpu_seconds) in
    # 10 ms ticks, too coarse for a round of a few hundred ms.
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


def payment_requests(api_keys: list[str], size: int) -> list[payment_call.PaymentRequest]:
    """`size` new payments, spread over the merchants."""
    return [new_payment(api_keys[i % len(api_keys)], 1000 + i) for i in range(size)]


async def add_merchants(conn: asyncpg.Connection) -> list[str]:
    """MERCHANTS merchants with an NGN account each; returns their API keys."""
    await ledger.ensure_system_accounts(conn, "NGN")
    return [await merchant_with_account(conn, f"batch-cost-{n}") for n in range(MERCHANTS)]


async def replaced_functions(conn: asyncpg.Connection, sql: str) -> str:
    """The current definitions of the functions `sql` creates or replaces."""
    names = sorted(set(re.findall(r"(?i)\bFUNCTION\s+(?:public\.)?(\w+)\s*\(", sql)))
    if not names:
        raise SystemExit("the variant file replaces no function (CREATE OR REPLACE FUNCTION ...)")
    definitions = await conn.fetch(
        "SELECT pg_get_functiondef(p.oid) FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public' AND p.proname = ANY($1::text[])",
        names,
    )
    return ";\n".join(row[0] for row in definitions) + ";\n"


async def apply(owner: asyncpg.Connection, name: str, definitions: str) -> None:
    try:
        await owner.execute(definitions)
    except asyncpg.PostgresError as exc:
        raise SystemExit(f"{name}: PostgreSQL refused its SQL: {exc}") from None


async def one_round(
    app_url: str, api_keys: list[str], size: int, calls: int, owner: asyncpg.Connection | None
) -> tuple[float, float]:
    """(backend CPU ms, wall ms) per posting call, on a new connection; with
    `owner`, pg_stat_statements is reset after the warm-up."""
    conn = await asyncpg.connect(app_url)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        for _ in range(WARM_UP_CALLS):
            await payment_call.call(conn, payment_requests(api_keys, size))
        if owner is not None:
            await owner.execute("SELECT pg_stat_statements_reset()")
        batches = [payment_requests(api_keys, size) for _ in range(calls)]
        cpu_before, started = backend_cpu_ms(pid), time.perf_counter()
        for batch in batches:
            results = await payment_call.call(conn, batch)
            outcomes = {result[2] for result in results}
            if outcomes != {payment_call.PayOutcome.CREATED}:
                raise SystemExit(f"a payment was not created: {sorted(outcomes)}")
        wall_ms = (time.perf_counter() - started) * 1000
        return (backend_cpu_ms(pid) - cpu_before) / calls, wall_ms / calls
    finally:
        await conn.close()


async def top_statements(owner: asyncpg.Connection, calls: int) -> list[str]:
    rows = await owner.fetch(
        "SELECT calls, mean_exec_time, regexp_replace(query, '\\s+', ' ', 'g') AS query"
        " FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'"
        " ORDER BY total_exec_time DESC LIMIT 12"
    )
    return [
        f"      {row['calls'] / calls:5.1f} per call {row['mean_exec_time'] * 1000:8.1f} µs"
        f"  {row['query'][:100]}"
        for row in rows
    ]


def line_through(sizes: list[int], cpu_ms: list[float]) -> tuple[float, float]:
    """Least squares: cpu = fixed + per_payment * size."""
    slope, intercept = statistics.linear_regression(sizes, cpu_ms)
    return intercept, slope


async def measure(cluster: Cluster, owner_url: str, args: argparse.Namespace) -> None:
    owner = await asyncpg.connect(owner_url)
    try:
        api_keys = await add_merchants(owner)
        if args.statements:
            await owner.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        variants = {MIGRATED: None}
        if args.variant:
            sql = args.variant.read_text()
            variants = {MIGRATED: await replaced_functions(owner, sql), args.variant.name: sql}
        app_url = cluster.url(user="paycore_app", database="ledger")
        sizes = args.sizes
        medians: dict[str, list[float]] = {name: [] for name in variants}
        for size in sizes:
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            wall: dict[str, list[float]] = {name: [] for name in variants}
            for round_no in range(args.rounds):
                last = round_no == args.rounds - 1
                for name, definitions in variants.items():
                    if definitions is not None:
                        await apply(owner, name, definitions)
                    statements = last and args.statements
                    per_call = await one_round(
                        app_url, api_keys, size, args.calls, owner if statements else None
                    )
                    cpu[name].append(per_call[0])
                    wall[name].append(per_call[1])
                    if statements:
                        print(f"  size {size:3d} {name}, statements of the last round:")
                        print("\n".join(await top_statements(owner, args.calls)))
            for name in variants:
                medians[name].append(statistics.median(cpu[name]))
                print(
                    f"size {size:3d}  {name}: backend CPU {medians[name][-1]:.3f} ms per call"
                    f" (rounds: {', '.join(f'{c:.3f}' for c in cpu[name])}),"
                    f" wall {statistics.median(wall[name]):.3f} ms per call",
                    flush=True,
                )
        if len(set(sizes)) > 1:
            for name, values in medians.items():
                fixed, per_payment = line_through(sizes, values)
                print(
                    f"{name}: CPU per call = {fixed:.3f} ms + {per_payment:.3f} ms per payment"
                    f" (through the medians of sizes {','.join(map(str, sizes))})"
                )
    finally:
        await owner.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=counts, default="2,8,32", help="payments per call, comma-separated"
    )
    parser.add_argument("--calls", type=int, default=300, help="measured calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size (and variant)")
    parser.add_argument("--variant", type=Path, help="SQL replacing functions, to compare")
    parser.add_argument(
        "--statements", action="store_true", help="pg_stat_statements of each last round"
    )
    args = parser.parse_args()
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be 1 or more")
    if args.variant is not None and not args.variant.is_file():
        parser.error(f"--variant: no such file: {args.variant}")

    extra = {"max_connections": "20"}
    if args.statements:
        extra.update(
            {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}
        )
    cluster = Cluster(durable=True, extra=extra).init()
    cluster.start()
    try:
        owner_url = create_ledger(cluster)
        print(
            f"PostgreSQL 15 (fsync on), one connection posting batches of new payments,"
            f" {args.calls} calls per round, {args.rounds} rounds per size"
            + (f", alternating with {args.variant.name}" if args.variant else ""),
            flush=True,
        )
        asyncio.run(measure(cluster, owner_url, args))
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
