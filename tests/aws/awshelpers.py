"""Constants and helpers shared by the AWS playbook tests."""

from __future__ import annotations

import re
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
