"""Generated dumps and support bundles fed to `bimguard scan`.

A sample of the bounded run in bench/fuzz_bench.py (100,000+ inputs per target). Outcome for
every input: exit 0 or 1 with a report that matches docs/scan-report.schema.json, or exit 2 with
nothing on standard output and exactly one line on standard error; never a traceback and never
the CLI's "internal error" line.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings

from tests.fuzz.scan_strategies import bundle_inputs, dump_inputs
from tests.fuzz.scan_target import scan_problems

FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])


def test_every_dump_gets_a_verdict_or_one_line(tmp_path) -> None:
    exits: Counter = Counter()

    @settings(max_examples=150, **FUZZ)
    @given(inp=dump_inputs())
    def each(inp) -> None:
        code, problems = scan_problems(inp, tmp_path / "in")
        exits[code] += 1
        assert problems == [], inp.describe()

    each()
    reached_verdicts_and_refusals(exits)


def test_every_support_bundle_gets_a_verdict_or_one_line(tmp_path) -> None:
    exits: Counter = Counter()

    @settings(max_examples=100, **FUZZ)
    @given(drawn=bundle_inputs())
    def each(drawn) -> None:
        inp, damage = drawn
        code, problems = scan_problems(inp, tmp_path / "in", damage)
        exits[code] += 1
        assert problems == [], inp.describe()

    each()
    reached_verdicts_and_refusals(exits)


def reached_verdicts_and_refusals(exits: Counter) -> None:
    """Both kinds of outcome occurred (a generator that only produced junk would pass vacuously)."""
    assert exits[2] > 0 and exits[0] + exits[1] > 0, exits
