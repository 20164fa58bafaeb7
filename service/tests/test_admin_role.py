"""The admin role (the CLI's merchants, payments, reconcile, idempotency and
webhook administration) and the runtime role (the HTTP service and the
webhook delivery worker): each has only what its own commands need."""

from __future__ import annotations

import json
import subprocess
import uuid

import asyncpg
import pytest
from conftest import admin_cli_env, cli_env, run_cli

PUBLIC = "https://93.184.215.14/paycore/hooks"  # a public address literal: no DNS needed


def _needs_separate_roles(database):
    if len({database.owner_url, database.app_url, database.admin_url}) < 3:
        pytest.skip("no separate runtime and admin roles configured")


@pytest.fixture
async def app_conn(database):
    conn = await asyncpg.connect(database.app_url)
    yield conn
    await conn.close()


@pytest.fixture
async def admin_conn(database):
    conn = await asyncpg.connect(database.admin_url)
    yield conn
    await conn.close()


def _assert_admin_hint(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "permission denied" in lines[0]
    assert "admin role's credentials" in lines[0]
    assert "PAYCORE_ADMIN_DATABASE_URL_FILE" in lines[0]


async def test_runtime_role_cannot_insert_merchants(database, app_conn):
    _needs_separate_roles(database)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.execute(
            "INSERT INTO merchants (id, name) VALUES ($1, $2)",
            f"mch_{uuid.uuid4().hex[:20]}",
            f"sneaky-{uuid.uuid4().hex[:8]}",
        )


async def test_runtime_role_cannot_insert_or_revoke_api_keys(database, merchant, app_conn):
    _needs_separate_roles(database)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.execute(
            "INSERT INTO api_keys (id, merchant_id, key_hash) VALUES ($1, $2, $3)",
            f"key_{uuid.uuid4().hex[:20]}",
            merchant.merchant_id,
            uuid.uuid4().bytes * 2,
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE merchant_id = $1", merchant.merchant_id
        )


async def test_runtime_role_cannot_insert_reconcile_runs(database, app_conn):
    _needs_separate_roles(database)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.execute(
            "INSERT INTO reconcile_runs (ok, problems, report) VALUES (true, 0, '{}')"
        )


async def test_runtime_role_cannot_decide_payments_under_review(database, merchant, app_conn):
    _needs_separate_roles(database)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.execute(
            "UPDATE payments SET status = 'rejected' WHERE merchant_id = $1", merchant.merchant_id
        )


async def test_admin_role_has_no_ddl_nor_journal_changes(database, merchant, admin_conn):
    _needs_separate_roles(database)
    account = await merchant.open_account()
    await merchant.pay(1000)
    for statement in (
        "UPDATE entries SET amount = amount WHERE account_id = $1",
        "DELETE FROM entries WHERE account_id = $1",
        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
        "DELETE FROM accounts WHERE id = $1",
        "INSERT INTO accounts (id, kind, currency) VALUES ($1 || 'x', 'system', 'NGN')",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin_conn.execute(statement, account)
    for statement in (
        "CREATE TABLE sneaky (id int)",
        "ALTER TABLE merchants DISABLE TRIGGER ALL",
        "DELETE FROM payments",
        "UPDATE merchant_rate_limits SET tat_us = 0",
        "INSERT INTO webhook_attempts (delivery_id) VALUES (1)",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin_conn.execute(statement)


def test_admin_commands_work_with_the_admin_credentials(database):
    _needs_separate_roles(database)
    env = admin_cli_env(database)
    name = f"admin-{uuid.uuid4().hex[:8]}"
    created = run_cli(["merchants", "create", "--name", name], env)
    assert created.returncode == 0, created.stderr
    merchant_id = json.loads(created.stdout)["merchant_id"]
    key_id = json.loads(created.stdout)["key_id"]
    for args in (
        ["merchants", "rate-limit", "--name", name, "--per-second", "7", "--burst", "9"],
        ["merchants", "list"],
        ["merchants", "revoke-key", key_id],
        ["reconcile"],
        ["idempotency", "purge"],
    ):
        result = run_cli(args, env)
        assert result.returncode == 0, (args, result.stderr)
    hook = ["webhooks", "create", "--merchant-id", merchant_id, "--url", PUBLIC]
    created_hook = run_cli(hook, env)
    assert created_hook.returncode == 0, created_hook.stderr
    endpoint_id = json.loads(created_hook.stdout)["id"]
    delete = ["webhooks", "delete", "--merchant-id", merchant_id, endpoint_id]
    assert run_cli(delete, env).returncode == 0


def test_admin_url_from_file(database, tmp_path):
    _needs_separate_roles(database)
    url_file = tmp_path / "admin.url"
    url_file.write_text(database.admin_url + "\n")
    env = cli_env(database.app_url, PAYCORE_ADMIN_DATABASE_URL_FILE=str(url_file))
    result = run_cli(["merchants", "create", "--name", f"file-{uuid.uuid4().hex[:8]}"], env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["merchants", "create", "--name", "runtime-creds"],
        ["merchants", "revoke-key", "key_nope"],
        ["reconcile"],
    ],
)
def test_admin_command_with_runtime_credentials_says_which_to_use(database, args):
    _needs_separate_roles(database)
    _assert_admin_hint(run_cli(args, cli_env(database.app_url)))


def test_migrate_grants_the_admin_role_idempotently(database):
    _needs_separate_roles(database)
    env = cli_env(database.owner_url)
    grant = ["migrate", "--app-role", "paycore_app_test", "--admin-role", "paycore_admin_test"]
    for _ in range(2):
        result = run_cli(grant, env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["admin_role"] == "paycore_admin_test"
    missing = run_cli(["migrate", "--admin-role", "no_such_role"], env)
    assert missing.returncode == 1 and "admin role 'no_such_role' does not exist" in missing.stderr
