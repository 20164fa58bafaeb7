"""Provision from empty and converge (read-only tests), then fail over (tests that change it).

Deployment "edge". Its scenario provisions it once, runs provision a second
time and in check mode; the read-only tests look at it (boto3) and at those
runs. Then, and only then, the stages that change it run: a second route
table, the gateway dies and is replaced (failover), and a replacement is
interrupted after terminating the old gateway and finished by a re-run. They
wait for READ_ONLY_DONE, which the fixture of the tests that check them sets:
pytest runs a module's tests in file order, so every read-only test above
them has run by then. Those stages keep a snapshot of what their tests check.
"""

from __future__ import annotations

import json
import threading

import pytest
from awshelpers import (
    ACCOUNT,
    ADMIN_CIDRS,
    EXTRA_ROUTE,
    HOMELAB_CIDRS,
    REGION,
    ROUTED,
    WIREGUARD_CIDR,
    add_route_table,
    assert_gateway_instance,
    assert_recovery_alarm,
    assert_replaced,
    describe_gateway,
    edge_vars,
    gateways,
    primary_eni,
    recovery_alarms,
    scenario,
    snapshot,
    tag_filter,
    tags_of,
    the_vpc,
)
from moto.iam.access_control import IAMPolicy, PermissionResult

DEPLOYMENT = "edge"
VPC_CIDR = "10.40.0.0/16"
SUBNET_CIDR = "10.40.1.0/24"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:{DEPLOYMENT}-alerts"
WATCHDOG_TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:{DEPLOYMENT}-watchdog"
ALERTS_USER = f"{DEPLOYMENT}-alertmanager"
# Set once the read-only tests have run: the stages that change "edge" wait for it.
READ_ONLY_DONE = threading.Event()
# This module's tests run before the other modules' (conftest.py), so the
# stages waiting for READ_ONLY_DONE start as soon as the read-only tests are done.
RUN_FIRST = True


def terminate(ec2, instance_id: str) -> None:
    ec2.modify_instance_attribute(InstanceId=instance_id, DisableApiTermination={"Value": False})
    ec2.terminate_instances(InstanceIds=[instance_id])


@scenario("edge", priority=1, needs=("debian_images",))
def edge(ctx):
    variables = edge_vars(ctx.endpoint_url, DEPLOYMENT)
    ec2 = ctx.aws("ec2")

    def run(playbook, *args, **extra):
        return ctx.play(playbook, *args, **variables, **extra)

    def before_failover(done):
        READ_ONLY_DONE.wait()
        (gateway,) = gateways(ec2, DEPLOYMENT)
        add_route_table(ec2, DEPLOYMENT, EXTRA_ROUTE, primary_eni(gateway))
        return snapshot(ctx.aws, DEPLOYMENT)

    def failed_over(done):
        """The gateway in service dies (terminated, its interface gone as on AWS); replace it."""
        (dead,) = gateways(ec2, DEPLOYMENT)
        # A failure does not ask for termination protection; the API does.
        terminate(ec2, dead["InstanceId"])
        # AWS deletes the primary interface with the instance (moto too, when
        # the attachment says so); make sure it is gone.
        eni_filter = [{"Name": "network-interface-id", "Values": [primary_eni(dead)]}]
        if ec2.describe_network_interfaces(Filters=eni_filter)["NetworkInterfaces"]:
            ec2.delete_network_interface(NetworkInterfaceId=primary_eni(dead))
        tables = ec2.describe_route_tables(
            Filters=[{"Name": "vpc-id", "Values": [the_vpc(ec2, DEPLOYMENT)["VpcId"]]}]
        )
        dangling = [
            route
            for table in tables["RouteTables"]
            for route in table["Routes"]
            if route.get("NetworkInterfaceId") == primary_eni(dead)
        ]
        assert len(dangling) == len(ROUTED)
        return {"run": run("aws-replace-gateway.yml"), **snapshot(ctx.aws, DEPLOYMENT)}

    def resumed(done):
        """A replacement interrupted after terminating the old gateway, then run again.

        The launch half runs for real; the cutover up to the termination of
        the old instance is then done by hand, as the interrupted run left
        it: the role tags swapped, every route and the Elastic IP on the
        replacement, the old gateway terminated, the replacement still
        tagged paycore:replaces.
        """
        before = snapshot(ctx.aws, DEPLOYMENT)
        (old,) = gateways(ec2, DEPLOYMENT)
        run("aws-replace-gateway.yml", aws_edge_replace_phase="launch")
        (replacement,) = [
            g for g in gateways(ec2, DEPLOYMENT) if g["InstanceId"] != old["InstanceId"]
        ]
        assert tags_of(replacement)["paycore:replaces"] == old["InstanceId"]
        ec2.create_tags(
            Resources=[old["InstanceId"]],
            Tags=[{"Key": "paycore:role", "Value": "gateway-retiring"}],
        )
        ec2.create_tags(
            Resources=[replacement["InstanceId"]],
            Tags=[{"Key": "paycore:role", "Value": "gateway"}],
        )
        eip = ec2.describe_addresses(Filters=tag_filter(DEPLOYMENT))["Addresses"][0]
        ec2.associate_address(
            AllocationId=eip["AllocationId"],
            InstanceId=replacement["InstanceId"],
            AllowReassociation=True,
        )
        tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [before["vpc"]]}])
        for table in tables["RouteTables"]:
            for route in table["Routes"]:
                if route.get("NetworkInterfaceId") == primary_eni(old):
                    ec2.replace_route(
                        RouteTableId=table["RouteTableId"],
                        DestinationCidrBlock=route["DestinationCidrBlock"],
                        NetworkInterfaceId=primary_eni(replacement),
                    )
        terminate(ec2, old["InstanceId"])
        assert [g["InstanceId"] for g in gateways(ec2, DEPLOYMENT)] == [replacement["InstanceId"]]
        run("aws-replace-gateway.yml")
        return {"before": before, "replacement": replacement, **snapshot(ctx.aws, DEPLOYMENT)}

    return [
        ("provisioned", lambda done: run("aws-provision.yml")),
        ("second run", lambda done: run("aws-provision.yml")),
        ("check mode", lambda done: run("aws-provision.yml", "--check")),
        ("before failover", before_failover),
        ("failed over", failed_over),
        ("resumed", resumed),
    ]


@pytest.fixture(scope="module")
def provisioned(scenarios):
    return scenarios["edge"].result("provisioned")


def ingress_rules(group) -> set[tuple]:
    rules = set()
    for perm in group["IpPermissions"]:
        key = (perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort"))
        rules |= {(*key, r["CidrIp"]) for r in perm.get("IpRanges", [])}
        rules |= {(*key, r["CidrIpv6"]) for r in perm.get("Ipv6Ranges", [])}
        assert not perm.get("UserIdGroupPairs"), perm
        assert not perm.get("PrefixListIds"), perm
    return rules


def test_provision_creates_network(provisioned, aws):
    ec2 = aws("ec2")
    vpc = the_vpc(ec2, DEPLOYMENT)
    assert vpc["CidrBlock"] == VPC_CIDR
    assert tags_of(vpc)["paycore:managed-by"] == "ansible"
    subnets = ec2.describe_subnets(Filters=tag_filter(DEPLOYMENT))["Subnets"]
    assert [(s["VpcId"], s["CidrBlock"]) for s in subnets] == [(vpc["VpcId"], SUBNET_CIDR)]
    igws = ec2.describe_internet_gateways(Filters=tag_filter(DEPLOYMENT))["InternetGateways"]
    assert len(igws) == 1
    assert [a["VpcId"] for a in igws[0]["Attachments"]] == [vpc["VpcId"]]


def test_provision_security_group_has_exactly_the_stated_rules(provisioned, aws):
    ec2 = aws("ec2")
    groups = ec2.describe_security_groups(Filters=tag_filter(DEPLOYMENT))["SecurityGroups"]
    assert len(groups) == 1
    expected = {
        ("tcp", 443, 443, "0.0.0.0/0"),
        # ACME http-01 (nginx answers the challenges, redirects the rest).
        ("tcp", 80, 80, "0.0.0.0/0"),
        ("udp", 51820, 51820, "0.0.0.0/0"),
    }
    expected |= {("tcp", 22, 22, cidr) for cidr in ADMIN_CIDRS}
    assert ingress_rules(groups[0]) == expected
    assert groups[0]["VpcId"] == the_vpc(ec2, DEPLOYMENT)["VpcId"]


def test_provision_gateway_instance(provisioned, aws, debian_images):
    ec2 = aws("ec2")
    instances = gateways(ec2, DEPLOYMENT)
    assert len(instances) == 1
    subnet = ec2.describe_subnets(Filters=tag_filter(DEPLOYMENT))["Subnets"][0]
    group = ec2.describe_security_groups(Filters=tag_filter(DEPLOYMENT))["SecurityGroups"][0]
    # The newest image owned by the given account matching the name pattern
    # and architecture: not the older one, not the decoys.
    assert_gateway_instance(
        describe_gateway(ec2, instances[0]),
        DEPLOYMENT,
        debian_images["newest"],
        subnet["SubnetId"],
        group["GroupId"],
    )
    keys = ec2.describe_key_pairs(Filters=tag_filter(DEPLOYMENT))["KeyPairs"]
    assert [k["KeyName"] for k in keys] == [f"{DEPLOYMENT}-gateway"]


def test_provision_route_table_has_both_routes(provisioned, aws):
    ec2 = aws("ec2")
    vpc = the_vpc(ec2, DEPLOYMENT)
    eni = primary_eni(gateways(ec2, DEPLOYMENT)[0])
    igw = ec2.describe_internet_gateways(Filters=tag_filter(DEPLOYMENT))["InternetGateways"][0]
    tables = ec2.describe_route_tables(Filters=tag_filter(DEPLOYMENT))["RouteTables"]
    assert len(tables) == 1
    table = tables[0]
    subnet = ec2.describe_subnets(Filters=tag_filter(DEPLOYMENT))["Subnets"][0]
    assert [a.get("SubnetId") for a in table["Associations"]] == [subnet["SubnetId"]]
    routes = {
        r["DestinationCidrBlock"]: r.get("GatewayId") or r.get("NetworkInterfaceId")
        for r in table["Routes"]
    }
    expected = {VPC_CIDR: "local", "0.0.0.0/0": igw["InternetGatewayId"]}
    expected |= {cidr: eni for cidr in [*HOMELAB_CIDRS, WIREGUARD_CIDR]}
    assert routes == expected
    assert table["VpcId"] == vpc["VpcId"]


def test_provision_elastic_ip_and_alerts_topic(provisioned, aws):
    ec2 = aws("ec2")
    instance = gateways(ec2, DEPLOYMENT)[0]
    addresses = ec2.describe_addresses(Filters=tag_filter(DEPLOYMENT))["Addresses"]
    assert len(addresses) == 1
    assert addresses[0]["InstanceId"] == instance["InstanceId"]
    assert addresses[0]["Domain"] == "vpc"
    assert tags_of(addresses[0])["paycore:component"] == "gateway"
    sns = aws("sns")
    assert TOPIC_ARN in [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    tags = {t["Key"]: t["Value"] for t in sns.list_tags_for_resource(ResourceArn=TOPIC_ARN)["Tags"]}
    assert tags["paycore:deployment"] == DEPLOYMENT
    assert TOPIC_ARN in provisioned.stdout  # reported for the Alertmanager configuration


def test_provision_alerts_publisher_may_only_publish_to_the_topic(provisioned, aws):
    iam = aws("iam")
    user = iam.get_user(UserName=ALERTS_USER)["User"]
    assert user["Path"] == "/paycore/"
    assert tags_of(user)["paycore:deployment"] == DEPLOYMENT
    # Nothing grants it anything but its one inline policy.
    assert iam.list_user_policies(UserName=ALERTS_USER)["PolicyNames"] == ["publish-alerts"]
    assert iam.list_attached_user_policies(UserName=ALERTS_USER)["AttachedPolicies"] == []
    assert iam.list_groups_for_user(UserName=ALERTS_USER)["Groups"] == []
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_login_profile(UserName=ALERTS_USER)
    document = iam.get_user_policy(UserName=ALERTS_USER, PolicyName="publish-alerts")[
        "PolicyDocument"
    ]
    if isinstance(document, str):
        document = json.loads(document)
    assert document["Statement"] == [
        {
            "Sid": "PublishAlerts",
            "Effect": "Allow",
            "Action": "sns:Publish",
            "Resource": [TOPIC_ARN, WATCHDOG_TOPIC_ARN],
        }
    ]
    # Evaluated as IAM does (moto's evaluator): allowed exactly there.
    policy = IAMPolicy(json.dumps(document))
    for topic in (TOPIC_ARN, WATCHDOG_TOPIC_ARN):
        assert policy.is_action_permitted("sns:Publish", topic) == PermissionResult.PERMITTED
    other_topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:someone-elses-topic"
    denied = [
        ("sns:Publish", other_topic),
        ("sns:Publish", "*"),
        ("sns:Subscribe", TOPIC_ARN),
        ("sns:Subscribe", WATCHDOG_TOPIC_ARN),
        ("sns:SetTopicAttributes", WATCHDOG_TOPIC_ARN),
        ("sns:SetTopicAttributes", TOPIC_ARN),
        ("sns:DeleteTopic", TOPIC_ARN),
        ("sns:ListTopics", "*"),
        ("secretsmanager:GetSecretValue", "*"),
        ("iam:CreateAccessKey", "*"),
        ("ec2:DescribeInstances", "*"),
    ]
    for action, resource in denied:
        assert policy.is_action_permitted(action, resource) != PermissionResult.PERMITTED, action


def test_provision_watchdog_topic(provisioned, aws):
    sns = aws("sns")
    assert WATCHDOG_TOPIC_ARN in [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    tags = {
        t["Key"]: t["Value"]
        for t in sns.list_tags_for_resource(ResourceArn=WATCHDOG_TOPIC_ARN)["Tags"]
    }
    assert tags["paycore:deployment"] == DEPLOYMENT
    assert tags["paycore:managed-by"] == "ansible"
    assert tags["paycore:component"] == "alerts"
    assert tags["Name"] == f"{DEPLOYMENT}-watchdog"
    # Nobody subscribes to it: the alarm watches it.
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=WATCHDOG_TOPIC_ARN)["Subscriptions"]
    assert subscriptions == []
    assert WATCHDOG_TOPIC_ARN in provisioned.stdout  # for alertmanager_watchdog_sns_topic_arn


def test_provision_watchdog_alarm_pages_when_the_watchdog_stops(provisioned, aws):
    alarms = aws("cloudwatch").describe_alarms(AlarmNames=[f"{DEPLOYMENT}-homelab-watchdog"])
    (alarm,) = alarms["MetricAlarms"]
    assert alarm["Namespace"] == "AWS/SNS"
    assert alarm["MetricName"] == "NumberOfMessagesPublished"
    assert alarm["Dimensions"] == [{"Name": "TopicName", "Value": f"{DEPLOYMENT}-watchdog"}]
    assert alarm["Statistic"] == "Sum"
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["Threshold"] == 1
    assert alarm["Period"] == 300
    assert alarm["EvaluationPeriods"] == 1
    # No data at all (the homelab dark) pages too.
    assert alarm["TreatMissingData"] == "breaching"
    assert alarm["AlarmActions"] == [TOPIC_ARN]
    assert alarm["OKActions"] == [TOPIC_ARN]


def test_second_provision_changes_nothing(scenarios):
    run = scenarios["edge"].result("second run")
    assert run.recap["changed"] == 0, run.stdout
    assert run.recap["failed"] == 0


def test_check_mode_on_converged_reports_nothing(scenarios):
    run = scenarios["edge"].result("check mode")
    assert run.recap["changed"] == 0, run.stdout


def test_provision_recovery_alarm_watches_the_gateway(provisioned, aws):
    (gateway,) = gateways(aws("ec2"), DEPLOYMENT)
    assert_recovery_alarm(
        recovery_alarms(aws("cloudwatch"), DEPLOYMENT), DEPLOYMENT, gateway["InstanceId"]
    )


def test_gateway_cannot_be_terminated_by_accident(provisioned, aws):
    ec2 = aws("ec2")
    (gateway,) = gateways(ec2, DEPLOYMENT)
    with pytest.raises(ec2.exceptions.ClientError, match="OperationNotPermitted"):
        ec2.terminate_instances(InstanceIds=[gateway["InstanceId"]])
    (still,) = gateways(ec2, DEPLOYMENT)
    assert (still["InstanceId"], still["State"]["Name"]) == (gateway["InstanceId"], "running")


def assert_untouched(aws, before: list[dict]) -> None:
    ec2 = aws("ec2")
    assert [g["InstanceId"] for g in gateways(ec2, DEPLOYMENT)] == [g["InstanceId"] for g in before]
    assert len(ec2.describe_vpcs(Filters=tag_filter(DEPLOYMENT))["Vpcs"]) == 1
    assert len(ec2.describe_addresses(Filters=tag_filter(DEPLOYMENT))["Addresses"]) == 1


@pytest.mark.parametrize("confirm", [None, "yes", "paycore"])
def test_teardown_without_confirmation_touches_nothing(
    confirm, provisioned, run_playbook, aws_env, endpoint_url, aws
):
    """Teardown asks for the deployment's name (-e paycore_aws_teardown_confirm=edge)."""
    before = gateways(aws("ec2"), DEPLOYMENT)
    variables = edge_vars(endpoint_url, DEPLOYMENT)
    if confirm is not None:
        variables["paycore_aws_teardown_confirm"] = confirm
    run = run_playbook("aws-teardown.yml", extra_vars=variables, env=aws_env)
    assert run.rc != 0
    assert f"-e paycore_aws_teardown_confirm={DEPLOYMENT}" in run.output
    assert_untouched(aws, before)


def test_cutover_without_a_replacement_touches_nothing(
    provisioned, run_playbook, aws_env, endpoint_url, aws
):
    before = gateways(aws("ec2"), DEPLOYMENT)
    variables = edge_vars(endpoint_url, DEPLOYMENT, aws_edge_replace_phase="cutover")
    run = run_playbook("aws-replace-gateway.yml", extra_vars=variables, env=aws_env)
    assert run.rc != 0
    assert "nothing to cut over to" in run.output
    assert_untouched(aws, before)


# --- the stages that change the environment: after every read-only test ---------------


@pytest.fixture(scope="module")
def stage(scenarios):
    READ_ONLY_DONE.set()
    return scenarios["edge"].result


def test_failover_replaces_a_dead_gateway(stage, debian_images):
    failed_over = stage("failed over")
    new = assert_replaced(stage("before failover"), failed_over, ROUTED)
    assert "No gateway in service" in failed_over["run"].stdout
    assert_gateway_instance(
        new, DEPLOYMENT, debian_images["newest"], failed_over["subnet"], failed_over["group"]
    )
    assert_recovery_alarm(failed_over["alarms"], DEPLOYMENT, new["instance"]["InstanceId"])


def test_rerun_after_interruption_finishes_with_the_same_replacement(stage, debian_images):
    resumed = stage("resumed")
    new = assert_replaced(resumed["before"], resumed, ROUTED)
    # No other instance was launched: the tagged replacement was picked up.
    assert new["instance"]["InstanceId"] == resumed["replacement"]["InstanceId"]
    (old,) = resumed["before"]["running"].values()
    launched_since = [
        g["InstanceId"]
        for g in resumed["gateways"].values()
        if g["LaunchTime"] > old["instance"]["LaunchTime"]
    ]
    assert launched_since == [new["instance"]["InstanceId"]]
    # It kept the role tag the interrupted cutover gave it, and lost paycore:replaces.
    assert_gateway_instance(
        new, DEPLOYMENT, debian_images["newest"], resumed["subnet"], resumed["group"]
    )
    assert_recovery_alarm(resumed["alarms"], DEPLOYMENT, new["instance"]["InstanceId"])
