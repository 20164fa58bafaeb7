"""The provisioned Grafana dashboards: well-formed, provisionable, and honest.

Every PromQL expression is parsed by promtool, and every metric it reads must
be one that something in this project really exposes: the ledger service
(service/src), the textfile collector (docs/conventions.md), Prometheus itself,
PayCore's recording rules (roles/prometheus), or an exporter (node-exporter and
postgres-exporter: the Molecule scenarios check these names against the
running exporters, and this suite says so with a skip; cAdvisor: its
documented metric families, as its binary cannot be fetched here). Ledger
request metrics are read with the SLO rules' own selector, so the dashboards
and the alerts count the same requests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_alert_rules import ROLE as PROMETHEUS_ROLE
from test_alert_rules import rendered_rules, role_context

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "roles" / "grafana" / "files" / "dashboards"
DATASOURCE_UID = "prometheus"
REQUIRED = {"overview", "host", "postgresql", "services", "wireguard", "incident"}

# Grafana template variables and what they become when the expression is parsed.
TEMPLATE_VARIABLES = {"$instance": ".+", "$__rate_interval": "5m", "$__range": "1h"}

PROMQL_WORDS = {
    # aggregations and keywords
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    # functions used in dashboards (a function is always followed by "(")
}

# Families cAdvisor exposes (https://github.com/google/cadvisor/blob/master/docs/storage/prometheus.md)
# with the metric groups the cadvisor role leaves enabled.
CADVISOR_METRICS = {
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_cpu_system_seconds_total",
    "container_memory_working_set_bytes",
    "container_memory_usage_bytes",
    "container_memory_rss",
    "container_spec_memory_limit_bytes",
    "container_start_time_seconds",
    "container_last_seen",
    "container_fs_reads_bytes_total",
    "container_fs_writes_bytes_total",
    "container_network_receive_bytes_total",
    "container_network_transmit_bytes_total",
}
PROMETHEUS_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def dashboards():
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def all_panels(board: dict):
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def expressions(board: dict):
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel["title"], target["expr"]


def substitute(expr: str) -> str:
    for variable, value in TEMPLATE_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown template variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (selectors), ignoring labels and functions."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(0), text[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # function or aggregation
        if word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        start = match.start()
        if start and (text[start - 1].isdigit() or text[start - 1] == "."):
            continue  # exponent of a number, e.g. 1e3
        names.add(word)
    return names


def dashboard_metric_names() -> set[str]:
    """Every metric name any dashboard reads (used by the Molecule verifiers too)."""
    names: set[str] = set()
    for path in dashboards():
        for _, expr in expressions(load(path)):
            names |= metric_names(substitute(expr))
    return names


def service_metric_names() -> set[str]:
    """Names the ledger service exposes, read from its source."""
    source = "\n".join(p.read_text() for p in (ROOT / "service" / "src").rglob("*.py"))
    names: set[str] = set()
    for kind, name in re.findall(
        r'\b(Counter|Gauge|Histogram|Summary)\(\s*"([a-z_:][a-z0-9_:]*)"', source
    ):
        if kind == "Histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif kind == "Summary":
            names |= {f"{name}_count", f"{name}_sum"}
        elif kind == "Counter":
            base = name.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        else:
            names.add(name)
    # Gauges written as exposition text (reconcile results, textfile output).
    names |= set(re.findall(r"# TYPE ([a-z_:][a-z0-9_:]*) ", source))
    return names


def recorded_metric_names() -> set[str]:
    """Series PayCore's recording rules write (roles/prometheus, rendered with its defaults)."""
    return {rule["record"] for rule in rendered_rules() if "record" in rule}


def slo_selector() -> str:
    """The label matchers the SLO rules select merchant traffic with."""
    template = (PROMETHEUS_ROLE / "templates" / "rules" / "slo.rules.yml.j2").read_text()
    match = re.search(r"\{% set selector = '([^']+)' %\}", template)
    assert match, "no selector in slo.rules.yml.j2"
    return match.group(1)


def textfile_metric_names() -> set[str]:
    text = (ROOT / "docs" / "conventions.md").read_text()
    return set(re.findall(r"`(paycore_[a-z0-9_]+)", text))


def test_there_are_the_six_dashboards():
    assert {p.stem for p in dashboards()} >= REQUIRED


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboard_is_provisionable(path):
    board = load(path)
    assert board["id"] is None, "provisioned dashboards carry id: null"
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"]), board["uid"]
    assert board["title"].startswith("PayCore / ")
    assert "paycore" in board["tags"]
    panel_ids = [p["id"] for p in all_panels(board)]
    assert len(panel_ids) == len(set(panel_ids)), "panel ids repeat"
    assert list(expressions(board)), "a dashboard without a query"


def test_dashboard_uids_and_titles_are_unique():
    boards = [load(p) for p in dashboards()]
    uids = [b["uid"] for b in boards]
    titles = [b["title"] for b in boards]
    assert len(uids) == len(set(uids)), uids
    assert len(titles) == len(set(titles)), titles


def _datasource_uids(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                if isinstance(value, dict):
                    yield value.get("uid")
                else:
                    yield value  # a bare name or uid string
            else:
                yield from _datasource_uids(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_uids(item)


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_only_the_provisioned_datasource(path):
    board = load(path)
    assert set(_datasource_uids(board)) == {DATASOURCE_UID}
    for panel in all_panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_thresholds_are_not_grafana_defaults(path):
    # Grafana's default is green, then red at 80: it means nothing here.
    for panel in all_panels(load(path)):
        if panel["type"] == "row":
            continue
        steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
        assert [(s["color"], s["value"]) for s in steps] != [("green", None), ("red", 80)], panel[
            "title"
        ]


def test_slo_lines_are_drawn():
    overview = load(DASHBOARDS / "overview.json")
    by_title = {p["title"]: p for p in all_panels(overview)}
    latency = by_title["Latency percentiles vs 250 ms SLO"]["fieldConfig"]["defaults"]
    errors = by_title["Error ratio (5xx) vs SLO"]["fieldConfig"]["defaults"]
    assert {"color": "red", "value": 0.25} in latency["thresholds"]["steps"]
    assert latency["unit"] == "s"
    assert {"color": "red", "value": 0.001} in errors["thresholds"]["steps"]
    assert errors["unit"] == "percentunit"


def test_every_expression_parses_with_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/host-setup.sh installs it)")
    rules = []
    for path in dashboards():
        for index, (title, expr) in enumerate(expressions(load(path))):
            rules.append(
                {
                    "record": f"dashboard:{path.stem}:{index}",
                    "expr": substitute(expr),
                    "labels": {"panel": title},
                }
            )
    assert rules
    rule_file = tmp_path / "dashboards.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_check_catches_a_broken_expression(tmp_path):
    # The check above can fail: a malformed expression is refused.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/host-setup.sh installs it)")
    rule_file = tmp_path / "broken.rules.yml"
    rule_file.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(up[5m])"}]}]}
        )
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True
    )
    assert result.returncode != 0


def test_metric_name_extraction():
    assert metric_names(
        "histogram_quantile(0.99, sum by (le) "
        '(rate(http_request_duration_seconds_bucket{route!~"/a|b"}[5m])))'
    ) == {"http_request_duration_seconds_bucket"}
    assert metric_names("time() - max(pg_postmaster_start_time_seconds) > 1e3") == {
        "pg_postmaster_start_time_seconds"
    }
    assert metric_names("a_total / on (instance) group_left b") == {"a_total", "b"}


# Families served by the exporters: this suite cannot see them (no exporter runs
# here); the Molecule scenario named checks every one against the real exporter.
CHECKED_BY_MOLECULE = {
    "node_": "molecule/node_exporter (test_serves_the_families_rules_and_dashboards_use)",
    "pg_": "molecule/postgres_exporter (test_serves_every_pg_family_the_dashboards_use)",
    "patroni_": "molecule/database_ha (test_patroni_serves_the_families_the_dashboards_use)",
}


def test_every_metric_is_exposed_by_something():
    service = service_metric_names()
    textfile = textfile_metric_names()
    recorded = recorded_metric_names()
    assert "http_requests_total" in service, "service metrics not found in service/src"
    assert "paycore_wireguard_peer_latest_handshake_seconds" in textfile
    assert "paycore:ledger_errors:ratio_rate5m" in recorded
    unknown = []
    for name in sorted(dashboard_metric_names()):
        if name.startswith(tuple(CHECKED_BY_MOLECULE)):
            continue  # test_exporter_metrics_are_checked_by_molecule
        if name.startswith("container_"):
            known = name in CADVISOR_METRICS
        elif ":" in name:
            known = name in recorded
        else:
            known = name in service or name in textfile or name in PROMETHEUS_METRICS
        if not known:
            unknown.append(name)
    assert not unknown, f"dashboards read metrics nothing exposes: {unknown}"


@pytest.mark.parametrize("prefix", sorted(CHECKED_BY_MOLECULE))
def test_exporter_metrics_are_checked_by_molecule(prefix):
    names = sorted(n for n in dashboard_metric_names() if n.startswith(prefix))
    assert names, f"no {prefix}* metric in the dashboards"
    scenario, test = CHECKED_BY_MOLECULE[prefix].split(" ", 1)
    verifier = "\n".join(p.read_text() for p in (ROOT / scenario / "tests").glob("test_*.py"))
    assert test.strip("()") in verifier and "dashboard_metric_names" in verifier, (
        f"{scenario} no longer checks the dashboards' {prefix}* names"
    )
    pytest.skip(
        f"{len(names)} {prefix}* names ({', '.join(names)}) need a running exporter: "
        f"checked by {CHECKED_BY_MOLECULE[prefix]}"
    )


LEDGER_REQUEST_METRICS = re.compile(
    r"\b(http_requests_total|http_request_duration_seconds_(?:bucket|count|sum))\b(\{[^}]*\})?"
)


def test_ledger_requests_are_selected_as_the_slo_rules_do():
    """The overview's traffic, error and latency panels count the requests the
    SLO alerts count: through the recorded paycore:* series, or with the rules'
    own selector (e.g. probes, /metrics and /openapi.json are never counted)."""
    selector = slo_selector()
    wrong = []
    for path in dashboards():
        for title, expr in expressions(load(path)):
            for match in LEDGER_REQUEST_METRICS.finditer(expr):
                if selector not in (match.group(2) or ""):
                    wrong.append(f"{path.name}: {title}: {match.group(0)}")
    assert not wrong, f"not the SLO selector {{{selector}}}: {wrong}"


def test_slo_panels_read_the_recorded_series():
    overview = {p["title"]: p for p in all_panels(load(DASHBOARDS / "overview.json"))}

    def exprs(title):
        return [target["expr"] for target in overview[title]["targets"]]

    assert exprs("Availability (30 d)") == ["1 - paycore:ledger_errors:ratio_rate30d"]
    assert exprs("Error budget left (30 d)") == ["1 - paycore:ledger_errors:ratio_rate30d / 0.001"]
    assert exprs("Requests under 250 ms (30 d)") == [
        "1 - paycore:ledger_slow_requests:ratio_rate30d"
    ]
    assert exprs("Error ratio (5xx) vs SLO")[0] == "paycore:ledger_errors:ratio_rate5m"
    burn = exprs("Error budget burn rate (5 m, 30 m, 1 h, 6 h)")
    assert burn == [
        f"paycore:ledger_errors:ratio_rate{w} / 0.001" for w in ("5m", "30m", "1h", "6h")
    ]


def test_dashboard_objectives_are_the_rules_objectives():
    """The budget arithmetic and SLO lines above are the role's default objectives."""
    context = role_context()
    assert 1 - context["prometheus_slo_availability_objective"] == pytest.approx(0.001)
    assert context["prometheus_slo_latency_threshold_seconds"] == "0.25"
    latency = {p["title"]: p for p in all_panels(load(DASHBOARDS / "overview.json"))}[
        "Requests under 250 ms (30 d)"
    ]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {"color": "orange", "value": context["prometheus_slo_latency_objective"]} in latency


def test_collector_failures_panel_watches_what_the_alert_watches():
    host = {p["title"]: p for p in all_panels(load(DASHBOARDS / "host.json"))}
    expr = host["Collector failures"]["targets"][0]["expr"]
    collectors = re.search(r'collector=~"([^"]+)"', expr).group(1).split("|")
    assert collectors == role_context()["prometheus_alert_node_collectors"]


def test_incident_dashboard_puts_api_database_and_disk_side_by_side():
    """One glance for the correlation operators look for: the first row holds
    the API's errors and latency, the database and the disks, on one shared
    crosshair."""
    board = load(DASHBOARDS / "incident.json")
    assert board["graphTooltip"] == 1, "shared crosshair"
    panels = [p for p in all_panels(board) if p["type"] != "row"]
    top = min(p["gridPos"]["y"] for p in panels)
    first_row = [p for p in panels if p["gridPos"]["y"] == top]
    exprs = [" ".join(t["expr"] for t in p["targets"]) for p in first_row]
    layers = {
        "API errors": r"paycore:ledger_errors:ratio_rate5m",
        "API latency": r"http_request_duration_seconds_bucket",
        "database": r"paycore:ledger_query_seconds|pg_|paycore_db_pool",
        "disk": r"node_disk_|node_filesystem_",
    }
    for layer, pattern in layers.items():
        assert [e for e in exprs if re.search(pattern, e)], f"no {layer} panel in the first row"
    assert sum(p["gridPos"]["w"] for p in first_row) <= 24, "one row, side by side"


def test_slowest_statements_by_mean_and_by_total_time():
    panels = {p["title"]: p for p in all_panels(load(DASHBOARDS / "postgresql.json"))}
    mean = panels["Slowest statements by mean time"]["targets"][0]["expr"]
    total = panels["Statements by total time"]["targets"][0]["expr"]
    assert "pg_stat_statements_seconds_total" in mean and "pg_stat_statements_calls" in mean
    assert "pg_stat_statements_seconds_total" in total and "pg_stat_statements_calls" not in total
    for expr in (mean, total):
        assert "topk(" in expr and "[$__range]" in expr and "query" in expr
    ledger = panels["Ledger query time p99 (statement means)"]["targets"][0]["expr"]
    assert ledger == "paycore:ledger_query_seconds:p99_5m"
