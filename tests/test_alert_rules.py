"""PayCore's Prometheus rules: rendered from the role's templates with its defaults,
then checked and unit-tested by promtool. Every alert must have a promtool test
that makes it fire and one that keeps it quiet, a severity, and a runbook section."""

import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "prometheus"
UNIT_TESTS = Path(__file__).resolve().parent / "promtool"
RUNBOOK = ROOT / "docs" / "alerts.md"
SEVERITIES = {"critical", "warning"}


def load(path):
    with path.open() as handle:
        return yaml.safe_load(handle) or {}


def role_context():
    context = {**load(ROLE / "defaults" / "main.yml"), **load(ROLE / "vars" / "main.yml")}
    # The jobs a site scrapes come from the site contract (their ports are
    # templates there; the rules read only names and `required`).
    contract = load(ROOT / "roles" / "contract" / "vars" / "main.yml")
    context["prometheus_scrape_jobs"] = contract["prometheus_scrape_jobs"]
    return {k: v for k, v in context.items() if not (isinstance(v, str) and "{{" in v)}


def render(template, context):
    # Same delimiters as the role's template task: [[ ]] is Ansible's, {{ }} Prometheus'.
    # Rule files are YAML, not HTML: nothing to escape.
    env = jinja2.Environment(  # noqa: S701
        variable_start_string="[[",
        variable_end_string="]]",
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
    )
    env.filters["combine"] = lambda a, b: {**a, **b}
    return env.from_string(template.read_text()).render(context)


def rendered_rules(context=None):
    """Every rule of the role's rule templates, rendered (default: its defaults)."""
    context = context or role_context()
    for name in context["_prometheus_rule_templates"]:
        template = ROLE / "templates" / "rules" / f"{name}.rules.yml.j2"
        for group in yaml.safe_load(render(template, context))["groups"]:
            yield from group["rules"]


def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool is not installed (Debian package 'prometheus'; scripts/host-setup.sh)"
        )
    return path


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """Rendered rule files and the unit-test files side by side."""
    work = tmp_path_factory.mktemp("rules")
    context = role_context()
    for name in context["_prometheus_rule_templates"]:
        template = ROLE / "templates" / "rules" / f"{name}.rules.yml.j2"
        (work / f"{name}.rules.yml").write_text(render(template, context))
    for test_file in UNIT_TESTS.glob("*.yml"):
        shutil.copy(test_file, work / test_file.name)
    return work


def rule_names():
    return load(ROLE / "vars" / "main.yml")["_prometheus_rule_templates"]


def unit_test_files():
    return sorted(p.name for p in UNIT_TESTS.glob("*.yml"))


def alerts(workdir):
    found = {}
    for name in rule_names():
        for group in load(workdir / f"{name}.rules.yml")["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in found, f"alert {rule['alert']} defined twice"
                    found[rule["alert"]] = rule
    return found


def test_rule_templates_match_the_role_list():
    on_disk = {
        p.name.removesuffix(".rules.yml.j2") for p in (ROLE / "templates" / "rules").glob("*.j2")
    }
    assert on_disk == set(rule_names())


@pytest.mark.parametrize("name", rule_names())
def test_promtool_check_rules(workdir, name):
    result = subprocess.run(
        [promtool(), "check", "rules", str(workdir / f"{name}.rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", unit_test_files())
def test_promtool_unit_tests(workdir, test_file):
    result = subprocess.run(
        [promtool(), "test", "rules", test_file],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


DURATION_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def seconds(duration) -> float:
    """A Prometheus duration ("1h30m", "4m30s", "0s", "500ms") in seconds."""
    text = str(duration)
    parts = re.findall(r"(\d+)(ms|[ywdhms])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) / 1000 if u == "ms" else int(n) * DURATION_UNITS[u] for n, u in parts)


def alerts_in(workdir, rule_files):
    """Alerts the rule files a unit-test file names would load, by name."""
    found = {}
    for rule_file in rule_files:
        for group in load(workdir / rule_file)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found[rule["alert"]] = rule
    return found


def unit_test_cases(document, workdir, test_file="test"):
    """(alertname, firing?) of every alert test case in a promtool unit-test
    document, and the problems that make a case prove nothing: an alert its
    rule_files do not load (promtool passes a quiet case for an alert that does
    not exist) and a quiet case evaluated before the alert's `for:` has elapsed
    (quiet whatever the expression says)."""
    cases, problems = [], []
    rule_files = document.get("rule_files") or []
    loaded = alerts_in(workdir, rule_files)
    for group in document.get("tests") or []:
        where = f"{test_file}: test {group.get('name')!r}"
        if "interval" not in group:
            problems.append(f"{where} has no interval")
        for case in group.get("alert_rule_test") or []:
            name, firing = case["alertname"], bool(case.get("exp_alerts"))
            cases.append((name, firing))
            if name not in loaded:
                problems.append(f"{where}: {name} is not in its rule_files {rule_files}")
                continue
            wait = seconds(loaded[name].get("for", "0s"))
            if not firing and seconds(case["eval_time"]) < wait:
                problems.append(
                    f"{where}: {name} is quiet at {case['eval_time']}, before its"
                    f" for: {loaded[name]['for']} could have elapsed"
                )
    return cases, problems


def test_every_alert_has_a_firing_and_a_quiet_unit_test(workdir):
    firing, quiet, problems = set(), set(), []
    for test_file in unit_test_files():
        cases, found = unit_test_cases(load(UNIT_TESTS / test_file), workdir, test_file)
        problems += found
        for name, fires in cases:
            (firing if fires else quiet).add(name)
    assert problems == []
    defined = set(alerts(workdir))
    assert defined, "no alerts rendered"
    assert not defined - firing, (
        f"alerts with no test that makes them fire: {sorted(defined - firing)}"
    )
    # The Watchdog fires always; nothing can keep it quiet.
    assert not defined - quiet - {"Watchdog"}, (
        f"alerts with no test that keeps them quiet: {sorted(defined - quiet)}"
    )
    assert not (firing | quiet) - defined, (
        f"tests for unknown alerts: {sorted((firing | quiet) - defined)}"
    )


def test_unit_test_check_rejects_cases_that_prove_nothing(workdir):
    quiet_too_early = {"eval_time": "4m", "alertname": "HostHighCpu", "exp_alerts": []}
    wrong_file = {"eval_time": "10m", "alertname": "BackupStale", "exp_alerts": []}
    fine = {"eval_time": "5m", "alertname": "HostHighCpu", "exp_alerts": []}
    document = {
        "rule_files": ["hosts.rules.yml"],
        "tests": [
            {"interval": "1m", "alert_rule_test": [quiet_too_early, wrong_file, fine]},
            {"name": "no interval", "alert_rule_test": []},
        ],
    }
    _, problems = unit_test_cases(document, workdir)
    assert len(problems) == 3, problems
    assert "HostHighCpu is quiet at 4m, before its for: 5m" in problems[0]
    assert "BackupStale is not in its rule_files" in problems[1]
    assert "has no interval" in problems[2]


def test_durations():
    assert seconds("4m30s") == 270
    assert seconds("1d2h") == 93600
    assert seconds("0s") == 0
    assert seconds("500ms") == 0.5


def runbook_anchors():
    text = RUNBOOK.read_text()
    return {heading.strip().lower() for heading in re.findall(r"^## (\S+)\s*$", text, re.M)}


def test_every_alert_has_severity_annotations_and_runbook(workdir):
    anchors = runbook_anchors()
    base = role_context()["prometheus_runbook_base_url"]
    for name, rule in alerts(workdir).items():
        severity = rule.get("labels", {}).get("severity")
        # The Watchdog is no alert for anyone: it only proves the pipeline works.
        assert severity in SEVERITIES or (name, severity) == ("Watchdog", "none"), (
            f"{name}: severity"
        )
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), (
            f"{name}: summary/description"
        )
        url = annotations.get("runbook_url", "")
        assert url == f"{base}#{name.lower()}", f"{name}: runbook_url {url!r}"
        assert name.lower() in anchors, f"{name}: no '## {name}' section in docs/alerts.md"
        assert "for" in rule, f"{name}: no for: duration"


def test_alert_for_durations_are_all_overridable(workdir):
    defaults = role_context()["_prometheus_alert_for_defaults"]
    assert set(defaults) == set(alerts(workdir)), "every alert has exactly one built-in for: entry"


def test_for_override_is_applied():
    context = role_context()
    context["prometheus_alert_for"] = {"BackupStale": "7s"}
    rendered = yaml.safe_load(render(ROLE / "templates" / "rules" / "ledger.rules.yml.j2", context))
    rules = {r["alert"]: r for g in rendered["groups"] for r in g["rules"] if "alert" in r}
    assert rules["BackupStale"]["for"] == "7s"
    assert (
        rules["ReconcileStale"]["for"]
        == context["_prometheus_alert_for_defaults"]["ReconcileStale"]
    )
