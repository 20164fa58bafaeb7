"""Fail over from a dead gateway; finish a replacement that was interrupted.

Deployment "failover", in an environment of its own: the scenario below
kills its gateway, replaces it, then interrupts a second replacement after
the old gateway was terminated and runs the playbook again. Each stage keeps
a snapshot of what its tests check.
"""

from __future__ import annotations

import pytest
from awshelpers import (
    EXTRA_ROUTE,
    ROUTED,
    add_route_table,
    assert_gateway_instance,
    assert_recovery_alarm,
    assert_replaced,
    edge_vars,
    gateways,
    primary_eni,
    scenario,
    snapshot,
    tag_filter,
    tags_of,
    the_vpc,
)

DEPLOYMENT = "failover"


def terminate(ec2, instance_id: str) -> None:
    ec2.modify_instance_attribute(InstanceId=instance_id, DisableApiTermination={"Value": False})
    ec2.terminate_instances(InstanceIds=[instance_id])


@scenario("edge-failover", priority=1, needs=("debian_images",))
def edge_failover(ctx):
    variables = edge_vars(ctx.endpoint_url, DEPLOYMENT)
    ec2 = ctx.aws("ec2")

    def run(playbook, **extra):
        return ctx.play(playbook, **variables, **extra)

    def provisioned(done):
        run("aws-provision.yml")
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

    return [("provisioned", provisioned), ("failed over", failed_over), ("resumed", resumed)]


@pytest.fixture(scope="module")
def stage(scenarios):
    return scenarios["edge-failover"].result


def test_failover_replaces_a_dead_gateway(stage, debian_images):
    failed_over = stage("failed over")
    new = assert_replaced(stage("provisioned"), failed_over, ROUTED)
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
