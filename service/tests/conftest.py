"""Fixtures: a real PostgreSQL (throwaway cluster unless PAYCORE_TEST_DATABASE_URL is
set), the schema migrated with least-privilege runtime and admin roles, the app under test."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import configuration
from paycore_ledger import config, merchants, migrations
from paycore_ledger.app import create_app
from pgcluster import Cluster, free_port

# Keep hypothesis' cache inside service/ (git-ignored there), not in the cwd.
configuration.set_hypothesis_home_dir(str(Path(__file__).resolve().parents[1] / ".hypothesis"))

APP_ROLE = "paycore_app_test"
ADMIN_ROLE = "paycore_admin_test"
TEST_DB = "paycore_test"


@dataclass
class Database:
    owner_url: str
    app_url: str
    admin_url: str
    cluster: Cluster | None


@pytest.fixture(scope="session")
def database() -> Database:
    external = os.environ.get("PAYCORE_TEST_DATABASE_URL")
    cluster = None
    if external:
        owner_url = external
        app_url = os.environ.get("PAYCORE_TEST_APP_DATABASE_URL", external)
        role = APP_ROLE if "PAYCORE_TEST_APP_DATABASE_URL" in os.environ else None
        admin_url = os.environ.get("PAYCORE_TEST_ADMIN_DATABASE_URL", external)
        admin_role = ADMIN_ROLE if "PAYCORE_TEST_ADMIN_DATABASE_URL" in os.environ else None
    else:
        cluster = Cluster().init()
        cluster.start()
        cluster.psql(f"CREATE DATABASE {TEST_DB}")
        cluster.psql(f"CREATE ROLE {APP_ROLE} LOGIN")
        cluster.psql(f"CREATE ROLE {ADMIN_ROLE} LOGIN")
        owner_url = cluster.url(database=TEST_DB)
        app_url = cluster.url(user=APP_ROLE, database=TEST_DB)
        admin_url = cluster.url(user=ADMIN_ROLE, database=TEST_DB)
        role = APP_ROLE
        admin_role = ADMIN_ROLE

    async def setup() -> None:
        conn = await asyncpg.connect(owner_url)
        try:
            await migrations.migrate(conn, role, admin_role=admin_role)
        finally:
            await conn.close()

    asyncio.run(setup())
    yield Database(owner_url, app_url, admin_url, cluster)
    if cluster is not None:
        cluster.destroy()


def make_settings(url: str, **overrides: Any) -> config.Settings:
    base = {
        "database_url": url,
        "workers": 1,
        "db_pool_min": 1,
        "db_pool_max": 20,
        "lock_timeout_ms": 1500,
        "review_thresholds": {"USD": 50_000},
        # Tests that fire many requests as one merchant are not about the rate
        # limit; test_rate_limits.py sets its own.
        "rate_limit_per_second": 100_000,
        "rate_limit_burst": 100_000,
    }
    base.update(overrides)
    return config.Settings(**base)


@pytest.fixture
def settings(database: Database) -> config.Settings:
    return make_settings(database.app_url)


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def scratch_database(database: Database):
    """The owner's URL of a new, empty database of its own on the suite's
    throwaway cluster, dropped afterwards."""
    if database.cluster is None:
        pytest.skip("creates and drops a database: needs the throwaway cluster")
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    database.cluster.psql(f"CREATE DATABASE {name}")
    yield database.cluster.url(database=name)
    database.cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
async def owner_conn(database: Database):
    conn = await asyncpg.connect(database.owner_url)
    yield conn
    await conn.close()


class Api:
    """Thin helper around the test client for one merchant."""

    def __init__(self, client, key: str, merchant_id: str) -> None:
        self.client = client
        self.key = key
        self.merchant_id = merchant_id

    def headers(self, idempotency_key: str | None = None, **extra: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}", **extra}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idem: str | None = None,
        raw: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ):
        all_headers = self.headers(idem)
        if headers is not None:
            all_headers.update(headers)
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        resp = await self.client.request(method, path, data=data, headers=all_headers)
        text = await resp.text()
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = text
        return Response(resp.status, payload, resp.headers)

    async def get(self, path: str, **kw):
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw):
        if "idem" not in kw and path != "/v1/accounts":
            kw["idem"] = uuid.uuid4().hex
        return await self.call("POST", path, body, **kw)

    async def open_account(self, currency: str = "NGN") -> str:
        r = await self.post("/v1/accounts", {"currency": currency})
        assert r.status == 201, r.body
        return r.body["id"]

    async def pay(self, amount: int, currency: str = "NGN", **kw):
        return await self.post("/v1/payments", {"amount": amount, "currency": currency}, **kw)

    async def payout(self, amount: int, currency: str = "NGN", **kw):
        return await self.post("/v1/payouts", {"amount": amount, "currency": currency}, **kw)

    async def refund(self, payment_id: str, amount: int, **kw):
        return await self.post(f"/v1/payments/{payment_id}/refunds", {"amount": amount}, **kw)

    async def balance(self, account_id: str) -> int:
        r = await self.get(f"/v1/accounts/{account_id}")
        assert r.status == 200, r.body
        return r.body["balance"]


@dataclass
class Response:
    status: int
    body: Any
    headers: Any

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


@pytest.fixture
async def new_merchant(database: Database, client):
    conn = await asyncpg.connect(database.owner_url)

    async def make(prefix: str = "m") -> Api:
        created = await merchants.create(conn, f"{prefix}-{uuid.uuid4().hex[:12]}")
        return Api(client, created["api_key"], created["merchant_id"])

    yield make
    await conn.close()


@pytest.fixture
async def merchant(new_merchant) -> Api:
    return await new_merchant()


# ---- running the real command line -------------------------------------------------

SERVICE_DIR = Path(__file__).resolve().parents[1]


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYCORE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PAYCORE_DATABASE_URL"] = url
    env.update(extra)
    return env


def admin_cli_env(database: Database, **extra: str) -> dict[str, str]:
    """As on a ledger host: the runtime role's URL, and the admin role's for
    the admin commands."""
    return cli_env(database.app_url, PAYCORE_ADMIN_DATABASE_URL=database.admin_url, **extra)


def run_cli(
    args: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "paycore_ledger", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServerProcess:
    def __init__(self, env: dict[str, str], args: list[str], port: int, host: str) -> None:
        self.port = port
        self.host = host
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "paycore_ledger", "serve", "--port", str(port), *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, path: str = "/healthz", timeout: float = 20) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.base + path, timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def serve(database: Database):
    started: list[ServerProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        ready: str = "/healthz",
        host: str = "127.0.0.1",
    ):
        server = ServerProcess(env or cli_env(database.app_url), list(args), free_port(), host)
        started.append(server)
        server.wait_ready(ready)
        return server

    yield start
    for server in started:
        server.stop()
