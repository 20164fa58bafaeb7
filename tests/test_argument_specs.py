"""Every role documents exactly the variables it defaults, with matching types."""

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parent.parent / "roles"
PYTHON_TYPES = {
    "str": str,
    "int": int,
    "bool": bool,
    "list": list,
    "dict": dict,
    "float": (int, float),
    "path": str,
    "raw": object,
}


def roles():
    return sorted(p.name for p in ROLES.iterdir() if (p / "tasks").is_dir())


def load(path):
    with path.open() as handle:
        return yaml.safe_load(handle) or {}


def options_of(spec_file):
    """Options of every entry point (main, or those callers pick with tasks_from), merged."""
    options = {}
    for entry_point in load(spec_file)["argument_specs"].values():
        options.update(entry_point.get("options") or {})
    return options


def test_there_are_roles():
    assert roles(), f"no roles found under {ROLES}"


@pytest.mark.parametrize("role", roles())
def test_argument_specs_match_defaults(role):
    spec_file = ROLES / role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"{role} has no meta/argument_specs.yml"
    # Entry points besides main (tasks_from) document the options they use.
    options = options_of(spec_file)
    defaults_file = ROLES / role / "defaults" / "main.yml"
    defaults = load(defaults_file) if defaults_file.is_file() else {}

    assert set(options) - set(defaults) <= {
        name for name, spec in options.items() if spec.get("required")
    }, f"{role}: documented but without a default: {sorted(set(options) - set(defaults))}"
    assert set(defaults) <= set(options), (
        f"{role}: defaulted but not documented: {sorted(set(defaults) - set(options))}"
    )

    for name, value in defaults.items():
        declared = options[name].get("type", "str")
        if value is None or (isinstance(value, str) and "{{" in value):
            continue  # computed at run time or deliberately unset
        assert isinstance(value, PYTHON_TYPES[declared]), (
            f"{role}: {name} defaults to {value!r} but is declared {declared}"
        )
        if declared == "int":
            assert not isinstance(value, bool), f"{role}: {name} is a bool, declared int"


@pytest.mark.parametrize("role", roles())
def test_every_entry_point_has_its_tasks_file(role):
    entry_points = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]
    tasks = ROLES / role / "tasks"
    missing = [name for name in entry_points if not (tasks / f"{name}.yml").is_file()]
    assert not missing, f"{role}: entry points without tasks/<name>.yml: {missing}"


@pytest.mark.parametrize("role", roles())
def test_variables_carry_the_role_prefix(role):
    defaults_file = ROLES / role / "defaults" / "main.yml"
    if not defaults_file.is_file():
        pytest.skip(f"{role} has no defaults")
    stray = [name for name in load(defaults_file) if not name.startswith(f"{role}_")]
    assert not stray, f"{role}: variables without the '{role}_' prefix: {stray}"
