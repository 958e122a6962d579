"""An API server under load: requests it throttles (429 with Retry-After, as API Priority and
Fairness answers) are sent again after the wait it names; failures it answers with a 5xx end the
review allowed unpatched, counted as `api_error` with one log line (issue 13 §1, found by
tests/e2e/test_faults.py: every 429 on a claim let a colliding disk through, counted as an
internal error with a traceback)."""

from __future__ import annotations

import logging
import time

import pytest

from bimguard.kube import Kube, KubeError
from tests.webhook.test_reviews import CLAIMS, SAMPLE_UUID, cluster, occupy, patch_of, post, review  # noqa: F401

CLAIM_KEY = "bimguard.io/v1alpha1/prefixclaims"


async def test_a_throttled_request_is_sent_again_after_its_retry_after(cluster):
    api, replica = cluster
    r = await replica()
    kube = Kube(r.api_client)
    api.faults.error_rate(1.0, 429, verbs="list", resource=CLAIM_KEY, count=1, retry_after=1)
    started = time.monotonic()
    assert (await kube.list(CLAIMS, "bimguard"))["items"] == []
    assert time.monotonic() - started >= 1.0 and kube.throttled == 1  # it waited as told
    api.faults.error_rate(1.0, 429, verbs="list", resource=CLAIM_KEY, retry_after=0)
    with pytest.raises(KubeError) as err:  # still throttled after every retry: the caller hears it
        await kube.list(CLAIMS, "bimguard")
    assert err.value.status == 429 and kube.throttled == 4
    api.faults.clear()
    api.faults.error_rate(1.0, 503, verbs="list", resource=CLAIM_KEY, count=1)
    with pytest.raises(KubeError) as err:  # a 5xx is not retried: a write may have been carried out
        await kube.list(CLAIMS, "bimguard")
    assert err.value.status == 503 and kube.throttled == 4


async def test_a_throttled_claim_is_made_within_the_deadline(cluster, sample):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    api.faults.error_rate(1.0, 429, verbs="create", resource=CLAIM_KEY, count=1, retry_after=1)
    code, resp = await post(r, review(sample))
    assert code == 200 and patch_of(resp), resp  # rewritten although the first claim was refused
    assert not list(r.metrics.skipped.collect())[0].samples


async def test_a_failing_claim_is_an_api_error_in_one_line(cluster, sample, caplog):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    api.faults.error_rate(1.0, 503, verbs="create", resource=CLAIM_KEY, count=1)
    with caplog.at_level(logging.INFO, logger="bimguard"):
        code, resp = await post(r, review(sample, disk_uuid=SAMPLE_UUID))
    assert code == 200 and resp["response"]["allowed"] and not patch_of(resp)
    assert r.metrics.skipped.labels("api_error")._value.get() == 1
    assert r.metrics.skipped.labels("internal_error")._value.get() == 0
    [line] = [rec for rec in caplog.records if "allowed without a patch" in rec.getMessage()]
    assert "503 ServiceUnavailable" in line.getMessage() and line.exc_info is None
