"""The contract between the roles (roles/contract/vars/main.yml).

The site playbooks are loaded with Ansible's own variable manager against the
lab and example inventories, and the roles' real templates are rendered for
the hosts each play runs them on (no host is contacted). Every consumer of a
shared value must agree with its owner, and changing a value in one place
(its paycore_* variable) must move every consumer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "roles" / "contract" / "vars" / "main.yml"
SITE = ROOT / "playbooks" / "site.yml"

os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))

from ansible import context  # noqa: E402
from ansible.inventory.manager import InventoryManager  # noqa: E402
from ansible.module_utils.common.collections import ImmutableDict  # noqa: E402
from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.playbook import Playbook  # noqa: E402
from ansible.plugins.loader import init_plugin_loader  # noqa: E402
from ansible.template import Templar, trust_as_template  # noqa: E402
from ansible.utils.collection_loader import AnsibleCollectionConfig  # noqa: E402
from ansible.vars.hostvars import HostVars  # noqa: E402
from ansible.vars.manager import VariableManager  # noqa: E402

if AnsibleCollectionConfig.collection_finder is None:  # another test module may have done it
    init_plugin_loader()

# What the rendered templates read from earlier tasks' results on a host.
TASK_RESULTS = {"_edge_ipv6": {"stat": {"exists": False}}, "_wireguard_public_keys": {}}

# The example inventory's gateway comes from the aws_ec2 plugin; a static
# stand-in with the gateway group's own variables takes its place here.
EXAMPLE_GATEWAY = {"all": {"children": {"gateway": {"hosts": {"gw-i-0123": None}}}}}


class Site:
    """site.yml as Ansible sees it for one inventory: per play, the roles it
    runs and each host's variables (inventory, the contract role's vars, role defaults)."""

    def __init__(self, sources: list[str], extra_vars: dict | None = None):
        context.CLIARGS = ImmutableDict(tags=(), skip_tags=(), extra_vars=())
        self.loader = DataLoader()
        self.inventory = InventoryManager(loader=self.loader, sources=sources)
        self.variables = VariableManager(loader=self.loader, inventory=self.inventory)
        # As `-e` would give them (Ansible caches the command line's own per process).
        self.variables._extra_vars = dict(extra_vars or {})
        HostVars(inventory=self.inventory, variable_manager=self.variables, loader=self.loader)
        for host in self.inventory.get_hosts("all"):
            # The one fact the rendered templates' defaults read.
            self.variables.set_host_facts(host.name, {"ansible_memtotal_mb": 4096})
        playbook = Playbook.load(str(SITE), variable_manager=self.variables, loader=self.loader)
        self.plays = playbook.get_plays()

    def play_hosts(self, play) -> list[str]:
        """The hosts of a play, its pattern templated as Ansible does (with the
        command line's variables: paycore_gateway_group)."""
        variables = self.variables.get_vars(play=play)
        pattern = Templar(loader=self.loader, variables=variables).template(
            trust_as_template(play.hosts) if isinstance(play.hosts, str) else play.hosts
        )
        return [h.name for h in self.inventory.get_hosts(pattern)]

    def templar(self, role: str, host: str) -> Templar:
        for play in self.plays:
            play_hosts = self.play_hosts(play)
            if role in {r.get_name() for r in play.get_roles()} and host in play_hosts:
                variables = self.variables.get_vars(play=play, host=self.inventory.get_host(host))
                variables["ansible_managed"] = "rendered by tests/test_contract.py"
                variables["ansible_play_hosts"] = play_hosts
                variables.update(TASK_RESULTS)
                return Templar(loader=self.loader, variables=variables)
        raise AssertionError(f"no play of site.yml runs {role} on {host}")

    def value(self, role: str, host: str, name: str):
        templar = self.templar(role, host)
        return templar.template(templar.available_variables[name])

    def render(self, role: str, host: str, template: str) -> str:
        source = (ROOT / "roles" / role / "templates" / template).read_text()
        return self.templar(role, host).template(trust_as_template(source))

    def group(self, name: str) -> list[str]:
        return [h.name for h in self.inventory.get_hosts(name)]


INVENTORIES = {
    "lab": lambda tmp: [str(ROOT / "inventories" / "lab")],
    "example": lambda tmp: [str(ROOT / "inventories" / "example" / "hosts.yml"), str(tmp)],
}


@pytest.fixture(params=sorted(INVENTORIES))
def sources(request, tmp_path):
    gateway = tmp_path / "gateway.yml"
    gateway.write_text(yaml.safe_dump(EXAMPLE_GATEWAY))
    # group_vars beside the example's hosts.yml hold the gateway's variables;
    # Ansible reads them for any host of the group, whichever source names it.
    return INVENTORIES[request.param](gateway)


def wireguard_address(site: Site, host: str):
    return site.value("wireguard", host, "wireguard_address")


def nginx_upstreams(site: Site, gateway: str) -> set[str]:
    conf = site.render("edge", gateway, "nginx.conf.j2")
    block = re.search(r"upstream paycore_ledger \{(.*?)\}", conf, re.S).group(1)
    return set(re.findall(r"^\s*server (\S+) ", block, re.M))


def scrape_targets(site: Site, monitor: str, job: str) -> set[str]:
    config = yaml.safe_load(site.render("prometheus", monitor, "prometheus.yml.j2"))
    (scrape,) = [j for j in config["scrape_configs"] if j["job_name"] == job]
    return {t for group in scrape["static_configs"] for t in group["targets"]}


def tunnel_rules(site: Site, host: str) -> list[str]:
    ruleset = site.render("firewall", host, "nftables.conf.j2")
    return [line.strip() for line in ruleset.splitlines() if 'iifname "wg' in line]


def env_file(site: Site, host: str) -> dict[str, str]:
    text = site.render("ledger_service", host, "ledger.env.j2")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def postgresql_conf(site: Site, host: str) -> dict[str, str]:
    text = site.render("postgresql", host, "paycore.conf.j2")
    pairs = (line.split(" = ", 1) for line in text.splitlines() if " = " in line)
    return {name: value.strip("'") for name, value in pairs}


def check_agreement(site: Site, ledger_port: int):
    (gateway,) = site.group("gateway")
    databases = site.group("database")
    database = databases[0]
    monitors = site.group("monitoring")
    ledgers = site.group("ledger")
    addresses = {host: wireguard_address(site, host) for host in ledgers}
    ha = len(databases) > 1
    assert site.value("postgresql", database, "postgresql_ha") is ha

    # The ledger service listens where the edge, Prometheus and the firewall look.
    # Through the tunnel, only from the gateway (the edge) and the monitoring hosts.
    callers = ", ".join(wireguard_address(site, h) for h in [gateway, *monitors])
    for host in ledgers:
        assert env_file(site, host)["PAYCORE_PORT"] == str(ledger_port)
        assert (
            f'iifname "wg0" ip saddr {{ {callers} }} tcp dport {ledger_port} accept'
            in tunnel_rules(site, host)
        )
    expected = {f"{address}:{ledger_port}" for address in addresses.values()}
    assert nginx_upstreams(site, gateway) == expected
    for monitor in monitors:
        assert scrape_targets(site, monitor, "ledger") == expected

    # Every ledger host reaches the database by its port, name and roles:
    # directly, or (HA) through its own HAProxy, which knows every database host.
    conf = postgresql_conf(site, database)
    for host in ledgers:
        port = site.value("ledger_service", host, "ledger_service_database_port")
        db_host = site.value("ledger_service", host, "ledger_service_database_host")
        if ha:
            proxy = site.render("database_proxy", host, "haproxy.cfg.j2")
            assert re.search(rf"bind 127\.0\.0\.1:{port}$", proxy, re.M), proxy
            assert db_host == "127.0.0.1"
            servers = re.findall(r"server (\S+) (\S+):(\d+) check port (\d+)", proxy)
            assert {(name, address) for name, address, _, _ in servers} == {
                (d, wireguard_address(site, d)) for d in databases
            }
            patroni_port = site.value("postgresql", database, "postgresql_patroni_rest_port")
            assert {(int(p), int(c)) for _, _, p, c in servers} == {
                (int(conf["port"]), patroni_port)
            }
        else:
            assert port == int(conf["port"])
            remote = host != database
            assert db_host == (wireguard_address(site, database) if remote else "127.0.0.1")
        for ledger_var, pg_var in [
            ("ledger_service_database_name", "postgresql_database"),
            ("ledger_service_app_user", "postgresql_app_role"),
            ("ledger_service_admin_user", "postgresql_admin_role"),
            ("ledger_service_migrator_user", "postgresql_owner_role"),
        ]:
            assert site.value("ledger_service", host, ledger_var) == site.value(
                "postgresql", database, pg_var
            )
    remote_clients = site.value("postgresql", database, "postgresql_remote_clients")
    assert set(remote_clients) == {a for h, a in addresses.items() if ha or h != database}
    database_rules = [r for r in tunnel_rules(site, database) if f"dport {conf['port']} " in r]
    by_group = {
        group: ", ".join(wireguard_address(site, h) for h in site.group(group))
        for group in ("ledger", "database")
    }
    assert database_rules == [
        f'iifname "wg0" ip saddr {{ {by_group[group]} }} tcp dport {conf["port"]} accept'
        for group in (("ledger", "database") if ha else ("ledger",))
    ]
    if ha:
        # Patroni finds every etcd member; etcd's members are the etcd group.
        etcd_hosts = site.group("etcd")
        client_port = site.value("etcd", etcd_hosts[0], "etcd_client_port")
        assert set(site.value("postgresql", database, "postgresql_patroni_etcd_hosts")) == {
            f"{wireguard_address(site, h)}:{client_port}" for h in etcd_hosts
        }
        assert site.value("etcd", etcd_hosts[0], "etcd_members") == {
            h: wireguard_address(site, h) for h in etcd_hosts
        }
        for host in etcd_hosts:
            assert any(f"dport {client_port} accept" in r for r in tunnel_rules(site, host))

    # The connection budget: every ledger host's pools fit in max_connections.
    budget = 0
    for host in ledgers:
        env = env_file(site, host)
        budget += int(env["PAYCORE_WORKERS"]) * int(env["PAYCORE_DB_POOL_MAX"]) + 2
    reserved = site.value("postgresql", database, "postgresql_reserved_connections")
    assert int(conf["max_connections"]) == budget + reserved

    # A stuck query ends as the service's 503 before the edge gives up (504).
    read_timeout = site.value("edge", gateway, "edge_proxy_read_timeout")
    for host in ledgers:
        statement_ms = int(env_file(site, host)["PAYCORE_STATEMENT_TIMEOUT_MS"])
        assert statement_ms < int(read_timeout.rstrip("s")) * 1000


def test_the_roles_agree(sources):
    check_agreement(Site(sources), ledger_port=8080)


def admin_rules(site: Site, host: str) -> list[str]:
    ruleset = site.render("firewall", host, "nftables.conf.j2")
    return [line.strip() for line in ruleset.splitlines() if "saddr" in line and "wg0" not in line]


def test_the_tunnel_trusts_least(sources):
    """The gateway (the one public host) reaches the ledger port and nothing
    else through the tunnel; every exporter, Prometheus, Alertmanager, Grafana
    and the gateway's Watchdog receiver admit the monitoring hosts' tunnel
    addresses (and the admin networks), never the whole tunnel network."""
    site = Site(sources)
    (gateway,) = site.group("gateway")
    monitors = {wireguard_address(site, h) for h in site.group("monitoring")}
    gateway_address = wireguard_address(site, gateway)
    ledger_port = site.value("ledger_service", site.group("ledger")[0], "ledger_service_port")
    database = site.group("database")[0]
    database_port = site.value("postgresql", database, "postgresql_port")

    def addresses(*groups: str) -> set[str]:
        return {wireguard_address(site, h) for g in groups for h in site.group(g)}

    # Ports that are not the monitoring hosts' alone: who else may call them.
    callers = {
        ledger_port: {gateway_address} | monitors,
        database_port: addresses("ledger", "database")
        if len(site.group("database")) > 1
        else addresses("ledger"),
    }
    if len(site.group("database")) > 1:
        # Patroni's REST API: the members, the ledger hosts' HAProxy checks
        # and Prometheus; etcd: its members, and Prometheus on the client port.
        callers[site.value("postgresql", database, "postgresql_patroni_rest_port")] = addresses(
            "database", "ledger", "monitoring"
        )
        etcd = site.group("etcd")[0]
        callers[site.value("etcd", etcd, "etcd_client_port")] = addresses("etcd", "monitoring")
        callers[site.value("etcd", etcd, "etcd_peer_port")] = addresses("etcd")
    for host in site.group("gateway") + site.group("homelab"):
        rules = [rule for rule in tunnel_rules(site, host) if "oifname" not in rule]
        assert rules, host
        admitted: dict[int, set[str]] = {}
        for rule in rules:
            assert "10.44.0.0/24" not in rule, (host, rule)
            sources = set(re.search(r"saddr \{ (.*?) \}", rule).group(1).split(", "))
            port = int(re.search(r"dport (\d+) ", rule).group(1))
            admitted.setdefault(port, set()).update(sources)
        for port, sources in admitted.items():
            assert sources == callers.get(port, monitors), (host, port, rules)
        # Admin networks reach the metrics and UIs (not the ledger, not the database).
        admins = site.value("firewall", host, "firewall_admin_cidrs")
        for rule in admin_rules(site, host):
            port = int(re.search(r"dport (\d+) ", rule).group(1))
            assert port not in (ledger_port, database_port), rule
            assert any(cidr in rule for cidr in admins), rule


def test_one_change_moves_every_consumer(sources):
    site = Site(sources, extra_vars={"paycore_ledger_port": 9080, "paycore_ledger_workers": 3})
    check_agreement(site, ledger_port=9080)
    (gateway,) = site.group("gateway")
    assert all(upstream.endswith(":9080") for upstream in nginx_upstreams(site, gateway))


def test_a_per_host_worker_count_is_in_the_budget(tmp_path):
    host_vars = tmp_path / "host_vars"
    host_vars.mkdir()
    (host_vars / "paycore-ledger2.yml").write_text("paycore_ledger_workers: 4\n")
    hosts = tmp_path / "hosts.yml"
    hosts.write_text((ROOT / "inventories" / "lab" / "hosts.yml").read_text())
    (tmp_path / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
    site = Site([str(hosts)])
    assert env_file(site, "paycore-ledger2")["PAYCORE_WORKERS"] == "4"
    check_agreement(site, ledger_port=8080)


def test_every_site_play_loads_the_contract():
    site = Site([str(ROOT / "inventories" / "lab")])
    for play in site.plays:
        assert [role.get_name() for role in play.roles][:1] == ["contract"], play.get_name()


def test_owner_roles_default_to_the_contract():
    """A role used on its own (Molecule's role scenarios) gets the same values."""
    contract = yaml.safe_load(CONTRACT.read_text())
    defaults = {}
    for role in (ROOT / "roles").iterdir():
        path = role / "defaults" / "main.yml"
        if path.is_file():
            defaults.update(yaml.safe_load(path.read_text()) or {})
    owner_of = {
        "ledger_port": "ledger_service_port",
        "ledger_workers": "ledger_service_workers",
        "ledger_db_pool_max": "ledger_service_db_pool_max",
        "database_port": "postgresql_port",
        "database_name": "postgresql_database",
        "database_owner": "postgresql_owner_role",
        "database_app_user": "postgresql_app_role",
        "database_admin_user": "postgresql_admin_role",
        "database_monitor_user": "postgresql_monitor_role",
        "https_port": "edge_listen_port",
        "wireguard_port": "wireguard_port",
        "wireguard_interface": "wireguard_interface",
        "wireguard_network": "wireguard_network",
        "node_exporter_port": "node_exporter_port",
        "postgres_exporter_port": "postgres_exporter_port",
        "cadvisor_port": "cadvisor_port",
        "prometheus_port": "prometheus_web_port",
        "alertmanager_port": "alertmanager_port",
        "grafana_port": "grafana_http_port",
        "textfile_dir": "node_exporter_textfile_directory",
        "database_synchronous": "postgresql_synchronous",
        "patroni_port": "postgresql_patroni_rest_port",
        "etcd_client_port": "etcd_client_port",
        "etcd_peer_port": "etcd_peer_port",
        "database_proxy_port": "database_proxy_port",
        "backup_bucket": "postgresql_pgbackrest_s3_bucket",
        "http_port": "edge_http_port",
        "edge_status_port": "edge_status_port",
        "blackbox_exporter_port": "blackbox_exporter_port",
        "nginx_exporter_port": "nginx_exporter_port",
        "mtail_port": "nginx_exporter_mtail_port",
        "watchdog_receiver_port": "watchdog_receiver_port",
        "gateway_group": "wireguard_gateway_group",
        "gateway_in_service": None,
    }
    values = {k[len("_paycore_") :]: v for k, v in contract.items() if k.startswith("_paycore_")}
    for name, expression in values.items():
        if not isinstance(expression, str):
            continue  # derived lists (the firewall's services), not a value
        match = re.fullmatch(r"\{\{ paycore_(\w+) \| default\((.+)\) \}\}", expression)
        if match is None or owner_of[name] is None:
            continue  # derived (addresses, the gateway in service), not a value
        assert match.group(1) == name
        default = yaml.safe_load(match.group(2))
        assert defaults[owner_of[name]] == default, (name, owner_of[name])


def test_an_inventory_that_sets_a_derived_variable_is_refused(tmp_path):
    """site.yml's first play stops before any role runs."""
    argv = [
        "ansible-playbook",
        str(SITE),
        "-i",
        str(ROOT / "inventories" / "lab"),
        "--tags",
        "contract-check-only",  # no play has it: only the always-tagged first play runs
        "-e",
        json.dumps(
            {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "edge_upstreams": ["10.0.0.9:8080"],
            }
        ),
    ]
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_GATHERING": "explicit"}
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "The inventory sets edge_upstreams" in " ".join(output.split()), output[-2000:]


def test_a_replacement_is_configured_as_the_gateway(tmp_path):
    """docs/aws.md, "Replacing the gateway": with the replacement in group
    gateway_candidate and -e paycore_gateway_group=gateway_candidate, the
    plays run the gateway's roles on it, with the gateway's services, and it
    takes the certificate over from the gateway in service."""
    hosts = yaml.safe_load((ROOT / "inventories" / "lab" / "hosts.yml").read_text())
    hosts["all"]["children"]["gateway_candidate"] = {
        "hosts": {"paycore-gateway2": {"wireguard_address": "10.44.0.1"}}
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (tmp_path / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
    site = Site([str(tmp_path / "hosts.yml")], {"paycore_gateway_group": "gateway_candidate"})
    new = "paycore-gateway2"
    ruleset = site.render("firewall", new, "nftables.conf.j2")
    for public in ("tcp dport 443 accept", "tcp dport 80 accept", "udp dport 51820 accept"):
        assert public in ruleset
    assert "chain forward" in ruleset and 'oifname "wg0"' in ruleset  # the hub forwards
    config = site.render("wireguard", new, "wg.conf.j2")
    assert "gateway mode" in config and "ListenPort = 51820" in config
    assert site.value("edge", new, "edge_acme_copy_from") == "paycore-gateway"
    # The gateway in service is not part of this run.
    network_plays = [p for p in site.plays if "firewall" in {r.get_name() for r in p.get_roles()}]
    assert "paycore-gateway" not in site.play_hosts(network_plays[0])
