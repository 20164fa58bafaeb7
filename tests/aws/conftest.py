"""Fixtures for the AWS playbook tests.

A moto server (AWS API emulator) runs on 127.0.0.1 on a free port for the
whole session. The tests run the real playbooks with the project's
ansible-playbook against it and check the result with boto3. No traffic
leaves loopback: the credentials are fake and the instance metadata service
is disabled for boto3.

Each environment (a deployment: its own tags, VPC, secrets) is built by a
scenario, a list of stages registered with @scenario in its test module.
Every scenario of the selected tests starts with the session, in a thread
of its own, so that independent environments are built side by side (at
most PAYCORE_AWS_TEST_JOBS playbooks at a time, default 3); its tests wait
for the stage they check. Read-only tests share one provisioned
environment ("edge"); tests that change an environment do it where no
read-only test looks any more: in one of their own, or in "edge" once its
read-only tests have run (test_edge.py, READ_ONLY_DONE).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from awshelpers import (
    ANSIBLE_CFG,
    FAKE_CREDENTIALS,
    REGION,
    REPO,
    SCENARIOS,
    VENV_BIN,
    Chain,
    Context,
    Run,
)
from moto.core.responses import ActionResult
from moto.iam.responses import IamResponse
from moto.server import ThreadedMotoServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with RUN_FIRST = True first (stable): their read-only tests gate
    stages of a scenario (test_edge.py), which should not wait for other modules."""
    items.sort(key=lambda item: not getattr(item.module, "RUN_FIRST", False))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _list_service_specific_credentials(self: IamResponse) -> ActionResult:
    """IAM ListServiceSpecificCredentials, which moto lacks: a user has none here.

    amazon.aws.iam_user (state=absent) lists them before deleting a user.
    """
    self.backend.get_user(self._get_param("UserName"))  # NoSuchEntity as on AWS
    return ActionResult({"ServiceSpecificCredentials": []})


@pytest.fixture(scope="session")
def endpoint_url() -> Iterator[str]:
    """Start moto on loopback for the session and return its URL."""
    if not hasattr(IamResponse, "list_service_specific_credentials"):
        IamResponse.list_service_specific_credentials = _list_service_specific_credentials
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def aws(endpoint_url: str) -> Callable[[str], object]:
    """boto3 client factory bound to the moto server."""

    def client(service: str):
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=endpoint_url,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    return client


@pytest.fixture(scope="session")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for ansible-playbook: no AWS or Ansible settings from the
    caller but its strategy (Mitogen's, under scripts/mitogen.sh: each run
    then imports boto3 once, not once per task), no IMDS."""
    home = tmp_path_factory.mktemp("ansible-home")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "ANSIBLE_", "BOTO"))
        or key in ("ANSIBLE_STRATEGY", "ANSIBLE_STRATEGY_PLUGINS")
    }
    env.update(
        {
            "ANSIBLE_CONFIG": str(ANSIBLE_CFG),
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            # Never let boto3 look for credentials outside this test.
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


@pytest.fixture(scope="session")
def empty_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory without hosts: the plays run on the implicit localhost."""
    path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    path.write_text("---\nall: {}\n")
    return path


@pytest.fixture(scope="session")
def run_playbook(base_env: dict[str, str], empty_inventory: Path) -> Callable[..., Run]:
    """Run playbooks/<name> (or a path) with ansible-playbook and return the result.

    Safe to call from several threads; at most PAYCORE_AWS_TEST_JOBS runs at once.
    """
    slots = threading.BoundedSemaphore(int(os.environ.get("PAYCORE_AWS_TEST_JOBS", "3")))

    def run(
        playbook: str | Path,
        *args: str,
        extra_vars: dict | None = None,
        env: dict[str, str] | None = None,
        timeout: int = 600,
    ) -> Run:
        path = Path(playbook)
        if not path.is_absolute():
            path = REPO / "playbooks" / path
        command = [str(VENV_BIN / "ansible-playbook"), "-i", str(empty_inventory), str(path)]
        if extra_vars:
            command += ["-e", json.dumps(extra_vars)]
        command += list(args)
        with slots:
            proc = subprocess.run(
                command,
                cwd=REPO,
                env=env if env is not None else base_env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        return Run(command, proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(scope="session")
def aws_env(base_env: dict[str, str]) -> dict[str, str]:
    """base_env plus the fake credentials (region and endpoint come as variables)."""
    return {**base_env, **FAKE_CREDENTIALS}


@pytest.fixture(scope="session")
def debian_images(aws) -> dict[str, str]:
    """Debian-12-like images in moto, plus decoys the lookup must skip.

    moto's register_image ignores Architecture, so the matching images are
    made with create_image from an instance of one of moto's x86_64 Linux
    images (which carries the architecture over); register_image makes the
    decoys (other release, no architecture). Returns {"old": id, "newest": id}.
    """
    ec2 = aws("ec2")
    source = next(
        image
        for image in ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])[
            "Images"
        ]
        if image.get("Platform") != "windows"
    )
    builder = ec2.run_instances(ImageId=source["ImageId"], MinCount=1, MaxCount=1)["Instances"][0]
    images = {}
    for key, name in (
        ("old", "debian-12-amd64-20240611-1774"),
        ("newest", "debian-12-amd64-20250112-1990"),
    ):
        images[key] = ec2.create_image(InstanceId=builder["InstanceId"], Name=name)["ImageId"]
        time.sleep(1.1)  # creation dates have one-second resolution
    # Decoys: another Debian release, and a name match without architecture.
    ec2.register_image(Name="debian-11-amd64-20250301-2000", RootDeviceName="/dev/xvda")
    ec2.register_image(Name="debian-12-amd64-20991231-9999", RootDeviceName="/dev/xvda")
    ec2.terminate_instances(InstanceIds=[builder["InstanceId"]])
    return images


@pytest.fixture(scope="session")
def context(run_playbook, aws, endpoint_url, base_env, aws_env) -> Context:
    return Context(run_playbook, aws, endpoint_url, base_env, aws_env)


@pytest.fixture(scope="session", autouse=True)
def scenarios(request: pytest.FixtureRequest, context: Context) -> dict[str, Chain]:
    """Start the scenarios of the selected tests' modules, longest first."""
    modules = {item.module.__name__ for item in request.session.items if item.module}
    wanted = sorted((s.priority, name) for name, s in SCENARIOS.items() if s.module in modules)
    for _, name in wanted:
        for fixture in SCENARIOS[name].needs:
            request.getfixturevalue(fixture)
    return {name: Chain(name, SCENARIOS[name].build(context)) for _, name in wanted}
