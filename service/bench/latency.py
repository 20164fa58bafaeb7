#!/usr/bin/env python3
"""Lone-request latency of two service variants, side by side. Run by hand.

    .venv/bin/python service/bench/latency.py [--requests 1000] \\
        [--a-src DIR] [--a-env K=V ...] [--b-src DIR] [--b-env K=V ...]

Starts one throwaway PostgreSQL 15 (fsync on) and two `paycore-ledger serve`
processes on it (one worker each): variant A and variant B, each with its own
PYTHONPATH (--a-src/--b-src: a service/src directory, e.g. an older release's,
default the installed package) and extra PAYCORE_* settings (--a-env/--b-env,
e.g. PAYCORE_POST_BATCH_MAX=1). Then one client sends payments one at a time,
alternating A, B, A, B, ..., each payment followed by its idempotent replay,
so that whatever else the machine does falls on both variants alike. Prints
p50/p90/p99 of the original and of the replay for each variant. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from bench import create_ledger, pct, setup_merchant, wait_ready  # noqa: E402
from pgcluster import Cluster, free_port  # noqa: E402


def start(cluster: Cluster, src: str | None, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYCORE_")}
    env.update(
        PAYCORE_DATABASE_URL=cluster.url(user="paycore_app", database="ledger"),
        PAYCORE_LOG_LEVEL="WARNING",
    )
    env.update(item.split("=", 1) for item in extra)
    if src:
        env["PYTHONPATH"] = src
    proc = subprocess.Popen(
        [sys.executable, "-m", "paycore_ledger", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


async def measure(bases: dict[str, str], keys: dict[str, str], n: int) -> dict[str, dict]:
    times = {name: {"original": [], "replay": []} for name in bases}
    async with aiohttp.ClientSession() as session:
        for i in range(n + 50):  # the first 50 warm up
            for name, base in bases.items():
                headers = {
                    "Authorization": f"Bearer {keys[name]}",
                    "Idempotency-Key": uuid.uuid4().hex,
                }
                for kind in ("original", "replay"):
                    started = time.perf_counter()
                    async with session.post(
                        base + "/v1/payments",
                        json={"amount": 7, "currency": "NGN"},
                        headers=headers,
                    ) as resp:
                        await resp.read()
                        assert resp.status == 201, resp.status
                    if i >= 50:
                        times[name][kind].append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--a-src")
    parser.add_argument("--b-src")
    parser.add_argument("--a-env", nargs="*", default=[])
    parser.add_argument("--b-env", nargs="*", default=[])
    args = parser.parse_args()
    cluster = Cluster(durable=True).init()
    cluster.start()
    procs = []
    try:
        owner_url = create_ledger(cluster)
        bases, keys = {}, {}
        for name, src, extra in (("A", args.a_src, args.a_env), ("B", args.b_src, args.b_env)):
            proc, base = start(cluster, src, extra)
            procs.append(proc)
            wait_ready(base)
            bases[name] = base
            keys[name] = asyncio.run(setup_merchant(owner_url, base))[0]
        times = asyncio.run(measure(bases, keys, args.requests))
        for name, src, extra in (("A", args.a_src, args.a_env), ("B", args.b_src, args.b_env)):
            line = f"{name} ({src or 'installed'}{' ' + ' '.join(extra) if extra else ''}):"
            for kind, values in times[name].items():
                line += (
                    f"  {kind} p50={statistics.median(values) * 1000:.2f}"
                    f" p90={pct(values, 90) * 1000:.2f} p99={pct(values, 99) * 1000:.2f} ms"
                )
            print(line)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
