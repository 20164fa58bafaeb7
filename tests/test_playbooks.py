"""Every playbook parses against the inventories it is meant for."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))


def ansible(*args):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook):
    result = ansible(
        "ansible-playbook", "--syntax-check", "-i", "inventories/lab", f"playbooks/{playbook}"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("inventory", ["inventories/lab", "inventories/example/hosts.yml"])
def test_site_groups_resolve(inventory):
    result = ansible("ansible-playbook", "--list-hosts", "-i", inventory, "playbooks/site.yml")
    assert result.returncode == 0, result.stderr
    assert "homelab1" in result.stdout or "paycore-ledger1" in result.stdout
