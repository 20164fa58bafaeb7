"""Every playbook parses against the inventories it is meant for."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

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


def test_database_ha_converge_is_the_documented_conversion():
    """molecule/database_ha converges the single-host site its prepare step
    deployed with steps 2 and 3 of docs/backup-restore.md, "From one host to
    two": its converge.yml imports exactly the playbooks those `site.yml --tags`
    commands select, in their order."""
    docs = (ROOT / "docs" / "backup-restore.md").read_text()
    section = docs.split("### From one host to two", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"`ansible-playbook playbooks/site\.yml --tags ([a-z,]+)`", section)
    assert len(commands) >= 2, section
    site = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())

    def imports(play):
        return play.get("ansible.builtin.import_playbook") or play.get("import_playbook")

    selected = [
        imports(play)
        for tags in commands
        for play in site
        if imports(play) and set(play.get("tags", [])) & set(tags.split(","))
    ]
    converge = yaml.safe_load((ROOT / "molecule" / "database_ha" / "converge.yml").read_text())
    imported = [Path(imports(play)).name for play in converge]
    assert imported == selected == ["network.yml", "database.yml", "ledger.yml", "edge.yml"]
