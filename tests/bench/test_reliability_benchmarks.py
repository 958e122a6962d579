"""The reliability benchmarks still run: their set-up and checks, not their figures (never timed here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not shutil.which("taskset") or not {0, 1} <= os.sched_getaffinity(0),
                    reason="the benchmark pins its processes to cores 0 and 1 with taskset (util-linux)")
def test_soak_benchmark_self_check_answers_both_kinds_of_review() -> None:
    out = subprocess.run([sys.executable, "bench/soak_bench.py", "--check"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "soak_bench --check: routine and rewrite reviews answered, figures computed" in out.stdout
    assert re.search(r"^rewrites +50 sent, 50 answered with a patch", out.stdout, re.MULTILINE), out.stdout
    assert "PASS  0 errors" in out.stdout


def test_fuzz_benchmark_small_run_counts_every_target(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/fuzz_bench.py", "--count", "50", "--chunk", "10", "--out",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    for target in ("webhook", "dump", "bundle"):
        assert re.search(rf"^{target} +[1-9][\d,]* inputs +0 failing", out.stdout, re.MULTILINE), out.stdout
    assert re.search(r"^fuzz_bench: [\d,]+ inputs, 0 failing$", out.stdout, re.MULTILINE), out.stdout
