"""The benchmarks still run: their set-up and answers, not their figures (never timed here).

bench/ is outside the package and outside every other test, so a refactor can break it silently;
these run the parts that need no wrk, h2load or jq.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not shutil.which("taskset"), reason="the benchmark pins its processes with taskset (util-linux)")
def test_webhook_benchmark_self_check_serves_every_path() -> None:
    """Floor, hot and rewrite servers start as in a measured run; each path's review gets its
    answer and is counted under its outcome; every rewrite leaves one record and one claim."""
    out = subprocess.run([sys.executable, "bench/webhook_bench.py", "--check", "--nodes", "20"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "webhook_bench --check: floor, hot and rewrite paths answer" in out.stdout


def test_scan_benchmark_dump_is_scanned_to_the_groups_its_jq_filter_counts(tmp_path: Path) -> None:
    """The generated dump is a kubectl List `bimguard scan` reads whole, and the scan finds exactly
    the prefix groups the benchmark's jq one-liner counts (computed here in Python)."""
    dump = tmp_path / "dump.json"
    stats = json.loads(subprocess.run([sys.executable, "bench/scan_bench.py", "--generate-only", "3000", str(dump)],
                                      cwd=REPO, capture_output=True, text=True, check=True, timeout=120).stdout)
    doc = json.loads(dump.read_text())
    prefixes = collections.Counter(
        d["diskUUID"][:4] for o in doc["items"] if o["kind"] == "Node"
        for d in (o.get("status") or {}).get("diskStatus", {}).values() if d.get("diskType") in ("filesystem", ""))
    scan = subprocess.run([sys.executable, "-m", "jobs", "scan", "--from-dump", str(dump), "-o", "json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert scan.returncode == 1, scan.stderr  # 1: collisions found
    report = json.loads(scan.stdout)
    assert stats["nodes"] == 3000 and report["disks"]["total"] == stats["disks"]
    assert len(report["collisions"]) == sum(1 for n in prefixes.values() if n > 1) > 0


def test_repair_benchmark_check_repairs_every_disk_and_prints_each_figure() -> None:
    """The repair benchmark's three runs (mixed, empty on two cluster sizes) on tiny clusters: the
    Job repairs every planted group and each figure of the table is computed from the emulator."""
    out = subprocess.run([sys.executable, "bench/repair_bench.py", "--check"], cwd=REPO, check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "repair_bench --check: 4 disks repaired in 3 runs" in out.stdout
    for figure in ("empty victims: Job start -> Done, periods (mixed)", "writes per empty victim (empty-big)",
                   "reads per empty victim, 6 / 4 nodes", "disks evicting at once, max (mixed)"):
        assert figure in out.stdout, out.stdout
    assert re.search(r"^replicas rebuilt / plan's count \(mixed\) +1 / 1 ", out.stdout, re.MULTILINE), out.stdout
