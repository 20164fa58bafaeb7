"""playbooks/aws-secrets.yml and the lookups of inventories/example/group_vars/all/secrets.yml."""

from __future__ import annotations

import json
import subprocess

import pytest
from awshelpers import REGION, REPO, VENV_BIN

DEPLOYMENT = "sectest"
PASSWORDS = [
    "postgresql_migrator_password",
    "postgresql_app_password",
    "postgresql_monitor_password",
    "grafana_admin_password",
]
MERCHANTS = ["acme-shop", "globex"]
EXISTING = "kept-value-0123456789-do-not-touch"


def secrets_vars(endpoint_url: str) -> dict:
    return {
        "aws_secrets_region": REGION,
        "aws_secrets_endpoint_url": endpoint_url,
        "aws_secrets_deployment": DEPLOYMENT,
        "aws_secrets_merchants": MERCHANTS,
    }


def names() -> list[str]:
    return [f"{DEPLOYMENT}/{p}" for p in PASSWORDS] + [
        f"{DEPLOYMENT}/merchants/{m}/api_key" for m in MERCHANTS
    ]


def values(aws) -> dict[str, str]:
    sm = aws("secretsmanager")
    return {name: sm.get_secret_value(SecretId=name)["SecretString"] for name in names()}


@pytest.fixture(scope="module")
def first_run(aws, run_playbook, aws_env, endpoint_url):
    # One secret exists before the first run: it must be kept as it is.
    aws("secretsmanager").create_secret(
        Name=f"{DEPLOYMENT}/postgresql_app_password", SecretString=EXISTING
    )
    # -vvv shows module arguments and results: the strictest check for leaks.
    run = run_playbook(
        "aws-secrets.yml", "-vvv", extra_vars=secrets_vars(endpoint_url), env=aws_env
    ).check()
    return run, values(aws)


def test_creates_missing_and_keeps_existing(first_run, aws):
    run, created = first_run
    assert created[f"{DEPLOYMENT}/postgresql_app_password"] == EXISTING
    for name, value in created.items():
        if name.endswith("postgresql_app_password"):
            continue
        expected = 40 if "/merchants/" in name else 32
        assert len(value) == expected and value.isalnum(), name
    assert len(set(created.values())) == len(created)  # all generated independently
    described = aws("secretsmanager").describe_secret(
        SecretId=f"{DEPLOYMENT}/grafana_admin_password"
    )
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags["paycore:deployment"] == DEPLOYMENT
    assert run.recap["changed"] >= 1


def test_no_secret_value_in_output(first_run):
    run, created = first_run
    for name, value in created.items():
        assert value not in run.output, f"value of {name} printed"
    # The report names what was created, without values.
    assert f"{DEPLOYMENT}/grafana_admin_password" in run.stdout


def test_second_run_keeps_everything(first_run, aws, run_playbook, aws_env, endpoint_url):
    _, created = first_run
    run = run_playbook(
        "aws-secrets.yml", "-v", extra_vars=secrets_vars(endpoint_url), env=aws_env
    ).check()
    assert run.recap["changed"] == 0, run.stdout
    assert values(aws) == created
    for value in created.values():
        assert value not in run.output


def test_new_merchant_gets_a_key_others_unchanged(
    first_run, aws, run_playbook, aws_env, endpoint_url
):
    _, created = first_run
    extra = secrets_vars(endpoint_url) | {"aws_secrets_merchants": [*MERCHANTS, "initech"]}
    run_playbook("aws-secrets.yml", extra_vars=extra, env=aws_env).check()
    assert values(aws) == created
    new = aws("secretsmanager").get_secret_value(
        SecretId=f"{DEPLOYMENT}/merchants/initech/api_key"
    )["SecretString"]
    assert len(new) == 40


def read_secrets(run_playbook, env, tmp_path, extra_vars, *args):
    """Resolve the example inventory's secrets.yml; return (values, run)."""
    out = tmp_path / "resolved.json"
    run = run_playbook(
        REPO / "tests/aws/read_secrets.yml",
        *args,
        extra_vars=extra_vars | {"paycore_test_output": str(out)},
        env=env,
    ).check()
    return json.loads(out.read_text()), run


def test_example_inventory_reads_secrets_manager(
    first_run, aws, run_playbook, aws_env, endpoint_url, tmp_path
):
    _, created = first_run
    resolved, run = read_secrets(
        run_playbook,
        aws_env,
        tmp_path,
        {
            "paycore_secrets_backend": "aws",
            "paycore_deployment": DEPLOYMENT,
            "paycore_aws_region": REGION,
            "paycore_aws_endpoint_url": endpoint_url,
            "paycore_merchants": MERCHANTS,
        },
    )
    for password in PASSWORDS:
        assert resolved[password] == created[f"{DEPLOYMENT}/{password}"]
    assert resolved["ledger_service_bootstrap_merchants"] == [
        {"name": m, "api_key": created[f"{DEPLOYMENT}/merchants/{m}/api_key"]} for m in MERCHANTS
    ]
    for value in created.values():
        assert value not in run.output


def test_example_inventory_reads_vault(run_playbook, base_env, tmp_path):
    """With the default backend the same variables come from an encrypted vault file."""
    clear = {f"vault_{p}": f"vault-{p}-value" for p in PASSWORDS}
    clear["vault_ledger_service_bootstrap_merchants"] = [{"name": "acme-shop", "api_key": "k" * 40}]
    password_file = tmp_path / "vault-pass"
    password_file.write_text("test-vault-password\n")
    vault_file = tmp_path / "vault.yml"
    vault_file.write_text(json.dumps(clear))
    subprocess.run(
        [
            str(VENV_BIN / "ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(password_file),
            str(vault_file),
        ],
        env=base_env,
        check=True,
        capture_output=True,
    )
    assert "vault-" not in vault_file.read_text()
    resolved, _ = read_secrets(
        run_playbook,
        base_env,
        tmp_path,
        {},
        "-e",
        f"@{vault_file}",
        "--vault-password-file",
        str(password_file),
    )
    for password in PASSWORDS:
        assert resolved[password] == f"vault-{password}-value"
    assert (
        resolved["ledger_service_bootstrap_merchants"]
        == clear["vault_ledger_service_bootstrap_merchants"]
    )
