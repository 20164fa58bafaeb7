"""Every systemd unit PayCore writes runs in one sandbox, stated once in
files/systemd/hardening.j2; a unit states only its differences."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "files" / "systemd" / "hardening.j2"
# A directive only the shared template may state.
SANDBOX_DIRECTIVE = "NoNewPrivileges"


def templates():
    return sorted(
        p.relative_to(ROOT)
        for p in (ROOT / "roles").glob("*/templates/**/*.j2")
        if SANDBOX_DIRECTIVE in p.read_text() or "hardening" in p.name
    )


def unit_templates():
    return sorted(
        p.relative_to(ROOT)
        for p in (ROOT / "roles").glob("*/templates/**/*.service.j2")
        if "[Service]" in p.read_text()
    )


def test_the_sandbox_is_stated_once():
    assert SANDBOX_DIRECTIVE in SHARED.read_text()
    copies = [str(p) for p in templates() if SANDBOX_DIRECTIVE in (ROOT / p).read_text()]
    assert not copies, f"sandbox directives copied into {copies}"


@pytest.mark.parametrize("template", unit_templates() + templates(), ids=str)
def test_each_unit_renders_the_shared_sandbox(template):
    text = (ROOT / template).read_text()
    assert "files/systemd/hardening.j2" in text or "{% include 'hardening.j2' %}" in text, (
        f"{template} renders neither files/systemd/hardening.j2 nor its role's hardening.j2"
    )


@pytest.mark.parametrize("template", unit_templates(), ids=str)
def test_the_line_after_a_role_sandbox_include_is_blank(template):
    """Ansible's trim_blocks drops the newline after the include, and the
    sandbox ends without one: a directive or comment on the next line would
    join its last line (SystemCallFilter)."""
    lines = (ROOT / template).read_text().splitlines()
    for number, line in enumerate(lines[:-1]):
        if line.strip() == "{% include 'hardening.j2' %}":
            assert lines[number + 1].strip() == "", f"{template}:{number + 2} must be blank"
