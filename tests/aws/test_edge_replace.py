"""Replace the gateway in two halves, as docs/aws.md says, then tear everything down.

Deployment "paycore", the one inventories/example/aws_ec2.yml filters on, in
an environment of its own: the scenario below changes it stage by stage in
the background, and each stage keeps a snapshot of what its tests check.

The stages are the documented command sequence:

    ansible-playbook -i $INV playbooks/aws-replace-gateway.yml -e aws_edge_replace_phase=launch
    ansible-inventory -i $INV --graph gateway_candidate
    ansible-playbook -i $INV playbooks/site.yml -e paycore_gateway_group=gateway_candidate \
        --limit gateway_candidate
    ansible-playbook -i $INV playbooks/aws-replace-gateway.yml -e aws_edge_replace_phase=cutover

Configuring the candidate over SSH (the site.yml step) cannot run against
moto: its instances are records, not machines. The test runs that exact
command with --list-hosts instead (which hosts it would configure, through
the real dynamic inventory and site.yml), and checks the inventory condition
the wireguard role asserts (one host in the gateway group of the run);
everything around it,
before and after, runs for real.
"""

from __future__ import annotations

import re

import pytest
from awshelpers import (
    ACCOUNT,
    EXTRA_ROUTE,
    REGION,
    REPO,
    ROUTED,
    add_route_table,
    assert_gateway_instance,
    assert_recovery_alarm,
    assert_replaced,
    edge_vars,
    gateways,
    group,
    inventory,
    primary_eni,
    scenario,
    snapshot,
    tag_filter,
    tags_of,
    unsafe,
)

DEPLOYMENT = "paycore"
EXAMPLE = REPO / "inventories/example"
CANDIDATE = ("-e", "paycore_gateway_group=gateway_candidate", "--limit", "gateway_candidate")


def site_hosts(ctx, *arguments: str) -> set[str]:
    """Hosts that `ansible-playbook -i inventories/example playbooks/site.yml <arguments>`
    would configure (--list-hosts: nothing is contacted)."""
    run = ctx.run(
        "site.yml",
        "-i",
        str(EXAMPLE),
        *arguments,
        "--list-hosts",
        env={**ctx.aws_env, "AWS_URL": ctx.endpoint_url},
    ).check()
    return set(re.findall(r"^\s+(i-[0-9a-f]+)\s*$", run.stdout, re.MULTILINE))


@scenario("edge-replace", priority=0, needs=("debian_images",))
def edge_replace(ctx):
    variables = edge_vars(ctx.endpoint_url, DEPLOYMENT, paycore_aws_teardown_confirm=DEPLOYMENT)
    ec2 = ctx.aws("ec2")

    def run(playbook, **extra):
        return ctx.play(playbook, **variables, **extra)

    def inventories() -> dict:
        return {"inventory": inventory(ctx, EXAMPLE / "aws_ec2.yml")}

    def provisioned(done):
        run("aws-provision.yml")
        (old,) = gateways(ec2, DEPLOYMENT)
        add_route_table(ec2, DEPLOYMENT, EXTRA_ROUTE, primary_eni(old))
        return {**snapshot(ctx.aws, DEPLOYMENT), **inventories()}

    def launched(done):
        run("aws-replace-gateway.yml", aws_edge_replace_phase="launch")
        return {
            **snapshot(ctx.aws, DEPLOYMENT),
            **inventories(),
            "site.yml": site_hosts(ctx, "--limit", "gateway"),
            "site.yml candidate": site_hosts(ctx, *CANDIDATE),
        }

    def provision_during_switch(done):
        return {"run": run("aws-provision.yml"), **snapshot(ctx.aws, DEPLOYMENT)}

    def cut_over(done):
        return {
            "run": run("aws-replace-gateway.yml", aws_edge_replace_phase="cutover"),
            **snapshot(ctx.aws, DEPLOYMENT),
            **inventories(),
        }

    def torn_down(done):
        """Teardown of a deployment that has also things no longer in the configuration."""
        return teardown_with_leftovers(ctx, variables)

    return [
        ("provisioned", provisioned),
        ("launched", launched),
        ("provision during the switch", provision_during_switch),
        ("cut over", cut_over),
        ("provision after the cutover", lambda done: run("aws-provision.yml")),
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
    # Provision made the Watchdog topic and alarm: teardown must take them.
    watchdog_alarm = f"{DEPLOYMENT}-homelab-watchdog"
    cloudwatch = ctx.aws("cloudwatch")
    assert cloudwatch.describe_alarms(AlarmNames=[watchdog_alarm])["MetricAlarms"]
    topics = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    assert f"arn:aws:sns:{REGION}:{ACCOUNT}:{DEPLOYMENT}-watchdog" in topics
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


def only(found: dict) -> str:
    (instance_id,) = found["running"]
    return instance_id


def test_dynamic_inventory_puts_gateway_in_group(stage):
    provisioned = stage("provisioned")
    gateway = only(provisioned)
    found = provisioned["inventory"]
    assert group(found, "gateway") == [gateway]
    assert group(found, "gateway_candidate") == []
    host = unsafe(found["_meta"]["hostvars"][gateway]["ansible_host"])
    assert host == provisioned["addresses"][0]["PublicIp"]


def test_launch_adds_a_candidate_beside_the_gateway(stage):
    before, launched = stage("provisioned"), stage("launched")
    old = only(before)
    assert len(launched["running"]) == 2 and old in launched["running"]
    (new,) = set(launched["running"]) - {old}
    tags = tags_of(launched["running"][new]["instance"])
    assert tags["paycore:replaces"] == old
    assert tags["paycore:role"] == "gateway-candidate"
    assert tags_of(launched["running"][old]["instance"])["paycore:role"] == "gateway"
    assert launched["running"][new]["termination_protection"] is True
    # Still served by the old gateway: address, routes and alarm stay.
    (address,) = launched["addresses"]
    assert address["InstanceId"] == old
    by_dest = {r["DestinationCidrBlock"]: r.get("NetworkInterfaceId") for r in launched["routes"]}
    old_eni = primary_eni(launched["running"][old]["instance"])
    assert all(by_dest[cidr] == old_eni for cidr in ROUTED)
    assert_recovery_alarm(launched["alarms"], DEPLOYMENT, old)


def test_inventory_during_the_switch_has_one_gateway(stage):
    old, launched = only(stage("provisioned")), stage("launched")
    (new,) = set(launched["running"]) - {old}
    # As it is: the gateway in service, and the candidate in a group of its own.
    assert group(launched["inventory"], "gateway") == [old]
    assert group(launched["inventory"], "gateway_candidate") == [new]
    # The candidate is the one host of its group (what the wireguard role
    # asserts of the run's gateway group), reached on its own public address.
    found = launched["inventory"]
    host = unsafe(found["_meta"]["hostvars"][new]["ansible_host"])
    assert host == launched["running"][new]["instance"]["PublicIpAddress"]
    assert host != launched["addresses"][0]["PublicIp"]


def test_site_yml_limited_to_gateway_configures_only_the_candidate(stage):
    old, launched = only(stage("provisioned")), stage("launched")
    (new,) = set(launched["running"]) - {old}
    assert launched["site.yml candidate"] == {new}
    assert launched["site.yml"] == {old}


def test_provision_during_the_switch_leaves_the_candidate_alone(stage):
    launched, during = stage("launched"), stage("provision during the switch")
    assert during["run"].recap["changed"] == 0, during["run"].stdout
    for instance_id, gateway in launched["running"].items():
        assert tags_of(during["running"][instance_id]["instance"]) == tags_of(gateway["instance"])


def test_cutover_moves_routes_then_address_and_retires_old(stage, debian_images):
    before, cut_over = stage("provisioned"), stage("cut over")
    # Exactly one replacement was launched over both halves.
    assert len(cut_over["gateways"]) == 2
    new = assert_replaced(before, cut_over, ROUTED)
    new_id = new["instance"]["InstanceId"]
    assert_gateway_instance(
        new, DEPLOYMENT, debian_images["newest"], cut_over["subnet"], cut_over["group"]
    )
    assert_recovery_alarm(cut_over["alarms"], DEPLOYMENT, new_id)
    assert group(cut_over["inventory"], "gateway") == [new_id]
    assert group(cut_over["inventory"], "gateway_candidate") == []
    # The order docs/aws.md gives: role tags, routes, then the Elastic IP;
    # the old gateway goes last (its termination protection lifted first).
    steps = [
        "Mark the gateway being replaced as retiring",
        "Mark the replacement as the gateway",
        "Repoint every route that named a dead or the old interface",
        "Move the Elastic IP to the replacement",
        "Lift the termination protection of the old gateway",
        "Retire the old gateway",
    ]
    positions = [cut_over["run"].stdout.index(f"TASK [aws_edge : {step}]") for step in steps]
    assert positions == sorted(positions)


def test_provision_after_the_cutover_changes_nothing(stage):
    run = stage("provision after the cutover")
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
    alarms = aws("cloudwatch").describe_alarms(
        AlarmNames=[f"{DEPLOYMENT}-gateway-recover", f"{DEPLOYMENT}-homelab-watchdog"]
    )
    assert alarms["MetricAlarms"] == []
    sns = aws("sns")
    topics = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    assert f"arn:aws:sns:{REGION}:{ACCOUNT}:{DEPLOYMENT}-watchdog" not in topics
    assert f"arn:aws:sns:{REGION}:{ACCOUNT}:{DEPLOYMENT}-alerts" not in topics
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
