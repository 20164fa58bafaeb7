#!/usr/bin/env python3
"""Payments/s through a deployed site's full path. Run by hand; prints figures.

    .venv/bin/python service/bench/edge.py --url https://GATEWAY --keys-file KEYS \
        [--duration 20] [--connections 32]

Where bench.py measures one ledger process on loopback, this drives a running
site from outside: the TLS edge on the gateway, the WireGuard tunnel, every
ledger host behind it and PostgreSQL. KEYS holds one merchant API key per line
(`paycore-ledger merchants create` prints one; each merchant needs an NGN
account); each request posts a 1.00 NGN payment for a merchant picked at
random, with a fresh Idempotency-Key, as bench.py does (wrk and load.lua).
The edge's certificate is not verified (wrk does not). From one machine every
request comes from one address: the edge's per-address abuse guard
(`edge_rate_limit`) binds long before the merchants' own limits do, so
lift it for the run (service/README.md, Benchmark). 429s are counted apart:
past a merchant's own rate limit the ledger refuses, which is not an error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import start_wrk, wrk_result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the edge's base URL, e.g. https://10.0.0.5")
    parser.add_argument("--keys-file", required=True, type=Path, help="one API key per line")
    parser.add_argument("--duration", type=int, default=20, help="seconds")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("edge.py needs wrk, the HTTP load generator: apt-get install wrk", file=sys.stderr)
        return 2
    keys = [line.strip() for line in args.keys_file.read_text().splitlines() if line.strip()]
    if not keys:
        print(f"{args.keys_file}: no API keys", file=sys.stderr)
        return 2
    print(
        f"{len(keys)} merchants, {args.connections} connections, {args.duration} s"
        f" through {args.url} ...",
        flush=True,
    )
    figures = wrk_result(start_wrk(args.url, keys, args.connections, args.duration))
    print(
        f"payments/s {figures['rate']:.1f}; p50 {figures['p50_ms']:.1f} ms,"
        f" p99 {figures['p99_ms']:.1f} ms; 429 {figures['limited']},"
        f" other non-201 {figures['unexpected_status'] - figures['limited']}"
        f" (last {figures['last_unexpected']}), socket errors {figures['socket_errors']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
