"""Bad input fails before anything is created, with a message saying what to fix."""

from __future__ import annotations

import pytest
from awshelpers import FAKE_CREDENTIALS, edge_vars, tag_filter

DEPLOYMENT = "badinput"


def assert_failed_with(run, message: str) -> None:
    assert run.rc != 0, run.output
    assert message in run.output, run.output[-4000:]


def assert_nothing_created(aws) -> None:
    assert aws("ec2").describe_vpcs(Filters=tag_filter(DEPLOYMENT))["Vpcs"] == []
    secrets = aws("secretsmanager").list_secrets(
        Filters=[{"Key": "name", "Values": [f"{DEPLOYMENT}/"]}]
    )["SecretList"]
    assert secrets == []


@pytest.mark.parametrize(
    "playbook",
    ["aws-provision.yml", "aws-replace-gateway.yml", "aws-teardown.yml", "aws-secrets.yml"],
)
def test_missing_region(playbook, run_playbook, aws_env, endpoint_url, aws):
    variables = edge_vars(endpoint_url, DEPLOYMENT, paycore_aws_teardown_confirm=DEPLOYMENT)
    del variables["aws_edge_region"], variables["aws_secrets_region"]
    # Neither a variable nor AWS_REGION / AWS_DEFAULT_REGION (aws_env has none).
    run = run_playbook(playbook, extra_vars=variables, env=aws_env)
    assert_failed_with(run, "No AWS region")
    assert_nothing_created(aws)


@pytest.mark.parametrize("playbook", ["aws-provision.yml", "aws-secrets.yml"])
def test_missing_credentials(playbook, run_playbook, base_env, endpoint_url, aws):
    assert not set(FAKE_CREDENTIALS) & set(base_env)
    run = run_playbook(playbook, extra_vars=edge_vars(endpoint_url, DEPLOYMENT), env=base_env)
    assert_failed_with(run, "No usable AWS credentials")
    assert "AWS_PROFILE" in run.output  # says how to provide them
    assert_nothing_created(aws)


@pytest.mark.parametrize("cidrs", [["0.0.0.0/0"], ["203.0.113.0/24", "0.0.0.0/0"], ["::/0"], []])
def test_ssh_from_anywhere_is_refused(cidrs, run_playbook, aws_env, endpoint_url, aws):
    variables = edge_vars(endpoint_url, DEPLOYMENT, aws_edge_admin_cidrs=cidrs)
    run = run_playbook("aws-provision.yml", extra_vars=variables, env=aws_env)
    assert_failed_with(run, "Refusing to open SSH to the whole internet")
    assert_nothing_created(aws)


def test_not_a_public_key_is_refused(run_playbook, aws_env, endpoint_url, aws):
    variables = edge_vars(
        endpoint_url,
        DEPLOYMENT,
        aws_edge_ssh_public_key="-----BEGIN OPENSSH PRIVATE KEY-----",
    )
    run = run_playbook("aws-provision.yml", extra_vars=variables, env=aws_env)
    assert_failed_with(run, "must be an OpenSSH public key")
    assert_nothing_created(aws)
