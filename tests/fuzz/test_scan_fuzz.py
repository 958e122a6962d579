"""Generated dumps and support bundles fed to `bimguard scan`.

A sample of the bounded run in bench/fuzz_bench.py (100,000+ inputs per target). Outcome for
every input: exit 0 or 1 with a report that matches docs/scan-report.schema.json, or exit 2 with
nothing on standard output and exactly one line on standard error; never a traceback and never
the CLI's "internal error" line.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.scan_strategies import bundle_inputs, dump_inputs
from tests.fuzz.scan_target import scan_problems

FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
EXITS: dict[str, Counter] = {"dump": Counter(), "bundle": Counter()}


@settings(max_examples=150, **FUZZ)
@given(inp=dump_inputs())
def test_every_dump_gets_a_verdict_or_one_line(inp, tmp_path) -> None:
    code, problems = scan_problems(inp, tmp_path / "in")
    EXITS["dump"][code] += 1
    assert problems == [], inp.describe()


@settings(max_examples=100, **FUZZ)
@given(drawn=bundle_inputs())
def test_every_support_bundle_gets_a_verdict_or_one_line(drawn, tmp_path) -> None:
    inp, damage = drawn
    code, problems = scan_problems(inp, tmp_path / "in", damage)
    EXITS["bundle"][code] += 1
    assert problems == [], inp.describe()


@pytest.mark.parametrize("target", ["dump", "bundle"])
def test_the_sample_reached_verdicts_and_refusals(target: str) -> None:
    """Both kinds of outcome occurred (a generator that only produced junk would pass vacuously).
    Runs after the two tests above in file order; alone it has nothing to look at."""
    exits = EXITS[target]
    if not exits:
        pytest.skip("run with the fuzz tests above")
    assert exits[2] > 0 and exits[0] + exits[1] > 0, exits
