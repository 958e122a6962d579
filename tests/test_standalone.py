"""The repository stands on its own: a fresh clone of the committed HEAD collects the whole suite
with nothing beside it (its test data is in tests/fixtures, see the README there)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Spelled in two parts so that this file does not contain what it looks for.
FORBIDDEN = [b"../" + b"shared", b"BIMGUARD_" + b"SHARED"]


@pytest.mark.skipif(not shutil.which("git") or not (REPO / ".git").exists(), reason="needs git and a git checkout")
def test_a_fresh_clone_collects_without_material_beside_it(tmp_path: Path) -> None:
    clone = tmp_path / "bimguard"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=60,
                   capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bimguard"]  # no `shared` folder beside the clone

    offenders = [f"{p.relative_to(clone)}: {s.decode()}"
                 for top in ("tests", "bench") for p in sorted((clone / top).rglob("*")) if p.is_file()
                 for s in FORBIDDEN if s in p.read_bytes()]
    assert offenders == []

    env = {k: v for k, v in os.environ.items() if k not in ("BIMGUARD_" + "SHARED", "PYTHONPATH")}
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-2000:])
    collected = re.search(r"^(\d+) tests? collected", out.stdout, re.MULTILINE)
    assert collected and int(collected.group(1)) > 300, out.stdout[-2000:]
