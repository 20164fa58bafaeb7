"""The `paycore-ledger` command line, run as a real process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid

import asyncpg
import pytest
from conftest import admin_cli_env, cli_env, run_cli
from paycore_ledger import migrations


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "PAYCORE_DATABASE_URL"),
        ({"PAYCORE_DATABASE_URL": "mysql://x"}, "postgresql://"),
        ({"PAYCORE_DATABASE_URL": "postgresql://u@h:notaport/db"}, "port"),
        ({"PAYCORE_DATABASE_URL": "postgresql://u@h:99999/db"}, "port"),
        ({"PAYCORE_DATABASE_URL": "postgresql://u@h:5432,h2:x/db"}, "port"),
        ({"PAYCORE_DATABASE_URL": "postgresql://u@[::1/db"}, "PAYCORE_DATABASE_URL"),
        ({"PAYCORE_DATABASE_URL": "postgresql://u@h/db/extra"}, "database name"),
        ({"PAYCORE_DATABASE_URL": "postgresql://u@h/db?sslmode=sometimes"}, "sslmode"),
        ({"PAYCORE_DATABASE_URL": "postgresql://u@h/db?port=x"}, "port"),
        ({"PAYCORE_DATABASE_URL_FILE": "/nonexistent/url"}, "cannot read"),
        ({"PAYCORE_PORT": "http"}, "PAYCORE_PORT"),
        ({"PAYCORE_PORT": "70000"}, "PAYCORE_PORT"),
        ({"PAYCORE_WORKERS": "0"}, "PAYCORE_WORKERS"),
        ({"PAYCORE_CURRENCIES": "NGN,usd"}, "PAYCORE_CURRENCIES"),
        ({"PAYCORE_REVIEW_THRESHOLDS": "NGN=lots"}, "PAYCORE_REVIEW_THRESHOLDS"),
        ({"PAYCORE_REVIEW_THRESHOLDS": "JPY=5"}, "PAYCORE_REVIEW_THRESHOLDS"),
        ({"PAYCORE_IDEMPOTENCY_RETENTION_HOURS": "1"}, "PAYCORE_IDEMPOTENCY_RETENTION_HOURS"),
        ({"PAYCORE_LOG_LEVEL": "LOUD"}, "PAYCORE_LOG_LEVEL"),
        ({"PAYCORE_DB_POOL_MIN": "9", "PAYCORE_DB_POOL_MAX": "2"}, "PAYCORE_DB_POOL_MIN"),
    ],
)
def test_bad_settings_exit_with_one_line(database, env, expected):
    base = cli_env(database.app_url)
    if "PAYCORE_DATABASE_URL_FILE" in env or not env:
        base.pop("PAYCORE_DATABASE_URL")
    base.update(env)
    for args in (["serve"], ["migrate"], ["reconcile"]):
        assert_one_line_error(run_cli(args, base), expected)


def test_unreachable_database_is_one_line(database):
    env = cli_env("postgresql://nobody@127.0.0.1:1/none")
    assert_one_line_error(run_cli(["reconcile"], env), "cannot connect to the database")


def test_database_url_from_file_and_repeated_host(database, tmp_path, serve):
    url_file = tmp_path / "url"
    url_file.write_text(database.app_url + "\n")
    env = admin_cli_env(database)
    env.pop("PAYCORE_DATABASE_URL")
    env["PAYCORE_DATABASE_URL_FILE"] = str(url_file)
    assert run_cli(["idempotency", "purge"], env).returncode == 0
    server = serve(
        "--host", "127.0.0.1", "--host", "127.0.0.2", "--workers", "1", env=env, ready="/readyz"
    )
    import urllib.request

    for host in ("127.0.0.1", "127.0.0.2"):
        url = f"http://{host}:{server.port}/healthz"
        with urllib.request.urlopen(url) as resp:
            assert resp.status == 200
    env["PAYCORE_HOST"] = "127.0.0.3, 127.0.0.4"
    server = serve("--workers", "1", env=env, host="127.0.0.4")
    for host in ("127.0.0.3", "127.0.0.4"):
        url = f"http://{host}:{server.port}/healthz"
        with urllib.request.urlopen(url) as resp:  # noqa: S310
            assert resp.status == 200


@pytest.mark.parametrize("workers", ["1", "3"])
def test_port_taken_is_one_line(database, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli(
            ["serve", "--host", "127.0.0.1", "--port", port, "--workers", workers],
            cli_env(database.app_url),
        )
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


async def test_migrate_twice_concurrently_on_fresh_database(database, owner_conn):
    name = f"paycore_mig_{uuid.uuid4().hex[:8]}"
    try:
        await owner_conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("cannot create databases here")
    url = database.owner_url.rsplit("/", 1)[0] + f"/{name}"
    env = cli_env(url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "paycore_ledger", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    applied = sorted(json.loads(out)["applied"] for out, _ in outputs)
    versions = [m.version for m in migrations.available()]
    assert applied == [[], versions]
    again = run_cli(["migrate"], env)
    assert again.returncode == 0 and json.loads(again.stdout)["applied"] == []
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(versions)
    finally:
        await conn.close()
    await owner_conn.execute(f'DROP DATABASE "{name}"')


def test_migrate_grants_are_idempotent(database):
    if database.app_url == database.owner_url:
        pytest.skip("no separate runtime role")
    env = cli_env(database.owner_url)
    for _ in range(2):
        result = run_cli(["migrate", "--app-role", "paycore_app_test"], env)
        assert result.returncode == 0, result.stderr
    missing = run_cli(["migrate", "--app-role", "no_such_role"], env)
    assert_one_line_error(missing, "does not exist")


async def test_merchants_create_prints_key_once_stored_as_hash(database, client, owner_conn):
    result = run_cli(
        ["merchants", "create", "--name", f"cli-{uuid.uuid4().hex[:8]}"], admin_cli_env(database)
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["merchant_id"].startswith("mch_") and created["api_key"]
    r = await client.get("/v1/accounts", headers={"Authorization": f"Bearer {created['api_key']}"})
    assert r.status == 200
    dump = await owner_conn.fetchval("SELECT string_agg(key_hash::text || id, ',') FROM api_keys")
    assert created["api_key"] not in dump


async def test_merchants_ensure_is_idempotent_and_revoke_works(database, client):
    env = admin_cli_env(database)
    name = f"ensure-{uuid.uuid4().hex[:8]}"
    key = "pck_" + uuid.uuid4().hex + uuid.uuid4().hex
    first = run_cli(["merchants", "ensure", "--name", name], env, stdin=key + "\n")
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["changed"] is True and key not in first.stdout + first.stderr
    second = run_cli(["merchants", "ensure", "--name", name], env, stdin=key + "\n")
    assert json.loads(second.stdout) == {"merchant_id": out["merchant_id"], "changed": False}
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/accounts", headers=headers)).status == 200
    other = run_cli(["merchants", "ensure", "--name", name + "-b"], env, stdin=key + "\n")
    assert_one_line_error(other, "another merchant")
    assert_one_line_error(run_cli(["merchants", "ensure", "--name", name], env, stdin=""), "stdin")
    revoked = run_cli(["merchants", "revoke-key", "--stdin"], env, stdin=key + "\n")
    assert revoked.returncode == 0, revoked.stderr
    assert (await client.get("/v1/accounts", headers=headers)).status == 401
    listing = run_cli(["merchants", "list"], env)
    assert listing.returncode == 0 and key not in listing.stdout


async def test_payments_approve_and_reject(database, merchant, owner_conn):
    env = admin_cli_env(database)
    account = await merchant.open_account("NGN")
    big = (await merchant.pay(20_000_000)).body
    other = (await merchant.pay(30_000_000)).body
    assert big["status"] == other["status"] == "requires_review"
    assert await merchant.balance(account) == 0
    approved = run_cli(["payments", "approve", big["id"]], env)
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["status"] == "succeeded"
    assert await merchant.balance(account) == 20_000_000
    assert_one_line_error(run_cli(["payments", "approve", big["id"]], env), "not requires_review")
    rejected = run_cli(["payments", "reject", other["id"]], env)
    assert json.loads(rejected.stdout)["status"] == "rejected"
    assert (await merchant.get(f"/v1/payments/{other['id']}")).body["status"] == "rejected"
    assert await merchant.balance(account) == 20_000_000
    assert_one_line_error(run_cli(["payments", "reject", "pay_nope"], env), "no payment")
    # Approved payments are refundable like any other.
    assert (await merchant.refund(big["id"], 5)).status == 201


async def test_reconcile_clean_then_detects_tampering(
    database, merchant, owner_conn, tmp_path, client
):
    env = admin_cli_env(database)
    account = await merchant.open_account()
    await merchant.pay(500)
    textfile = tmp_path / "paycore.prom"
    clean = run_cli(["reconcile", "--textfile", str(textfile)], env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["ok"] is True
    text = textfile.read_text()
    assert "paycore_reconcile_ok 1" in text and "paycore_reconcile_problems 0" in text
    assert "paycore_reconcile_last_run_timestamp_seconds" in text

    # Simulate corruption no role should be able to cause: bypass the trigger.
    await owner_conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", account)
    try:
        dirty = run_cli(["reconcile", "--textfile", str(textfile)], env)
        assert dirty.returncode == 1
        report = json.loads(dirty.stdout)
        assert report["findings"]["balance_mismatches"][0]["account_id"] == account
        assert "currencies_not_netting_to_zero" not in report["findings"]
        assert "paycore_reconcile_ok 0" in textfile.read_text()
        metrics = await (await client.get("/metrics")).text()
        assert "paycore_reconcile_ok 0" in metrics
    finally:
        await owner_conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = $1", account)
    assert run_cli(["reconcile"], env).returncode == 0


async def test_reconcile_unwritable_textfile_is_a_one_line_error(database, tmp_path):
    missing_dir = tmp_path / "no-such-dir" / "paycore.prom"
    result = run_cli(["reconcile", "--textfile", str(missing_dir)], admin_cli_env(database))
    assert_one_line_error(result, "cannot write the textfile metric")
