"""Whether this machine must have cel-expr-python (cel-cpp's Python wrapper), the test extra's
second CEL implementation: its requirement in pyproject.toml carries a marker for the machines it
publishes wheels for, and that marker decides here too. Where it holds, the tests import the
package and a missing install fails them; elsewhere they run with cel-python alone."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def required() -> bool:
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["test"]
    (req,) = [r for r in map(Requirement, extra) if r.name == "cel-expr-python"]
    return req.marker is None or req.marker.evaluate()


REQUIRED = required()
