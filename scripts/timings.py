#!/usr/bin/env python3
"""Where the time of a test run went: one row per Molecule step of each
scenario (create, converge, idempotence, check, verify, ...) and per test
suite, the costliest first.

Usage: timings.py CACHE_DIR [BUDGET_SECONDS WALL_SECONDS]

Reads CACHE_DIR/timings.tsv, one line per part of this run (kind, name,
seconds: "molecule site 1234", "pytest repo 300", "lint - 60"), and for each
Molecule scenario its log CACHE_DIR/molecule-<scenario>.log, whose lines
scripts/test.sh prefixes with the unix time they were written."""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "1764825600 INFO     site ➜ converge: Executing" / "...: Executed: Successful"
STEP = re.compile(r"^(\d+) .*?➜ (\w+): (Executing|Executed)")


def molecule_steps(log: Path) -> dict[str, int]:
    """Seconds per Molecule step (a step run twice, like destroy, is summed)."""
    steps: dict[str, int] = defaultdict(int)
    started: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = STEP.match(ANSI.sub("", line))
        if not match:
            continue
        stamp, step, event = int(match.group(1)), match.group(2), match.group(3)
        if event == "Executing":
            started[step] = stamp
        elif step in started:
            steps[step] += stamp - started.pop(step)
    return dict(steps)


def rows(cache: Path) -> list[tuple[int, str, str]]:
    found = []
    for line in (cache / "timings.tsv").read_text().splitlines():
        kind, name, seconds = line.split("\t")
        if kind == "molecule":
            log = cache / f"molecule-{name}.log"
            for step, step_seconds in molecule_steps(log).items():
                found.append((step_seconds, f"molecule {name}", step))
        found.append((int(seconds), f"{kind} {name}", "whole" if kind == "molecule" else "run"))
    return sorted(found, reverse=True)


def main(argv: list[str]) -> int:
    cache = Path(argv[1])
    table = rows(cache)
    print("==> where the time went (seconds, costliest first)")
    width = max((len(name) for _, name, _ in table), default=10)
    for seconds, name, step in table:
        print(f"    {seconds:6d}  {name:<{width}}  {step}")
    if len(argv) > 3:
        budget, wall = int(argv[2]), int(argv[3])
        print(f"    wall time {wall} s; budget {budget} s")
        if wall > budget:
            print(
                f"WARNING: this run took {wall} s, over the {budget} s budget "
                "(README.md, Development): see the table above",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
