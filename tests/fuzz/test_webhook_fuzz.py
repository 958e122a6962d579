"""Generated AdmissionReviews POSTed to a real webhook replica over real HTTPS on loopback.

A sample of the bounded run in bench/fuzz_bench.py (100,000+ inputs per target). Outcomes: every
well-formed review is answered 200 `allowed: true` with its uid, and any patch applies to the
object and only gives first-recorded disks a free prefix; every malformed body gets the server's
documented error (400 with a one-line message: not an AdmissionReview; 413: over the 6 MiB cap);
no answer is a 500, no review hangs (the client's socket timeout), nothing logs a traceback and
no review is counted as an internal error.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings

from tests.fuzz.review_strategies import malformed_reviews, oversized_reviews, well_formed_reviews
from tests.fuzz.webhook_target import ServedWebhook, check_answer


def fuzz(examples: int) -> settings:
    """No deadline (a loaded machine), no example database in the work tree."""
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])


SEEN: Counter = Counter()  # the server's outcomes during the generated reviews


def answer_problems(hook: ServedWebhook, drawn) -> list[str]:
    doc, body, expect = drawn
    if expect.well_formed:
        doc, body = hook.as_stored(doc, body)
    errors_before = hook.metric("bimguard_admission_skipped_total", reason="internal_error")
    assert hook.replica is not None
    outcomes = hook.replica.metrics.reviews.outcomes
    before = {o: outcomes[o] for o in ("unchanged", "rewritten")}
    status, ctype, data = hook.post(body)
    SEEN.update({o: outcomes[o] - n for o, n in before.items()})
    problems = check_answer(doc, body, expect, status, ctype, data)
    problems += hook.problems_logged()
    if hook.metric("bimguard_admission_skipped_total", reason="internal_error") != errors_before:
        problems.append("counted as an internal error")
    return problems


def test_every_well_formed_review_is_allowed(hook: ServedWebhook) -> None:
    SEEN.clear()

    @fuzz(150)
    @given(drawn=well_formed_reviews())
    def each(drawn) -> None:
        assert answer_problems(hook, drawn) == []

    each()
    # The sample reached the interesting paths: some reviews were rewritten, some routine (a
    # generator that only ever produced 400s or skips would pass vacuously).
    assert SEEN["unchanged"] > 0 and SEEN["rewritten"] > 0, SEEN


@fuzz(150)
@given(drawn=malformed_reviews())
def test_every_malformed_body_gets_a_documented_error(hook: ServedWebhook, drawn) -> None:
    assert answer_problems(hook, drawn) == []


@fuzz(3)
@given(drawn=oversized_reviews())
def test_a_body_over_the_cap_is_413(hook: ServedWebhook, drawn) -> None:
    assert answer_problems(hook, drawn) == []
