"""Replace the gateway in two halves, converge after it, tear everything down.

Deployment "paycore", the one inventories/example/aws_ec2.yml filters on, in
an environment of its own: the scenario below changes it stage by stage in
the background, and each stage keeps a snapshot of what its tests check.
"""

from __future__ import annotations

import pytest
from awshelpers import (
    ACCOUNT,
    REGION,
    REPO,
    add_route_table,
    assert_gateway_instance,
    assert_replaced,
    edge_vars,
    gateways,
    group,
    inventory,
    primary_eni,
    scenario,
    snapshot,
    tag_filter,
    unsafe,
)

DEPLOYMENT = "paycore"
HOMELAB_CIDRS = ["192.168.10.0/24"]
WIREGUARD_CIDR = "10.44.0.0/24"
# A route another team added to a second table of the VPC; replace-gateway
# must repoint it too.
EXTRA_ROUTE = "172.20.0.0/16"
ROUTED = [*HOMELAB_CIDRS, WIREGUARD_CIDR, EXTRA_ROUTE]
EXAMPLE_EC2 = REPO / "inventories/example/aws_ec2.yml"


@scenario("edge-replace", priority=0, needs=("debian_images",))
def edge_replace(ctx):
    variables = edge_vars(ctx.endpoint_url, DEPLOYMENT)
    ec2 = ctx.aws("ec2")

    def run(playbook, **extra):
        return ctx.run(playbook, extra_vars={**variables, **extra}, env=ctx.aws_env).check()

    def provisioned(done):
        run("aws-provision.yml")
        (old,) = gateways(ec2, DEPLOYMENT)
        add_route_table(ec2, DEPLOYMENT, EXTRA_ROUTE, primary_eni(old))
        return {**snapshot(ec2, DEPLOYMENT), "inventory": inventory(ctx, EXAMPLE_EC2)}

    def launched(done):
        run("aws-replace-gateway.yml", aws_edge_replace_phase="launch")
        return snapshot(ec2, DEPLOYMENT)

    def replaced(done):
        # The default phase ("all") picks up the replacement launched above
        # (tagged paycore:replaces) instead of launching another, then cuts over.
        return {"run": run("aws-replace-gateway.yml"), **snapshot(ec2, DEPLOYMENT)}

    def torn_down(done):
        """Teardown of a deployment that has also things no longer in the configuration."""
        return teardown_with_leftovers(ctx, variables)

    return [
        ("provisioned", provisioned),
        ("launched", launched),
        ("replaced", replaced),
        ("provision after replace", lambda done: run("aws-provision.yml")),
        ("torn down", torn_down),
        ("teardown again", lambda done: run("aws-teardown.yml")),
    ]


def teardown_with_leftovers(ctx, variables) -> object:
    ec2, sns, sm = ctx.aws("ec2"), ctx.aws("sns"), ctx.aws("secretsmanager")
    # Secrets of the deployment, one of them for a merchant removed since.
    ctx.run(
        "aws-secrets.yml",
        extra_vars={**variables, "aws_secrets_merchants": ["acme-shop", "gone-shop"]},
        env=ctx.aws_env,
    ).check()
    tagged = sm.list_secrets(Filters=[{"Key": "tag-value", "Values": [DEPLOYMENT]}])["SecretList"]
    names = {s["Name"] for s in tagged}
    assert f"{DEPLOYMENT}/merchants/gone-shop/api_key" in names
    assert f"{DEPLOYMENT}/alertmanager_sns_credentials" in names
    # A topic of the deployment under a name no longer configured.
    deployment_tags = [
        {"Key": "paycore:deployment", "Value": DEPLOYMENT},
        {"Key": "paycore:managed-by", "Value": "ansible"},
    ]
    sns.create_topic(Name=f"{DEPLOYMENT}-old-alerts", Tags=deployment_tags)
    # A tagged interface left detached (it would block the subnet's deletion).
    subnet = ec2.describe_subnets(Filters=tag_filter(DEPLOYMENT))["Subnets"][0]
    ec2.create_network_interface(
        SubnetId=subnet["SubnetId"],
        TagSpecifications=[{"ResourceType": "network-interface", "Tags": deployment_tags}],
    )
    # Another deployment's topic and secret stay.
    other = [{"Key": "paycore:deployment", "Value": "other"}]
    sns.create_topic(Name="other-alerts", Tags=other)
    sm.create_secret(Name="other/postgresql_app_password", SecretString="x", Tags=other)
    enis_before = ec2.describe_network_interfaces(Filters=tag_filter(DEPLOYMENT))
    assert len(enis_before["NetworkInterfaces"]) >= 2  # the gateway's, the detached one
    return ctx.run(
        "aws-teardown.yml",
        extra_vars={**variables, "aws_secrets_recovery_window_days": 0},
        env=ctx.aws_env,
    ).check()


@pytest.fixture(scope="module")
def stage(scenarios):
    return scenarios["edge-replace"].result


def test_dynamic_inventory_puts_gateway_in_group(stage):
    provisioned = stage("provisioned")
    (gateway,) = provisioned["running"]
    found = provisioned["inventory"]
    assert group(found, "gateway") == [gateway]
    host = unsafe(found["_meta"]["hostvars"][gateway]["ansible_host"])
    assert host == provisioned["addresses"][0]["PublicIp"]


def test_replace_launch_phase_keeps_old_in_service(stage):
    before, launched = stage("provisioned"), stage("launched")
    (old_id,) = before["running"]
    assert len(launched["running"]) == 2 and old_id in launched["running"]
    (new_id,) = set(launched["running"]) - {old_id}
    tags = launched["running"][new_id]["instance"]["Tags"]
    assert {"Key": "paycore:replaces", "Value": old_id} in tags
    (address,) = launched["addresses"]
    assert address["InstanceId"] == old_id


def test_replace_moves_eip_and_routes_and_retires_old(stage, debian_images):
    before, replaced = stage("provisioned"), stage("replaced")
    # Exactly one replacement was launched over both runs.
    assert len(replaced["gateways"]) == 2
    new = assert_replaced(before, replaced, ROUTED)
    assert_gateway_instance(
        new, DEPLOYMENT, debian_images["newest"], replaced["subnet"], replaced["group"]
    )


def test_provision_after_replace_changes_nothing(stage):
    run = stage("provision after replace")
    assert run.recap["changed"] == 0, run.stdout


def test_teardown_leaves_nothing_tagged(stage, aws):
    stage("torn down")
    ec2 = aws("ec2")
    filters = tag_filter(DEPLOYMENT)
    assert ec2.describe_vpcs(Filters=filters)["Vpcs"] == []
    assert ec2.describe_subnets(Filters=filters)["Subnets"] == []
    assert ec2.describe_internet_gateways(Filters=filters)["InternetGateways"] == []
    assert ec2.describe_route_tables(Filters=filters)["RouteTables"] == []
    assert ec2.describe_security_groups(Filters=filters)["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=filters)["KeyPairs"] == []
    assert ec2.describe_addresses(Filters=filters)["Addresses"] == []
    assert ec2.describe_volumes(Filters=filters)["Volumes"] == []
    assert ec2.describe_network_interfaces(Filters=filters)["NetworkInterfaces"] == []
    live = gateways(
        ec2, DEPLOYMENT, states=("pending", "running", "stopping", "stopped", "shutting-down")
    )
    assert live == []
    sns = aws("sns")
    for topic in sns.list_topics()["Topics"]:
        tags = sns.list_tags_for_resource(ResourceArn=topic["TopicArn"])["Tags"]
        assert {"Key": "paycore:deployment", "Value": DEPLOYMENT} not in tags, topic
    secrets = aws("secretsmanager").list_secrets(
        IncludePlannedDeletion=True,
        Filters=[{"Key": "tag-value", "Values": [DEPLOYMENT]}],
    )["SecretList"]
    assert [s["Name"] for s in secrets] == []
    iam = aws("iam")
    users = iam.list_users(PathPrefix="/paycore/")["Users"]
    assert [
        u["UserName"]
        for u in users
        if {"Key": "paycore:deployment", "Value": DEPLOYMENT}
        in iam.list_user_tags(UserName=u["UserName"])["Tags"]
    ] == []
    # Others' resources are left alone.
    topics = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    assert f"arn:aws:sns:{REGION}:{ACCOUNT}:other-alerts" in topics
    other = aws("secretsmanager").describe_secret(SecretId="other/postgresql_app_password")
    assert "DeletedDate" not in other
    # Whatever else the tagging API knows of, apart from terminated instances.
    tagged = aws("resourcegroupstaggingapi").get_resources(
        TagFilters=[{"Key": "paycore:deployment", "Values": [DEPLOYMENT]}]
    )["ResourceTagMappingList"]
    leftovers = [
        r["ResourceARN"]
        for r in tagged
        if ":instance/" not in r["ResourceARN"]
        or ec2.describe_instances(InstanceIds=[r["ResourceARN"].rsplit("/", 1)[1]])["Reservations"][
            0
        ]["Instances"][0]["State"]["Name"]
        != "terminated"
    ]
    assert leftovers == []


def test_teardown_again_changes_nothing(stage):
    run = stage("teardown again")
    assert run.recap["changed"] == 0, run.stdout
