"""Provision, converge, inventory, replace the gateway and tear down, in that order.

The tests of this module build on each other (pytest runs them in file
order); each stage is a module-scoped fixture, so a single test selected
with -k still runs the stages it needs.
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from awshelpers import (
    ACCOUNT,
    ADMIN_CIDRS,
    REGION,
    REPO,
    VENV_BIN,
    edge_vars,
    tag_filter,
    tags_of,
)
from moto.iam.access_control import IAMPolicy, PermissionResult

# The deployment of inventories/example (its aws_ec2.yml filters on it).
DEPLOYMENT = "paycore"
HOMELAB_CIDRS = ["192.168.10.0/24"]
WIREGUARD_CIDR = "10.44.0.0/24"
VPC_CIDR = "10.40.0.0/16"
SUBNET_CIDR = "10.40.1.0/24"
# A route another team added to a second table of the VPC; replace-gateway
# must repoint it too.
EXTRA_ROUTE = "172.20.0.0/16"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:{DEPLOYMENT}-alerts"
ALERTS_USER = f"{DEPLOYMENT}-alertmanager"


@pytest.fixture(scope="module")
def vars_(endpoint_url, debian_images):
    return edge_vars(endpoint_url, DEPLOYMENT)


@pytest.fixture(scope="module")
def provisioned(run_playbook, aws_env, vars_):
    return run_playbook("aws-provision.yml", extra_vars=vars_, env=aws_env).check()


def gateways(ec2, states=("pending", "running", "stopping", "stopped")):
    found = ec2.describe_instances(
        Filters=[
            *tag_filter(DEPLOYMENT),
            {"Name": "tag:paycore:component", "Values": ["gateway"]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    return [i for r in found["Reservations"] for i in r["Instances"]]


def the_vpc(ec2):
    vpcs = ec2.describe_vpcs(Filters=tag_filter(DEPLOYMENT))["Vpcs"]
    assert len(vpcs) == 1, vpcs
    return vpcs[0]


def primary_eni(instance) -> str:
    return next(
        eni["NetworkInterfaceId"]
        for eni in instance["NetworkInterfaces"]
        if eni["Attachment"]["DeviceIndex"] == 0
    )


def vpc_routes(ec2, vpc_id):
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    return [route for table in tables["RouteTables"] for route in table["Routes"]]


def ingress_rules(group) -> set[tuple]:
    rules = set()
    for perm in group["IpPermissions"]:
        key = (perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort"))
        rules |= {(*key, r["CidrIp"]) for r in perm.get("IpRanges", [])}
        rules |= {(*key, r["CidrIpv6"]) for r in perm.get("Ipv6Ranges", [])}
        assert not perm.get("UserIdGroupPairs"), perm
        assert not perm.get("PrefixListIds"), perm
    return rules


def assert_gateway_instance(ec2, instance, image_id, subnet_id, group_id):
    assert instance["State"]["Name"] == "running"
    assert instance["ImageId"] == image_id
    assert instance["SubnetId"] == subnet_id
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group_id]
    assert instance["KeyName"] == f"{DEPLOYMENT}-gateway"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpEndpoint"] == "enabled"
    attribute = ec2.describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="sourceDestCheck"
    )
    assert attribute["SourceDestCheck"]["Value"] is False
    root = next(
        m for m in instance["BlockDeviceMappings"] if m["DeviceName"] == instance["RootDeviceName"]
    )
    volume = ec2.describe_volumes(VolumeIds=[root["Ebs"]["VolumeId"]])["Volumes"][0]
    assert volume["Encrypted"] is True
    assert volume["Size"] == 8
    assert volume["VolumeType"] == "gp3"
    assert root["Ebs"]["DeleteOnTermination"] is True
    user_data = ec2.describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="userData"
    )["UserData"]["Value"]
    text = base64.b64decode(user_data).decode()
    assert text.startswith("#cloud-config")
    for word in ("PRIVATE KEY", "password", "secret", "api_key", "token"):
        assert word.lower() not in text.lower()
    tags = tags_of(instance)
    assert tags["Name"] == f"{DEPLOYMENT}-gateway"
    assert tags["paycore:component"] == "gateway"
    assert tags["paycore:deployment"] == DEPLOYMENT
    assert "paycore:replaces" not in tags
    # The interface the routes name is tagged too (ec2_instance tags only the
    # instance and its volumes).
    eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[primary_eni(instance)])
    eni_tags = tags_of(eni["NetworkInterfaces"][0])
    assert eni_tags["paycore:deployment"] == DEPLOYMENT
    assert eni_tags["paycore:component"] == "gateway"
    assert eni_tags["paycore:managed-by"] == "ansible"


# --- provision from empty ------------------------------------------------------------


def test_provision_creates_network(provisioned, aws):
    ec2 = aws("ec2")
    vpc = the_vpc(ec2)
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
    expected = {("tcp", 443, 443, "0.0.0.0/0"), ("udp", 51820, 51820, "0.0.0.0/0")}
    expected |= {("tcp", 22, 22, cidr) for cidr in ADMIN_CIDRS}
    assert ingress_rules(groups[0]) == expected
    assert groups[0]["VpcId"] == the_vpc(ec2)["VpcId"]


def test_provision_gateway_instance(provisioned, aws, debian_images):
    ec2 = aws("ec2")
    instances = gateways(ec2)
    assert len(instances) == 1
    subnet = ec2.describe_subnets(Filters=tag_filter(DEPLOYMENT))["Subnets"][0]
    group = ec2.describe_security_groups(Filters=tag_filter(DEPLOYMENT))["SecurityGroups"][0]
    # The newest image owned by the given account matching the name pattern
    # and architecture: not the older one, not the decoys.
    assert_gateway_instance(
        ec2, instances[0], debian_images["newest"], subnet["SubnetId"], group["GroupId"]
    )
    keys = ec2.describe_key_pairs(Filters=tag_filter(DEPLOYMENT))["KeyPairs"]
    assert [k["KeyName"] for k in keys] == [f"{DEPLOYMENT}-gateway"]


def test_provision_route_table_has_both_routes(provisioned, aws):
    ec2 = aws("ec2")
    vpc = the_vpc(ec2)
    eni = primary_eni(gateways(ec2)[0])
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
    instance = gateways(ec2)[0]
    addresses = ec2.describe_addresses(Filters=tag_filter(DEPLOYMENT))["Addresses"]
    assert len(addresses) == 1
    assert addresses[0]["InstanceId"] == instance["InstanceId"]
    assert addresses[0]["Domain"] == "vpc"
    assert tags_of(addresses[0])["paycore:component"] == "gateway"
    sns = aws("sns")
    arn = f"arn:aws:sns:{REGION}:123456789012:{DEPLOYMENT}-alerts"
    assert arn in [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    tags = {t["Key"]: t["Value"] for t in sns.list_tags_for_resource(ResourceArn=arn)["Tags"]}
    assert tags["paycore:deployment"] == DEPLOYMENT
    assert arn in provisioned.stdout  # reported for the Alertmanager configuration


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
        {"Sid": "PublishAlerts", "Effect": "Allow", "Action": "sns:Publish", "Resource": TOPIC_ARN}
    ]
    # Evaluated as IAM does (moto's evaluator): allowed exactly there.
    policy = IAMPolicy(json.dumps(document))
    assert policy.is_action_permitted("sns:Publish", TOPIC_ARN) == PermissionResult.PERMITTED
    other_topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:someone-elses-topic"
    denied = [
        ("sns:Publish", other_topic),
        ("sns:Publish", "*"),
        ("sns:Subscribe", TOPIC_ARN),
        ("sns:SetTopicAttributes", TOPIC_ARN),
        ("sns:DeleteTopic", TOPIC_ARN),
        ("sns:ListTopics", "*"),
        ("secretsmanager:GetSecretValue", "*"),
        ("iam:CreateAccessKey", "*"),
        ("ec2:DescribeInstances", "*"),
    ]
    for action, resource in denied:
        assert policy.is_action_permitted(action, resource) != PermissionResult.PERMITTED, action


# --- convergence -------------------------------------------------------------------


def test_second_provision_changes_nothing(provisioned, run_playbook, aws_env, vars_):
    run = run_playbook("aws-provision.yml", extra_vars=vars_, env=aws_env).check()
    assert run.recap["changed"] == 0, run.stdout
    assert run.recap["failed"] == 0


def test_check_mode_on_converged_reports_nothing(provisioned, run_playbook, aws_env, vars_):
    run = run_playbook("aws-provision.yml", "--check", extra_vars=vars_, env=aws_env).check()
    assert run.recap["changed"] == 0, run.stdout


def test_dynamic_inventory_puts_gateway_in_group(provisioned, aws, base_env, aws_env, endpoint_url):
    instance = gateways(aws("ec2"))[0]
    eip = aws("ec2").describe_addresses(Filters=tag_filter(DEPLOYMENT))["Addresses"][0]
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible-inventory"),
            "-i",
            str(REPO / "inventories/example/aws_ec2.yml"),
            "--list",
        ],
        cwd=REPO,
        env={**aws_env, "AWS_URL": endpoint_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    inventory = json.loads(proc.stdout)
    assert inventory["gateway"]["hosts"] == [instance["InstanceId"]]
    hostvars = inventory["_meta"]["hostvars"][instance["InstanceId"]]
    host = hostvars["ansible_host"]
    if isinstance(host, dict):  # ansible-inventory marks templated values as unsafe
        host = host["__ansible_unsafe"]
    assert host == eip["PublicIp"]


# --- replace the gateway -----------------------------------------------------------


@pytest.fixture(scope="module")
def before_replace(provisioned, aws):
    """State before the replacement, plus a second route table naming the old ENI."""
    ec2 = aws("ec2")
    vpc = the_vpc(ec2)
    old = gateways(ec2)[0]
    extra = ec2.create_route_table(
        VpcId=vpc["VpcId"],
        TagSpecifications=[
            {
                "ResourceType": "route-table",
                "Tags": [
                    {"Key": "paycore:deployment", "Value": DEPLOYMENT},
                    {"Key": "Name", "Value": f"{DEPLOYMENT}-extra"},
                ],
            }
        ],
    )["RouteTable"]
    ec2.create_route(
        RouteTableId=extra["RouteTableId"],
        DestinationCidrBlock=EXTRA_ROUTE,
        NetworkInterfaceId=primary_eni(old),
    )
    eip = ec2.describe_addresses(Filters=tag_filter(DEPLOYMENT))["Addresses"][0]
    return {"old": old, "eip": eip["PublicIp"], "vpc": vpc["VpcId"]}


@pytest.fixture(scope="module")
def launched(before_replace, run_playbook, aws_env, vars_):
    return run_playbook(
        "aws-replace-gateway.yml",
        extra_vars={**vars_, "aws_edge_replace_phase": "launch"},
        env=aws_env,
    ).check()


@pytest.fixture(scope="module")
def replaced(launched, run_playbook, aws_env, vars_):
    # The default phase ("all") picks up the replacement launched above
    # (tagged paycore:replaces) instead of launching another, then cuts over.
    return run_playbook("aws-replace-gateway.yml", extra_vars=vars_, env=aws_env).check()


def assert_replaced(ec2, old, eip, vpc_id):
    running = gateways(ec2)
    assert len(running) == 1
    new = running[0]
    assert new["InstanceId"] != old["InstanceId"]
    old_state = ec2.describe_instances(InstanceIds=[old["InstanceId"]])
    assert old_state["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    address = ec2.describe_addresses(PublicIps=[eip])["Addresses"][0]
    assert address["InstanceId"] == new["InstanceId"]
    new_eni, old_eni = primary_eni(new), primary_eni(old)
    routes = vpc_routes(ec2, vpc_id)
    by_dest = {r["DestinationCidrBlock"]: r.get("NetworkInterfaceId") for r in routes}
    for cidr in [*HOMELAB_CIDRS, WIREGUARD_CIDR, EXTRA_ROUTE]:
        assert by_dest[cidr] == new_eni
    assert old_eni not in by_dest.values()
    existing = {
        eni["NetworkInterfaceId"]
        for eni in ec2.describe_network_interfaces(
            Filters=[{"Name": "vpc-id", "Values": [vpc_id]}]
        )["NetworkInterfaces"]
    }
    for route in routes:
        if route.get("NetworkInterfaceId"):
            assert route["NetworkInterfaceId"] in existing, route
        assert route.get("State") != "blackhole", route
    return new


def test_replace_launch_phase_keeps_old_in_service(launched, before_replace, aws):
    ec2 = aws("ec2")
    running = {i["InstanceId"]: i for i in gateways(ec2)}
    old_id = before_replace["old"]["InstanceId"]
    assert len(running) == 2 and old_id in running
    (new_id,) = set(running) - {old_id}
    assert tags_of(running[new_id])["paycore:replaces"] == old_id
    address = ec2.describe_addresses(PublicIps=[before_replace["eip"]])["Addresses"][0]
    assert address["InstanceId"] == old_id


def test_replace_moves_eip_and_routes_and_retires_old(replaced, before_replace, aws, debian_images):
    ec2 = aws("ec2")
    # Exactly one replacement was launched over both runs.
    all_gateways = gateways(ec2, states=("pending", "running", "shutting-down", "terminated"))
    assert len(all_gateways) == 2
    new = assert_replaced(ec2, before_replace["old"], before_replace["eip"], before_replace["vpc"])
    subnet = ec2.describe_subnets(Filters=tag_filter(DEPLOYMENT))["Subnets"][0]
    group = ec2.describe_security_groups(Filters=tag_filter(DEPLOYMENT))["SecurityGroups"][0]
    assert_gateway_instance(ec2, new, debian_images["newest"], subnet["SubnetId"], group["GroupId"])


def test_provision_after_replace_changes_nothing(replaced, run_playbook, aws_env, vars_):
    run = run_playbook("aws-provision.yml", extra_vars=vars_, env=aws_env).check()
    assert run.recap["changed"] == 0, run.stdout


# --- failover: the gateway is already dead --------------------------------------------


@pytest.fixture(scope="module")
def failed_over(replaced, run_playbook, aws_env, vars_, aws):
    """The gateway in service dies (terminated, its interface gone as on AWS); replace it."""
    ec2 = aws("ec2")
    (dead,) = gateways(ec2)
    ec2.terminate_instances(InstanceIds=[dead["InstanceId"]])
    # AWS deletes the primary interface with the instance (moto too, when the
    # attachment says so); make sure it is gone.
    eni_filter = [{"Name": "network-interface-id", "Values": [primary_eni(dead)]}]
    if ec2.describe_network_interfaces(Filters=eni_filter)["NetworkInterfaces"]:
        ec2.delete_network_interface(NetworkInterfaceId=primary_eni(dead))
    vpc_id = the_vpc(ec2)["VpcId"]
    routes = vpc_routes(ec2, vpc_id)
    dangling = [r for r in routes if r.get("NetworkInterfaceId") == primary_eni(dead)]
    assert len(dangling) == len(HOMELAB_CIDRS) + 2  # + WireGuard, + the second table's route
    eip = ec2.describe_addresses(Filters=tag_filter(DEPLOYMENT))["Addresses"][0]["PublicIp"]
    run = run_playbook("aws-replace-gateway.yml", extra_vars=vars_, env=aws_env).check()
    return {"old": dead, "eip": eip, "vpc": vpc_id, "run": run}


def test_failover_replaces_a_dead_gateway(failed_over, aws, debian_images):
    ec2 = aws("ec2")
    new = assert_replaced(ec2, failed_over["old"], failed_over["eip"], failed_over["vpc"])
    assert "No gateway in service" in failed_over["run"].stdout
    subnet = ec2.describe_subnets(Filters=tag_filter(DEPLOYMENT))["Subnets"][0]
    group = ec2.describe_security_groups(Filters=tag_filter(DEPLOYMENT))["SecurityGroups"][0]
    assert_gateway_instance(ec2, new, debian_images["newest"], subnet["SubnetId"], group["GroupId"])


@pytest.fixture(scope="module")
def resumed(failed_over, run_playbook, aws_env, vars_, aws):
    """A replacement interrupted after terminating the old gateway, then run again.

    The launch half runs for real; the cutover up to the termination of the
    old instance is then done by hand, as the interrupted run left it: the
    Elastic IP and every route on the replacement, the old gateway
    terminated, the replacement still tagged paycore:replaces.
    """
    ec2 = aws("ec2")
    (old,) = gateways(ec2)
    run_playbook(
        "aws-replace-gateway.yml",
        extra_vars={**vars_, "aws_edge_replace_phase": "launch"},
        env=aws_env,
    ).check()
    (replacement,) = [g for g in gateways(ec2) if g["InstanceId"] != old["InstanceId"]]
    assert tags_of(replacement)["paycore:replaces"] == old["InstanceId"]
    eip = ec2.describe_addresses(Filters=tag_filter(DEPLOYMENT))["Addresses"][0]
    ec2.associate_address(
        AllocationId=eip["AllocationId"],
        InstanceId=replacement["InstanceId"],
        AllowReassociation=True,
    )
    vpc_id = the_vpc(ec2)["VpcId"]
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    for table in tables["RouteTables"]:
        for route in table["Routes"]:
            if route.get("NetworkInterfaceId") == primary_eni(old):
                ec2.replace_route(
                    RouteTableId=table["RouteTableId"],
                    DestinationCidrBlock=route["DestinationCidrBlock"],
                    NetworkInterfaceId=primary_eni(replacement),
                )
    ec2.terminate_instances(InstanceIds=[old["InstanceId"]])
    assert [g["InstanceId"] for g in gateways(ec2)] == [replacement["InstanceId"]]
    run_playbook("aws-replace-gateway.yml", extra_vars=vars_, env=aws_env).check()
    return {"old": old, "replacement": replacement, "eip": eip["PublicIp"], "vpc": vpc_id}


def test_rerun_after_interruption_finishes_with_the_same_replacement(resumed, aws):
    ec2 = aws("ec2")
    new = assert_replaced(ec2, resumed["old"], resumed["eip"], resumed["vpc"])
    # No other instance was launched: the tagged replacement was picked up.
    assert new["InstanceId"] == resumed["replacement"]["InstanceId"]
    launched_since = [
        g
        for g in gateways(ec2, states=("pending", "running", "shutting-down", "terminated"))
        if g["LaunchTime"] > resumed["old"]["LaunchTime"]
    ]
    assert [g["InstanceId"] for g in launched_since] == [new["InstanceId"]]


# --- teardown ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def torn_down(resumed, run_playbook, aws_env, vars_, aws):
    """Teardown of a deployment that has also things no longer in the configuration."""
    ec2 = aws("ec2")
    sns = aws("sns")
    sm = aws("secretsmanager")
    # Secrets of the deployment, one of them for a merchant removed since.
    run_playbook(
        "aws-secrets.yml",
        extra_vars={**vars_, "aws_secrets_merchants": ["acme-shop", "gone-shop"]},
        env=aws_env,
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
    return run_playbook(
        "aws-teardown.yml",
        extra_vars={**vars_, "aws_secrets_recovery_window_days": 0},
        env=aws_env,
    ).check()


def test_teardown_leaves_nothing_tagged(torn_down, aws):
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
    assert gateways(ec2) == []
    live = gateways(ec2, states=("pending", "running", "stopping", "stopped", "shutting-down"))
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


def test_teardown_again_changes_nothing(torn_down, run_playbook, aws_env, vars_):
    run = run_playbook("aws-teardown.yml", extra_vars=vars_, env=aws_env).check()
    assert run.recap["changed"] == 0, run.stdout
