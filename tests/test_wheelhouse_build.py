"""The ledger_service role builds the service's wheelhouse on the controller
(tasks/install.yml). Playbooks and Molecule scenarios running side by side on
one controller build the same one at the same time: here the role's build
command runs twice at once, as the role renders it, with the real pip and
the package index."""

import os
import platform
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))

from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.plugins.loader import init_plugin_loader  # noqa: E402
from ansible.template import Templar, trust_as_template  # noqa: E402
from ansible.utils.collection_loader import AnsibleCollectionConfig  # noqa: E402

if AnsibleCollectionConfig.collection_finder is None:  # test_contract.py may have done it
    init_plugin_loader()

ROLE = ROOT / "roles" / "ledger_service"
TASK = "Build the wheelhouse on the controller for this host's Python"


def build_command(build: Path) -> str:
    """The task's shell command, rendered by Ansible's own templating for this
    controller's Python, with the role's platform tags."""
    tasks = yaml.safe_load((ROLE / "tasks" / "install.yml").read_text())
    task = next(t for t in tasks if t.get("name") == TASK)
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    templar = Templar(
        loader=DataLoader(),
        variables={
            "_ledger_service_python": {
                "version": list(sys.version_info[:2]),
                "machine": platform.machine(),
                "libc": "glibc " + platform.libc_ver()[1],
            },
            "_ledger_service_platforms": trust_as_template(role_vars["_ledger_service_platforms"]),
            "_ledger_service_build": str(build),
            "ledger_service_source_dir": str(ROOT / "service"),
            "ansible_playbook_python": sys.executable,
        },
    )
    return templar.template(trust_as_template(task["ansible.builtin.shell"]["cmd"]))


def test_two_builds_of_one_wheelhouse_at_once_both_succeed(tmp_path):
    build = tmp_path / "wheelhouse" / "0.1.0-test-build"
    command = build_command(build)
    runs = [
        subprocess.Popen(["bash", "-c", command], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [run.communicate(timeout=900)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(errors)[-4000:]
    with tarfile.open(f"{build}.tar") as archive:
        names = archive.getnames()
    assert f"./.build-{build.name}" in names
    assert any(re.fullmatch(r"\./paycore_ledger-[^/]+\.whl", name) for name in names), names
    assert any(re.fullmatch(r"\./asyncpg-[^/]+\.whl", name) for name in names), names
