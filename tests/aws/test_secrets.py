"""playbooks/aws-secrets.yml and the lookups of inventories/example/group_vars/all/secrets.yml."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest
import yaml
from awshelpers import REGION, REPO, VENV_BIN, scenario, tags_of
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

DEPLOYMENT = "sectest"
PASSWORDS = [
    "postgresql_migrator_password",
    "postgresql_app_password",
    "postgresql_admin_password",
    "postgresql_monitor_password",
    "grafana_admin_password",
]
MERCHANTS = ["acme-shop", "globex"]
EXISTING = "kept-value-0123456789-do-not-touch"
# Someone else's tag and resource policy on the secret that existed before.
FOREIGN_TAGS = {"owner": "dba-team"}
FOREIGN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "secretsmanager:DeleteSecret",
            "Resource": "*",
        }
    ],
}
ALERTS_USER = f"{DEPLOYMENT}-alertmanager"
CREDENTIALS = f"{DEPLOYMENT}/alertmanager_sns_credentials"
WIREGUARD_KEY = f"{DEPLOYMENT}/wireguard_gateway_private_key"


def secrets_vars(endpoint_url: str) -> dict:
    return {
        "aws_secrets_region": REGION,
        "aws_secrets_endpoint_url": endpoint_url,
        "aws_secrets_deployment": DEPLOYMENT,
        "aws_secrets_merchants": MERCHANTS,
    }


def names() -> list[str]:
    return [
        *(f"{DEPLOYMENT}/{p}" for p in PASSWORDS),
        *(f"{DEPLOYMENT}/merchants/{m}/api_key" for m in MERCHANTS),
        WIREGUARD_KEY,
    ]


def values(aws) -> dict[str, str]:
    sm = aws("secretsmanager")
    return {name: sm.get_secret_value(SecretId=name)["SecretString"] for name in names()}


def credentials(aws) -> dict[str, str]:
    return json.loads(aws("secretsmanager").get_secret_value(SecretId=CREDENTIALS)["SecretString"])


def report(run) -> dict[str, list[str]]:
    """The role's closing report: {created, restored, replaced, kept, skipped}."""
    lines = run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "Report the secrets (names only)" in line)
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("ok: [localhost]"))
    end = next(i for i in range(first + 1, len(lines)) if not lines[i].strip())
    return yaml.safe_load("\n".join(lines[first + 1 : end]))["msg"]


def everything_empty_but(found: dict[str, list[str]], **expected: list[str]) -> None:
    for key in ("created", "restored", "replaced", "kept", "skipped"):
        assert sorted(found[key]) == sorted(expected.get(key, [])), (key, found)


@scenario("secrets", priority=3)
def secrets(ctx):
    def first_run(done):
        sm = ctx.aws("secretsmanager")
        # One secret exists before the first run, with someone else's tag and
        # resource policy: it must be left exactly as it is.
        sm.create_secret(
            Name=f"{DEPLOYMENT}/postgresql_app_password",
            SecretString=EXISTING,
            Tags=[{"Key": k, "Value": v} for k, v in FOREIGN_TAGS.items()],
        )
        sm.put_resource_policy(
            SecretId=f"{DEPLOYMENT}/postgresql_app_password",
            ResourcePolicy=json.dumps(FOREIGN_POLICY),
        )
        # The IAM user aws-provision.yml would have made for Alertmanager.
        ctx.aws("iam").create_user(UserName=ALERTS_USER, Path="/paycore/")
        # -vvv shows module arguments and results: the strictest check for leaks.
        run = ctx.run(
            "aws-secrets.yml", "-vvv", extra_vars=secrets_vars(ctx.endpoint_url), env=ctx.aws_env
        ).check()
        return run, values(ctx.aws) | {CREDENTIALS: json.dumps(credentials(ctx.aws))}

    return [("first run", first_run)]


@pytest.fixture(scope="module")
def first_run(scenarios):
    """The first run (in the background from the start); the tests below run after it, in order."""
    return scenarios["secrets"].result("first run")


def test_creates_missing_and_keeps_existing(first_run, aws):
    run, created = first_run
    assert created[f"{DEPLOYMENT}/postgresql_app_password"] == EXISTING
    for name, value in created.items():
        if name.endswith(("postgresql_app_password", "alertmanager_sns_credentials")):
            continue
        if name == WIREGUARD_KEY:
            continue  # test_wireguard_key_is_a_valid_private_key
        expected = 40 if "/merchants/" in name else 32
        assert len(value) == expected and value.isalnum(), name
    assert len(set(created.values())) == len(created)  # all generated independently
    sm = aws("secretsmanager")
    described = sm.describe_secret(SecretId=f"{DEPLOYMENT}/grafana_admin_password")
    assert tags_of(described)["paycore:deployment"] == DEPLOYMENT
    assert run.recap["changed"] >= 1
    # The existing secret: reported as kept, its tags and policy untouched.
    existing = f"{DEPLOYMENT}/postgresql_app_password"
    everything_empty_but(
        report(run),
        created=[n for n in names() if n != existing] + [CREDENTIALS],
        kept=[existing],
    )
    assert tags_of(sm.describe_secret(SecretId=existing)) == FOREIGN_TAGS
    policy = sm.get_resource_policy(SecretId=existing)["ResourcePolicy"]
    assert json.loads(policy) == FOREIGN_POLICY


def test_wireguard_key_is_a_valid_private_key(first_run):
    """As wg genkey makes it: 32 bytes, base64, clamped for X25519; wg and X25519 accept it."""
    _, created = first_run
    key = created[WIREGUARD_KEY]
    raw = base64.b64decode(key, validate=True)
    assert len(key) == 44 and len(raw) == 32
    assert raw[0] & 7 == 0 and raw[31] & 128 == 0 and raw[31] & 64 == 64
    public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    if shutil.which("wg"):  # wireguard-tools derives the same public key
        derived = subprocess.run(
            ["wg", "pubkey"], input=key + "\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        assert base64.b64decode(derived) == public
    # Generated on its own, like every other secret.
    assert key not in {v for n, v in created.items() if n != WIREGUARD_KEY}


def test_alertmanager_credentials_are_a_live_key_of_the_user(first_run, aws):
    stored = credentials(aws)
    keys = aws("iam").list_access_keys(UserName=ALERTS_USER)["AccessKeyMetadata"]
    assert [(k["AccessKeyId"], k["Status"]) for k in keys] == [(stored["access_key_id"], "Active")]
    assert len(stored["secret_access_key"]) >= 20
    tags = tags_of(aws("secretsmanager").describe_secret(SecretId=CREDENTIALS))
    assert tags["paycore:access-key-id"] == stored["access_key_id"]
    assert tags["paycore:deployment"] == DEPLOYMENT


def test_no_secret_value_in_output(first_run):
    run, created = first_run
    for name, value in created.items():
        assert value not in run.output, f"value of {name} printed"
    secret_key = json.loads(created[CREDENTIALS])["secret_access_key"]
    assert secret_key not in run.output
    # The report names what was created, without values.
    assert f"{DEPLOYMENT}/grafana_admin_password" in run.stdout


def test_second_run_keeps_everything(first_run, aws, run_playbook, aws_env, endpoint_url):
    _, created = first_run
    run = run_playbook(
        "aws-secrets.yml", "-v", extra_vars=secrets_vars(endpoint_url), env=aws_env
    ).check()
    assert run.recap["changed"] == 0, run.stdout
    assert values(aws) | {CREDENTIALS: json.dumps(credentials(aws))} == created
    everything_empty_but(report(run), kept=[*names(), CREDENTIALS])
    for value in created.values():
        assert value not in run.output


def test_later_run_creates_new_restores_deleted(
    first_run, aws, run_playbook, aws_env, endpoint_url
):
    """A new merchant gets a key; a secret scheduled for deletion comes back with its value."""
    _, created = first_run
    sm = aws("secretsmanager")
    deleted = f"{DEPLOYMENT}/grafana_admin_password"
    sm.delete_secret(SecretId=deleted, RecoveryWindowInDays=7)
    extra = secrets_vars(endpoint_url) | {
        "aws_secrets_merchants": [*MERCHANTS, "initech"],
        # No such IAM user: its credentials are skipped, with a message.
        "aws_secrets_alertmanager_sns_user": f"{DEPLOYMENT}-no-such-user",
    }
    run = run_playbook("aws-secrets.yml", extra_vars=extra, env=aws_env).check()
    assert "DeletedDate" not in sm.describe_secret(SecretId=deleted)
    assert values(aws) == {k: v for k, v in created.items() if k != CREDENTIALS}
    new = sm.get_secret_value(SecretId=f"{DEPLOYMENT}/merchants/initech/api_key")["SecretString"]
    assert len(new) == 40
    everything_empty_but(
        report(run),
        created=[f"{DEPLOYMENT}/merchants/initech/api_key"],
        restored=[deleted],
        kept=[n for n in names() if n != deleted],
        skipped=[CREDENTIALS],
    )
    assert "run playbooks/aws-provision.yml" in run.stdout


def test_revoked_access_key_is_replaced(first_run, aws, run_playbook, aws_env, endpoint_url):
    _, created = first_run
    iam = aws("iam")
    old = json.loads(created[CREDENTIALS])
    iam.delete_access_key(UserName=ALERTS_USER, AccessKeyId=old["access_key_id"])
    run = run_playbook(
        "aws-secrets.yml", "-vvv", extra_vars=secrets_vars(endpoint_url), env=aws_env
    ).check()
    everything_empty_but(report(run), replaced=[CREDENTIALS], kept=names())
    stored = credentials(aws)
    assert stored["access_key_id"] != old["access_key_id"]
    keys = iam.list_access_keys(UserName=ALERTS_USER)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [stored["access_key_id"]]
    assert stored["secret_access_key"] not in run.output


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
    assert resolved["paycore_wireguard_gateway_private_key"] == created[WIREGUARD_KEY]
    stored = credentials(aws)
    assert resolved["alertmanager_sns_access_key"] == stored["access_key_id"]
    assert resolved["alertmanager_sns_secret_key"] == stored["secret_access_key"]
    for value in [*created.values(), stored["secret_access_key"]]:
        assert value not in run.output


def test_example_inventory_reads_vault(run_playbook, base_env, tmp_path):
    """With the default backend the same variables come from an encrypted vault file."""
    clear = {f"vault_{p}": f"vault-{p}-value" for p in PASSWORDS}
    clear["vault_ledger_service_bootstrap_merchants"] = [{"name": "acme-shop", "api_key": "k" * 40}]
    clear["vault_alertmanager_sns_access_key"] = "vault-AKIA-value"
    clear["vault_alertmanager_sns_secret_key"] = "vault-sns-secret-value"
    clear["vault_wireguard_gateway_private_key"] = "vault-wireguard-key-value"
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
    assert resolved["alertmanager_sns_access_key"] == "vault-AKIA-value"
    assert resolved["alertmanager_sns_secret_key"] == "vault-sns-secret-value"
    assert resolved["paycore_wireguard_gateway_private_key"] == "vault-wireguard-key-value"
