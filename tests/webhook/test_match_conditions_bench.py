"""bench/match_conditions_bench.py keeps working: its latency and counting parts, small and fast
(the figures themselves are in docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "match_conditions_bench.py"


def run(*args: str) -> str:
    p = subprocess.run([sys.executable, str(BENCH), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def row(out: str, name: str) -> list[str]:
    (line,) = [x for x in out.splitlines() if x.strip().startswith(name)]
    return line.split()


def test_latency_routine_writes_do_not_wait_for_an_unreachable_webhook() -> None:
    out = run("--only", "latency", "--writes", "20", "--slow-writes", "1", "--timeout-seconds", "1", "--engine",
              "cel-python")
    waited = float(row(out, "ignore (no matchConditions)")[4])  # p50 ms
    spared = float(row(out, "match (cel-python)")[3])
    assert waited >= 1000 > 100 > spared, out


def test_counts_only_first_record_writes_are_sent() -> None:
    out = run("--only", "counts", "--nodes", "3", "--new-disks", "3", "--rounds", "2", "--idle", "1")
    with_ = [int(x) for x in row(out, "with matchConditions")[2:]]
    without = [int(x) for x in row(out, "without")[1:]]
    status, first, sent, skipped, not_sent, routine_sent = with_
    assert first == 3 and sent == first and not_sent == 0 and routine_sent == 0 and skipped > 0, out
    assert without[2] == status and without[5] == status - first, out
