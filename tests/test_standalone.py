"""The repository stands on its own: a fresh clone of the committed HEAD collects the whole suite
with nothing beside it (its test data is in tests/fixtures, see the README there)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Spelled in two parts so that this file does not contain what it looks for.
FORBIDDEN = [b"../" + b"shared", b"BIMGUARD_" + b"SHARED"]


# Not a tool of the test extra: a source tarball or an exported tree has no history to clone.
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
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0"], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-2000:])
    collected = re.search(r"^(\d+) tests? collected", out.stdout, re.MULTILINE)
    assert collected and int(collected.group(1)) > 300, out.stdout[-2000:]


def test_the_package_ships_the_charts_crds() -> None:
    """`bimguard demo` installs bimguard's CRDs from the package; they are the chart's, byte for byte."""
    chart = {p.name: p.read_bytes() for p in (REPO / "charts" / "bimguard" / "crds").glob("*.yaml")}
    packaged = {p.name: p.read_bytes() for p in (REPO / "bimguard" / "crds").glob("*.yaml")}
    assert packaged == chart and len(chart) == 2


def test_a_wheel_has_what_installed_commands_read(tmp_path: Path) -> None:
    """A plain `pip install .` (not editable) has no checkout beside it: the wheel built from this tree
    carries the CRDs and the emulator's Longhorn CRDs, and the commands find them there."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build",
                                                             "dist", ".hypothesis"))
    subprocess.run([sys.executable, "-c", "from setuptools import build_meta; build_meta.build_wheel('dist')"],
                   cwd=src, check=True, capture_output=True, timeout=110)
    [wheel] = (src / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    probe = ("import bimguard, jobs.demo; from bimguard import crds; from bimguard.sim.resources import longhorn_crds;"
             "print(bimguard.__file__); print(sorted(d['metadata']['name'] for d in crds.documents()));"
             "print(len(longhorn_crds('v1.9.1')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr[-2000:]
    where, names, longhorn = out.stdout.splitlines()
    assert where.startswith(str(site))  # the wheel's copy, not this checkout
    assert names == "['diskrewrites.bimguard.io', 'prefixclaims.bimguard.io']" and int(longhorn) >= 10
