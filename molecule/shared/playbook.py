"""Runs a scenario's playbook again from its verifier, with extra variables
(the refusal tests of the grafana and node_exporter scenarios)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest


def run_playbook(playbook, *extra_vars: dict, timeout: int = 900) -> tuple[int, str]:
    """ansible-playbook on the scenario's hosts; (returncode, output)."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("needs Molecule's inventory (run through `molecule verify`)")
    command = ["ansible-playbook", "-i", inventory, str(playbook)]
    for variables in extra_vars:
        command += ["-e", json.dumps(variables)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout + done.stderr
