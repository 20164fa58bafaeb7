"""bench.py --http-floor: the ceiling it prints is TPC-B's CPU per transaction
over a payment's CPU with the service's share replaced by the HTTP floor."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench import PairFigures, print_ceiling


def test_the_ceiling_puts_the_floor_in_place_of_the_service_and_takes_medians(capsys):
    pairs = [
        PairFigures(ratio=0.5, wrk_ms=0.02, service_ms=0.16, database_ms=0.20, tpcb_ms=0.27),
        PairFigures(ratio=0.6, wrk_ms=0.01, service_ms=0.15, database_ms=0.22, tpcb_ms=0.30),
        PairFigures(ratio=0.4, wrk_ms=0.03, service_ms=0.90, database_ms=0.90, tpcb_ms=0.28),
    ]
    print_ceiling(pairs, floor_ms=0.05)
    line = capsys.readouterr().out
    # Medians: TPC-B 0.28, PostgreSQL 0.22, wrk 0.02, service 0.16; 0.28 / (0.02 + 0.05 + 0.22).
    assert re.search(r"CPU ratio at most 0\.97x", line), line
    assert "a payment 0.160 ms" in line, line
    assert "service 0.050 ms per request" in line, line
