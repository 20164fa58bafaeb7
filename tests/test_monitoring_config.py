"""The prometheus and alertmanager roles' configuration, rendered by Ansible
itself against a small inventory on this machine (no containers): which hosts
become scrape targets, and that Alertmanager never gets a receiver that would
silently drop alerts. The alerting scenario runs the same roles for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = ROOT / "roles"


def run_playbook(tmp_path: Path, play: list, inventory: dict, extra_vars: dict | None = None):
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    argv = ["ansible-playbook", "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml")]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROLES),
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def local_host(**host_vars):
    interpreter = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    return {**interpreter, **host_vars}


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/host-setup.sh installs it)")
    return path


# ------------------------------------------------------------------ prometheus


def test_cadvisor_targets_are_the_hosts_that_install_it(tmp_path):
    """Each host's own cadvisor_install_binary decides, not the monitoring host's."""
    promtool = tool("promtool")
    inventory = {
        "all": {
            "vars": {"lab_upstream_downloads": False},
            "children": {
                "gateway": {"hosts": {"gw": {"wireguard_address": "10.44.0.1"}}},
                "monitoring": {"hosts": {"mon1": None}},
                "homelab": {
                    "hosts": {
                        # The monitoring host runs no cAdvisor: other hosts' still count.
                        "mon1": local_host(
                            wireguard_address="10.44.0.2", cadvisor_install_binary=False
                        ),
                        "h1": {"wireguard_address": "10.44.0.3", "cadvisor_install_binary": True},
                        # As the lab inventory sets it: a template, false here.
                        "h2": {
                            "wireguard_address": "10.44.0.4",
                            "cadvisor_install_binary": "{{ lab_upstream_downloads | bool }}",
                        },
                        # Sets nothing: the cadvisor role's default (install) applies.
                        "h3": {"wireguard_address": "10.44.0.5"},
                    }
                },
            },
        }
    }
    out = tmp_path / "prometheus.yml"
    play = [
        {
            "name": "Render prometheus.yml",
            "hosts": "mon1",
            "gather_facts": False,
            "vars_files": [
                str(ROLES / "prometheus" / "defaults" / "main.yml"),
                str(ROLES / "prometheus" / "vars" / "main.yml"),
                str(ROOT / "playbooks" / "vars" / "contract.yml"),
            ],
            "tasks": [
                {
                    "name": "Render",
                    "ansible.builtin.template": {
                        "src": str(ROLES / "prometheus" / "templates" / "prometheus.yml.j2"),
                        "dest": str(out),
                        "mode": "0600",
                        "validate": f"{promtool} check config %s",
                    },
                }
            ],
        }
    ]
    result = run_playbook(tmp_path, play, inventory)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(out.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        group["labels"]["instance"]: group["targets"]
        for group in jobs["cadvisor"]["static_configs"]
    }
    assert targets == {"h1": ["10.44.0.3:8081"], "h3": ["10.44.0.5:8081"]}
    node = {group["labels"]["instance"] for group in jobs["node"]["static_configs"]}
    assert node == {"gw", "mon1", "h1", "h2", "h3"}


# ---------------------------------------------------------------- alertmanager


def alertmanager_play(tmp_path: Path, amtool: str):
    return [
        {
            "name": "Alertmanager receivers",
            "hosts": "mon1",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Check the receivers as the role does first",
                    "ansible.builtin.include_role": {
                        "name": "alertmanager",
                        "tasks_from": "validate",
                        "public": True,
                    },
                },
                {
                    "name": "Render alertmanager.yml",
                    "ansible.builtin.template": {
                        "src": str(ROLES / "alertmanager" / "templates" / "alertmanager.yml.j2"),
                        "dest": str(tmp_path / "alertmanager.yml"),
                        "mode": "0600",
                        "validate": f"{amtool} check-config %s",
                    },
                },
            ],
        }
    ]


def configure_alertmanager(tmp_path, **variables):
    amtool = tool("amtool")
    inventory = {"all": {"hosts": {"mon1": local_host()}}}
    result = run_playbook(tmp_path, alertmanager_play(tmp_path, amtool), inventory, variables)
    rendered = tmp_path / "alertmanager.yml"
    receivers = None
    if rendered.exists():
        receivers = {r["name"]: r for r in yaml.safe_load(rendered.read_text())["receivers"]}
    return result, receivers


@pytest.mark.parametrize(
    ("variables", "empty"),
    [
        ({}, "pager, ticket"),
        # The example inventory's shape: pages go to SNS, warnings nowhere.
        ({"alertmanager_pager_sns_topic_arn": "arn:aws:sns:eu-central-1:1:paycore"}, "ticket"),
        ({"alertmanager_ticket_email_to": ["ops@example.invalid"]}, "pager"),
    ],
    ids=["none", "pager-only", "ticket-only"],
)
def test_a_receiver_without_integration_fails_before_anything_is_installed(
    tmp_path, variables, empty
):
    result, receivers = configure_alertmanager(tmp_path, **variables)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"receiver(s) {empty} have no integration" in " ".join(output.split())
    assert "alertmanager_blackhole_receivers" in output
    assert receivers is None, "the configuration was written anyway"


def test_a_deliberate_blackhole_is_allowed(tmp_path):
    result, receivers = configure_alertmanager(
        tmp_path,
        alertmanager_pager_webhook_urls=["http://127.0.0.1:9999/pager"],
        alertmanager_blackhole_receivers=["ticket"],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert receivers["ticket"] == {"name": "ticket"}
    assert receivers["pager"]["webhook_configs"][0]["url"] == "http://127.0.0.1:9999/pager"


def test_a_blackhole_must_name_a_receiver(tmp_path):
    result, _ = configure_alertmanager(
        tmp_path,
        alertmanager_pager_webhook_urls=["http://127.0.0.1:9999/pager"],
        alertmanager_ticket_webhook_urls=["http://127.0.0.1:9999/ticket"],
        alertmanager_blackhole_receivers=["tickets"],
    )
    assert result.returncode != 0
    assert "not tickets" in result.stdout + result.stderr
