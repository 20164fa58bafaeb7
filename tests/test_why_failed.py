"""scripts/test.sh's why_failed: the lines a CI log's tail shows for a failed
part must say which step failed and why, from logs framed and wrapped as
Molecule writes them."""

import re
import subprocess
from pathlib import Path

import pytest

TEST_SH = Path(__file__).resolve().parent.parent / "scripts" / "test.sh"
FRAME = "1796527945   \x1b[2m│\x1b[0m "


def why_failed_function():
    text = TEST_SH.read_text()
    return re.search(r"^why_failed\(\) \{\n.*?^\}\n", text, re.M | re.S).group(0)


def molecule_log(*framed, failed_step, molecule=()):
    """A scenario log: Ansible's or pytest's output inside Molecule's frame,
    Molecule's own lines outside it, then the recap."""
    lines = ["1796527900 CRITICAL 'molecule/default/molecule.yml' glob failed.  Exiting."]
    lines += [FRAME + line for line in ("PLAY RECAP", "  skipped=0    rescued=0", *framed)]
    lines += [f"1796527945 {line}" for line in molecule]
    lines += [
        f"1796527945 \x1b[31mERROR    \x1b[0mgrafana ➜ {failed_step}: Executed: Failed",
        "1796527946 INFO     grafana ➜ destroy: Executed: Successful",
        "1796527946 grafana : actions=11  successful=9  missing=1  failed=1",
    ]
    return "\n".join(lines) + "\n"


def why(tmp_path, log_text):
    log = tmp_path / "part.log"
    log.write_text(log_text)
    script = why_failed_function() + "why_failed part part.log\n"
    (tmp_path / ".cache").mkdir()
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True)
    return (tmp_path / ".cache" / "why-part.txt").read_text().splitlines()


def test_a_wrapped_pytest_summary_line_is_joined_with_its_assertion(tmp_path):
    log = molecule_log(
        "E       assert 3 == 2",
        "FAILED",
        "  tests/test_grafana.py::test_first_run_restarts_checks_the_password_then_reloads",
        "  - AssertionError: Started",
        "======== 1 failed",
        failed_step="verify",
    )
    assert why(tmp_path, log) == [
        "ERROR    grafana ➜ verify: Executed: Failed",
        "FAILED tests/test_grafana.py::test_first_run_restarts_checks_the_password_then_reloads"
        " - AssertionError: Started",
        "E       assert 3 == 2",
    ]


def test_an_ansible_failure_shows_its_fatal_lines(tmp_path):
    log = molecule_log(
        "fatal: [paycore-grafana]: FAILED! => changed=false",
        "  attempts: 30",
        "  msg: Status code was -1",
        failed_step="converge",
    )
    assert why(tmp_path, log) == [
        "ERROR    grafana ➜ converge: Executed: Failed",
        "fatal: [paycore-grafana]: FAILED! => changed=false",
        "  attempts: 30",
        "  msg: Status code was -1",
    ]


IDEMPOTENCE = (
    "ERROR    grafana ➜ idempotence: Idempotence test failed because of the following tasks:"
)


def test_an_idempotence_failure_names_its_tasks(tmp_path):
    log = molecule_log(
        failed_step="idempotence",
        molecule=[
            IDEMPOTENCE,
            "* [paycore-grafana] => grafana : Install the pinned Grafana package",
            "INFO     grafana ➜ scenario: Pruning extra files",
        ],
    )
    assert why(tmp_path, log) == [
        "ERROR    grafana ➜ idempotence: Executed: Failed",
        IDEMPOTENCE,
        "* [paycore-grafana] => grafana : Install the pinned Grafana package",
    ]


@pytest.mark.parametrize("last", ["Traceback (most recent call last):", "Killed"])
def test_otherwise_the_log_tail(tmp_path, last):
    assert why(tmp_path, f"one\ntwo\n{last}\n") == ["one", "two", last]
