"""The real `serve` process: database outages, SIGTERM draining, worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from conftest import cli_env
from paycore_ledger import merchants
from prometheus_client.mmap_dict import MmapedDict


def http(
    method: str,
    url: str,
    body: dict | None = None,
    headers: dict | None = None,
    timeout: float = 30,
):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


async def new_key(database) -> str:
    conn = await asyncpg.connect(database.owner_url)
    try:
        created = await merchants.create(conn, f"proc-{uuid.uuid4().hex[:10]}")
    finally:
        await conn.close()
    return created["api_key"]


def make_merchant(database) -> str:
    return asyncio.run(new_key(database))


def auth(key: str, idem: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    if idem:
        headers["Idempotency-Key"] = idem
    return headers


def wait_for(predicate, timeout: float = 30, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_database_down_503_then_recovers_without_restart(database, serve):
    if database.cluster is None:
        pytest.skip("needs the throwaway cluster (it is stopped and restarted)")
    key = make_merchant(database)
    server = serve("--workers", "1", ready="/readyz")
    status, _, _ = http("POST", server.base + "/v1/accounts", {"currency": "NGN"}, auth(key))
    assert status == 201

    database.cluster.stop("fast")
    try:
        late = serve("--workers", "1")  # starts fine while the database is down
        for base in (server.base, late.base):
            status, headers, body = http("GET", base + "/readyz")
            assert status == 503
            assert headers["Content-Type"].startswith("application/problem+json")
            assert json.loads(body)["code"] == "database_unavailable"
            status, _, body = http("GET", base + "/v1/accounts", headers=auth(key))
            assert status == 503 and json.loads(body)["code"] == "database_unavailable"
            status, _, body = http(
                "POST",
                base + "/v1/payments",
                {"amount": 5, "currency": "NGN"},
                auth(key, uuid.uuid4().hex),
            )
            assert status == 503
            assert http("GET", base + "/healthz")[0] == 200
            assert http("GET", base + "/metrics")[0] == 200
    finally:
        database.cluster.start()

    for base in (server.base, late.base):
        assert wait_for(lambda b=base: http("GET", b + "/readyz")[0] == 200), "no recovery"
        status, _, body = http(
            "POST",
            base + "/v1/payments",
            {"amount": 5, "currency": "NGN"},
            auth(key, uuid.uuid4().hex),
        )
        assert status == 201, body
    assert '"unhandled error"' not in server.output() + late.output()


async def test_sigterm_drains_in_flight_requests(database, serve, owner_conn):
    key = await new_key(database)
    env = cli_env(database.app_url, PAYCORE_LOCK_TIMEOUT_MS="20000")
    server = serve("--workers", "1", env=env, ready="/readyz")
    loop = asyncio.get_running_loop()
    status, _, body = await loop.run_in_executor(
        None, lambda: http("POST", server.base + "/v1/accounts", {"currency": "NGN"}, auth(key))
    )
    account = json.loads(body)["id"]

    # Hold the account row so the next payment is genuinely in flight.
    tx = owner_conn.transaction()
    await tx.start()
    await owner_conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account)
    in_flight = loop.run_in_executor(
        None,
        lambda: http(
            "POST",
            server.base + "/v1/payments",
            {"amount": 99, "currency": "NGN"},
            auth(key, "drain-me"),
        ),
    )
    await asyncio.sleep(1.0)
    assert not in_flight.done()
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    assert server.proc.poll() is None, "exited before the in-flight request finished"
    await tx.rollback()
    status, _, body = await in_flight
    assert status == 201, body
    assert json.loads(body)["amount"] == 99
    assert await loop.run_in_executor(None, lambda: server.proc.wait(timeout=20)) == 0
    balance = await owner_conn.fetchval("SELECT balance FROM accounts WHERE id = $1", account)
    assert balance == 99


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _served_healthz(counter_file) -> bool:
    return any(
        '"/healthz"' in row[0] and row[1] > 0
        for row in MmapedDict.read_all_values_from_file(str(counter_file))
    )


def test_burst_statuses_are_exported_at_zero_before_any_request(database, serve, tmp_path):
    """rate() cannot count a series' first sample: the first 503s of an outage or
    429s of a merchant over its limit must add to a series that already exists."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = cli_env(database.app_url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    server = serve("--workers", "2", env=env, ready="/healthz")
    _, _, body = http("GET", server.base + "/metrics")
    text = body.decode()
    for method, route in (("POST", "/v1/payments"), ("GET", "/v1/accounts/{id}")):
        for status in ("429", "500", "503"):
            series = (
                f'http_requests_total{{method="{method}",route="{route}",status="{status}"}} 0.0'
            )
            assert series in text.splitlines(), series
    assert 'route="/healthz",status="503"' not in text  # probes are not in the SLO
    assert 'method="HEAD"' not in text
    assert server.stop() == 0


def test_workers_serve_from_n_processes_and_metrics_aggregate(database, serve, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # cleaned at start
    env = cli_env(database.app_url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    server = serve("--workers", "3", env=env, ready="/readyz")
    assert wait_for(lambda: len(_children(server.proc.pid)) == 3, timeout=10)
    assert not (metrics_dir / "counter_999999.db").exists()

    # Each worker listens on its own SO_REUSEPORT socket and the kernel hashes
    # every new connection to one of them: over 90 connections, a worker left
    # without any would happen about once in 10**15 runs.
    n = 90
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda _: http("GET", server.base + "/healthz")[0], range(n)))
    assert statuses == [200] * n
    # Every worker's file holds its /v1 series at 0 from the start: count the
    # workers whose /healthz count grew.
    writers = {p.name for p in metrics_dir.glob("counter_*.db") if _served_healthz(p)}
    assert len(writers) == 3, f"requests were served by {len(writers)} of 3 workers"
    _, _, body = http("GET", server.base + "/metrics")
    text = body.decode()
    line = next(
        line
        for line in text.splitlines()
        if line.startswith('http_requests_total{method="GET",route="/healthz",status="200"}')
    )
    assert float(line.split()[-1]) == n
    assert "paycore_db_pool_max_connections" in text

    # A crashed worker is replaced.
    victim = sorted(_children(server.proc.pid))[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(
        lambda: len(_children(server.proc.pid)) == 3 and victim not in _children(server.proc.pid)
    )
    assert server.stop() == 0
