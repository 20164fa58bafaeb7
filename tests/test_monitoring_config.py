"""The prometheus and alertmanager roles' configuration, rendered by Ansible
itself against a small inventory on this machine (no containers): which hosts
become scrape targets, and that Alertmanager never gets a receiver that would
silently drop alerts. The alerting scenario runs the same roles for real."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = ROOT / "roles"
CADVISOR_KINDS = Path(__file__).resolve().parent / "data" / "cadvisor_metric_kinds.yml"
CADVISOR_STAND_IN = ROOT / "molecule" / "node_exporter" / "files" / "cadvisor-stand-in"


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
                str(ROOT / "roles" / "contract" / "vars" / "main.yml"),
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
    # The ledger every 10 s (its operators' interval), everything else at the global one.
    assert jobs["ledger"]["scrape_interval"] == "10s"
    assert config["global"]["scrape_interval"] == "15s"
    assert "scrape_interval" not in jobs["node"]


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


def test_inhibit_rules_name_alerts_that_exist(tmp_path):
    """An inhibit rule naming an alert no rule raises would never hold anything
    back (or, as a target, never be held back): every alertname matcher of
    the rendered configuration names one of PayCore's alerts."""
    from test_alert_rules import rendered_rules

    result, _ = configure_alertmanager(
        tmp_path,
        alertmanager_pager_webhook_urls=["http://127.0.0.1:9999/pager"],
        alertmanager_ticket_webhook_urls=["http://127.0.0.1:9999/ticket"],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((tmp_path / "alertmanager.yml").read_text())["inhibit_rules"]
    alerts = {rule["alert"] for rule in rendered_rules() if "alert" in rule}
    named = []
    for rule in rules:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname(=~|!=|=)"([^"]*)"', matcher)
            if match:
                named.append((match.group(1), match.group(2)))
    assert ("=", "HostDown") in named and ("=", "PostgresDown") in named
    for operator, value in named:
        names = value.split("|") if operator == "=~" else [value]
        for name in names:
            if name.endswith(".+"):
                assert any(a.startswith(name[:-2]) for a in alerts), name
            else:
                assert name in alerts, f"inhibit rule names {name}, which no rule raises"


# ---------------------------------------------------------------- cadvisor


def cadvisor_kinds():
    data = yaml.safe_load(CADVISOR_KINDS.read_text())
    return data["versions"], set(data["kinds"])


def cadvisor_flags(**overrides):
    """The flags the cadvisor role passes (vars/main.yml with its defaults)."""
    defaults = yaml.safe_load((ROLES / "cadvisor" / "defaults" / "main.yml").read_text())
    args = yaml.safe_load((ROLES / "cadvisor" / "vars" / "main.yml").read_text())["_cadvisor_args"]
    context = {**defaults, **overrides}
    flags = {}
    for arg in args:
        name, _, value = arg.removeprefix("--").partition("=")
        if name == "disable_metrics":
            value = ",".join(context["cadvisor_disable_metrics"])
        flags[name] = value
    return context["cadvisor_version"], flags


def invalid_kinds(version, flags):
    versions, kinds = cadvisor_kinds()
    assert version in versions, (
        f"cAdvisor {version} is not in {CADVISOR_KINDS.name}: check its metric kinds"
        " (container/factory.go at the release tag) and add the version"
    )
    wanted = [kind for name in ("disable_metrics", "enable_metrics") for kind in
              filter(None, flags.get(name, "").split(","))]  # fmt: skip
    return [kind for kind in wanted if kind not in kinds]


def test_cadvisor_flags_are_valid_for_the_pinned_version():
    """cAdvisor exits at start on a metric kind it does not know (MetricSet.Set);
    the role's --disable_metrics must only name kinds of the pinned release."""
    version, flags = cadvisor_flags()
    assert "disable_metrics" in flags
    assert invalid_kinds(version, flags) == []


def test_cadvisor_flag_check_catches_a_removed_kind():
    version, flags = cadvisor_flags(cadvisor_disable_metrics=["accelerator", "tcp"])
    assert invalid_kinds(version, flags) == ["accelerator"]


def test_cadvisor_stand_in_knows_the_same_kinds():
    """The node_exporter scenario's stand-in binary rejects what cAdvisor rejects."""
    text = CADVISOR_STAND_IN.read_text()
    block = re.search(r"^KINDS = \{(.*?)\}", text, re.M | re.S).group(1)
    assert set(re.findall(r'"([^"]+)"', block)) == cadvisor_kinds()[1]
