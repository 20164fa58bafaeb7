"""Prints the drills' measured figures at the end of the run (timings are
measured and reported, never asserted: the machines are shared)."""

from network_helpers import FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("drill figures (seconds)")
        for name, seconds in FIGURES.items():
            terminalreporter.write_line(f"{seconds:8.1f}  {name}")
