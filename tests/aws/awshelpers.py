"""Constants and helpers shared by the AWS playbook tests."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
ANSIBLE_CFG = REPO / "ansible.cfg"
REGION = "eu-central-1"  # the region of inventories/example/aws_ec2.yml
ACCOUNT = "123456789012"  # moto's account: owner of the images the tests register
ADMIN_CIDRS = ["203.0.113.0/24", "198.51.100.7/32"]
# A syntactically valid OpenSSH public key (no private half exists anywhere).
SSH_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEw6Ne5r0pZ6a4rmCHuZRPm8sdGdd9Wtbvy8bAbgtl3B paycore-test"
)
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# The role's defaults, routed to the gateway's interface.
HOMELAB_CIDRS = ["192.168.10.0/24"]
WIREGUARD_CIDR = "10.44.0.0/24"
# A route another team added to a second table of the VPC (add_route_table);
# replace-gateway must repoint it too.
EXTRA_ROUTE = "172.20.0.0/16"
ROUTED = [*HOMELAB_CIDRS, WIREGUARD_CIDR, EXTRA_ROUTE]

RECAP_RE = re.compile(r"^localhost\s+:\s+(?P<counts>.*)$", re.MULTILINE)


@dataclass
class Run:
    """Result of one ansible-playbook run."""

    args: list[str]
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def recap(self) -> dict[str, int]:
        """Counts of the last PLAY RECAP line for localhost, summed over plays."""
        matches = RECAP_RE.findall(self.stdout)
        assert matches, f"no PLAY RECAP in output:\n{self.output[-4000:]}"
        counts = dict(pair.split("=") for pair in matches[-1].split())
        return {key: int(value) for key, value in counts.items()}

    def check(self) -> Run:
        assert self.rc == 0, f"{' '.join(self.args)} failed (rc={self.rc}):\n{self.output[-6000:]}"
        return self


def edge_vars(endpoint_url: str, deployment: str, **overrides) -> dict:
    """Extra vars for the aws_edge playbooks."""
    values = {
        "aws_edge_region": REGION,
        "aws_edge_endpoint_url": endpoint_url,
        "aws_edge_deployment": deployment,
        "aws_edge_admin_cidrs": ADMIN_CIDRS,
        "aws_edge_ssh_public_key": SSH_PUBLIC_KEY,
        "aws_edge_ami_owner": ACCOUNT,
        "aws_edge_wait_timeout": 120,
        "aws_secrets_region": REGION,
        "aws_secrets_endpoint_url": endpoint_url,
        "aws_secrets_deployment": deployment,
    }
    values.update(overrides)
    return values


def tag_filter(deployment: str) -> list[dict]:
    return [{"Name": "tag:paycore:deployment", "Values": [deployment]}]


def tags_of(resource: dict) -> dict[str, str]:
    # Network interfaces list theirs as TagSet.
    tags = resource.get("Tags", resource.get("TagSet", []))
    return {tag["Key"]: tag["Value"] for tag in tags}


# --- scenarios: the stages of one environment, run in the background ----------------


class StageFailed(Exception):
    """An earlier stage of the scenario failed, so this one never ran."""


class Chain:
    """The stages of one scenario, run one after another in a background thread.

    A stage is a function of the results of the stages before it (a dict by
    stage name) and returns its own result: a playbook Run, or a snapshot of
    what the tests check, taken before the next stage changes it. Tests wait
    for the stage they check with result(name). When a stage fails, the
    later ones do not run and result() of any of them raises its error.
    """

    def __init__(self, name: str, stages: list[tuple[str, Callable[[dict], object]]]):
        self.name = name
        self._stages = stages
        self._results: dict[str, object] = {}
        self._errors: dict[str, BaseException] = {}
        self._done = {stage: threading.Event() for stage, _ in stages}
        self._thread = threading.Thread(target=self._run, name=f"scenario-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failed: tuple[str, BaseException] | None = None
        for stage, function in self._stages:
            if failed is None:
                try:
                    self._results[stage] = function(self._results)
                except BaseException as error:  # handed to the test that waits for it
                    failed = (stage, error)
                    self._errors[stage] = error
            else:
                self._errors[stage] = StageFailed(
                    f"{self.name}: stage {failed[0]!r} failed, {stage!r} did not run"
                )
            self._done[stage].set()

    def result(self, stage: str, timeout: float = 1800) -> object:
        if not self._done[stage].wait(timeout):
            raise TimeoutError(f"{self.name}: stage {stage!r} not done after {timeout} s")
        if stage in self._errors:
            raise self._errors[stage]
        return self._results[stage]


@dataclass
class Context:
    """What a scenario needs to run playbooks and look at the result."""

    run: Callable[..., Run]  # run_playbook(playbook, *args, extra_vars=..., env=...)
    aws: Callable[[str], object]  # boto3 client factory
    endpoint_url: str
    base_env: dict[str, str]
    aws_env: dict[str, str]

    def play(self, playbook: str, *args: str, **variables) -> Run:
        """Run a playbook with the fake credentials; fail the stage if it fails."""
        return self.run(playbook, *args, extra_vars=variables, env=self.aws_env).check()


@dataclass
class Scenario:
    module: str  # the test module whose tests check it
    priority: int  # lower starts first: the longest scenarios
    needs: tuple[str, ...]  # session fixtures to set up before it starts
    build: Callable[[Context], list]  # -> [(stage name, function), ...]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, priority: int = 10, needs: tuple[str, ...] = ()) -> Callable:
    """Register the stages of a scenario; it starts with the session when a
    test of its module is selected."""

    def register(build: Callable[[Context], list]) -> Callable[[Context], list]:
        SCENARIOS[name] = Scenario(build.__module__, priority, needs, build)
        return build

    return register


# --- EC2 look-ups ------------------------------------------------------------------------


def gateways(ec2, deployment: str, states=("pending", "running", "stopping", "stopped")):
    found = ec2.describe_instances(
        Filters=[
            *tag_filter(deployment),
            {"Name": "tag:paycore:component", "Values": ["gateway"]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    return [i for r in found["Reservations"] for i in r["Instances"]]


def the_vpc(ec2, deployment: str) -> dict:
    vpcs = ec2.describe_vpcs(Filters=tag_filter(deployment))["Vpcs"]
    assert len(vpcs) == 1, vpcs
    return vpcs[0]


def primary_eni(instance) -> str:
    return next(
        eni["NetworkInterfaceId"]
        for eni in instance["NetworkInterfaces"]
        if eni["Attachment"]["DeviceIndex"] == 0
    )


def vpc_routes(ec2, vpc_id: str) -> list[dict]:
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    return [route for table in tables["RouteTables"] for route in table["Routes"]]


def add_route_table(ec2, deployment: str, cidr: str, eni: str) -> str:
    """A second route table of the VPC (another team's) with a route naming eni."""
    table = ec2.create_route_table(
        VpcId=the_vpc(ec2, deployment)["VpcId"],
        TagSpecifications=[
            {
                "ResourceType": "route-table",
                "Tags": [
                    {"Key": "paycore:deployment", "Value": deployment},
                    {"Key": "Name", "Value": f"{deployment}-extra"},
                ],
            }
        ],
    )["RouteTable"]
    ec2.create_route(
        RouteTableId=table["RouteTableId"], DestinationCidrBlock=cidr, NetworkInterfaceId=eni
    )
    return table["RouteTableId"]


ALL_STATES = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")


def describe_gateway(ec2, instance: dict) -> dict:
    """What assert_gateway_instance checks, read now (a scenario moves on)."""
    instance_id = instance["InstanceId"]

    def attribute(name: str, key: str):
        return ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=name)[key]["Value"]

    root = next(
        m for m in instance["BlockDeviceMappings"] if m["DeviceName"] == instance["RootDeviceName"]
    )
    eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[primary_eni(instance)])
    return {
        "instance": instance,
        "source_dest_check": attribute("sourceDestCheck", "SourceDestCheck"),
        "user_data": base64.b64decode(attribute("userData", "UserData")).decode(),
        "termination_protection": attribute("disableApiTermination", "DisableApiTermination"),
        "root": root,
        "root_volume": ec2.describe_volumes(VolumeIds=[root["Ebs"]["VolumeId"]])["Volumes"][0],
        "eni_tags": tags_of(eni["NetworkInterfaces"][0]),
    }


def recovery_alarms(cloudwatch, deployment: str) -> list[dict]:
    return cloudwatch.describe_alarms(AlarmNames=[f"{deployment}-gateway-recover"])["MetricAlarms"]


def assert_recovery_alarm(alarms: list[dict], deployment: str, instance_id: str) -> None:
    """The one recovery alarm of the deployment watches instance_id."""
    (alarm,) = alarms
    assert alarm["Namespace"] == "AWS/EC2"
    assert alarm["MetricName"] == "StatusCheckFailed_System"
    assert alarm["Dimensions"] == [{"Name": "InstanceId", "Value": instance_id}]
    assert alarm["Statistic"] == "Maximum"
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["Threshold"] == 0
    assert alarm["Period"] == 60
    assert alarm["EvaluationPeriods"] == 2
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:{deployment}-alerts"
    assert alarm["AlarmActions"] == [f"arn:aws:automate:{REGION}:ec2:recover", topic]
    assert alarm["OKActions"] == [topic]


def snapshot(aws, deployment: str) -> dict:
    """The gateways, Elastic IPs, routes and alarm of a deployment, as they are now."""
    ec2 = aws("ec2")
    vpc_id = the_vpc(ec2, deployment)["VpcId"]
    every = gateways(ec2, deployment, states=ALL_STATES)
    enis = ec2.describe_network_interfaces(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    return {
        "vpc": vpc_id,
        "gateways": {g["InstanceId"]: g for g in every},
        "running": {
            g["InstanceId"]: describe_gateway(ec2, g)
            for g in every
            if g["State"]["Name"] in ("pending", "running")
        },
        "addresses": ec2.describe_addresses(Filters=tag_filter(deployment))["Addresses"],
        "routes": vpc_routes(ec2, vpc_id),
        "enis": {e["NetworkInterfaceId"] for e in enis["NetworkInterfaces"]},
        "alarms": recovery_alarms(aws("cloudwatch"), deployment),
        "subnet": ec2.describe_subnets(Filters=tag_filter(deployment))["Subnets"][0]["SubnetId"],
        "group": ec2.describe_security_groups(Filters=tag_filter(deployment))["SecurityGroups"][0][
            "GroupId"
        ],
    }


def assert_gateway_instance(
    gateway: dict, deployment: str, image_id: str, subnet_id: str, group_id: str
):
    """Every property of a gateway in service (gateway: from describe_gateway)."""
    instance = gateway["instance"]
    assert instance["State"]["Name"] == "running"
    assert instance["ImageId"] == image_id
    assert instance["SubnetId"] == subnet_id
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group_id]
    assert instance["KeyName"] == f"{deployment}-gateway"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpEndpoint"] == "enabled"
    assert gateway["source_dest_check"] is False
    volume = gateway["root_volume"]
    assert volume["Encrypted"] is True
    assert volume["Size"] == 8
    assert volume["VolumeType"] == "gp3"
    assert gateway["root"]["Ebs"]["DeleteOnTermination"] is True
    text = gateway["user_data"]
    assert text.startswith("#cloud-config")
    for word in ("PRIVATE KEY", "password", "secret", "api_key", "token"):
        assert word.lower() not in text.lower()
    assert gateway["termination_protection"] is True
    tags = tags_of(instance)
    assert tags["Name"] == f"{deployment}-gateway"
    assert tags["paycore:component"] == "gateway"
    assert tags["paycore:deployment"] == deployment
    assert tags["paycore:role"] == "gateway"
    assert "paycore:replaces" not in tags
    # The interface the routes name is tagged too (ec2_instance tags only the
    # instance and its volumes).
    assert gateway["eni_tags"]["paycore:deployment"] == deployment
    assert gateway["eni_tags"]["paycore:component"] == "gateway"
    assert gateway["eni_tags"]["paycore:managed-by"] == "ansible"


def assert_replaced(before: dict, after: dict, routed: list[str]) -> dict:
    """One gateway runs, not the old one; the Elastic IP and every route in routed are on it."""
    (old,) = before["running"].values()
    old = old["instance"]
    assert len(after["running"]) == 1, list(after["running"])
    (new,) = after["running"].values()
    assert new["instance"]["InstanceId"] != old["InstanceId"]
    assert after["gateways"][old["InstanceId"]]["State"]["Name"] == "terminated"
    (address,) = after["addresses"]
    assert address["PublicIp"] == before["addresses"][0]["PublicIp"]
    assert address["InstanceId"] == new["instance"]["InstanceId"]
    new_eni, old_eni = primary_eni(new["instance"]), primary_eni(old)
    by_dest = {r["DestinationCidrBlock"]: r.get("NetworkInterfaceId") for r in after["routes"]}
    for cidr in routed:
        assert by_dest[cidr] == new_eni, cidr
    assert old_eni not in by_dest.values()
    for route in after["routes"]:
        if route.get("NetworkInterfaceId"):
            assert route["NetworkInterfaceId"] in after["enis"], route
        assert route.get("State") != "blackhole", route
    return new


def inventory(ctx: Context, source: Path, *args: str, env: dict | None = None) -> dict:
    """ansible-inventory --list of source (the dynamic inventory) against moto."""
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(source), "--list", *args],
        cwd=REPO,
        env={**ctx.aws_env, "AWS_URL": ctx.endpoint_url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def group(found: dict, name: str) -> list[str]:
    return sorted(found.get(name, {}).get("hosts", []))


def unsafe(value):
    """ansible-inventory marks templated values as unsafe: {"__ansible_unsafe": value}."""
    return value["__ansible_unsafe"] if isinstance(value, dict) else value
