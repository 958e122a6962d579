"""Forged AdmissionReviews, POSTed straight to a webhook replica from inside the cluster network
(no API server in between), change nothing durable; real reviews, which kube-apiserver builds
from the stored Node, still do (webhook/admission.py `verify_reviews`, on as in the process).

The stored Longhorn Node is the sample's (tests/fixtures/longhorn/samples/admission): worker-1,
whose spec has disk-nvme2 and whose status has not recorded it yet; prefix a3af is taken by a BIM.
"""

from __future__ import annotations

import copy
import uuid as uuidlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bimguard.sim.apiserver import ApiServer
from tests.webhook.harness import LONGHORN_NS, NAMESPACE, Replica, prepare, start_replica
from tests.webhook.test_reviews import SAMPLE_UUID, occupy, patch_of, post, until
from webhook.admission import MAX_CLAIMS_PER_DISK

NODES = "longhorn.io/v1beta2/nodes"
DURABLE = ("bimguard.io/v1alpha1/prefixclaims", "bimguard.io/v1alpha1/diskrewrites")


@pytest.fixture
async def env(tmp_path: Path, sample: dict) -> AsyncIterator[tuple[ApiServer, Replica, dict]]:
    api = ApiServer()
    await api.start()
    kubeconfig = tmp_path / "k"
    api.kubeconfig(kubeconfig)
    await prepare(kubeconfig)
    old = copy.deepcopy(sample["request"]["oldObject"])
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation"):
        old["metadata"].pop(key, None)
    status = old.pop("status")
    created = api.store.create(NODES, old)
    api.store.update(NODES, {**created, "status": status}, subresource="status")
    r = await start_replica(kubeconfig)  # verify_reviews on, as in the webhook process
    try:
        await occupy(r)
        yield api, r, sample
    finally:
        await r.stop()
        await api.stop()


def stored(api: ApiServer) -> dict[str, Any]:
    return api.store.get(NODES, LONGHORN_NS, "worker-1")


def review_of(api: ApiServer, sample: dict, *, uuid: str = SAMPLE_UUID, rv: str | None = None,
              disk: str = "disk-nvme2", path: str | None = None) -> dict:
    """What kube-apiserver would send for longhorn-manager's write (oldObject = the stored Node),
    with one thing changed where a test says so."""
    doc = copy.deepcopy(sample)
    req = doc["request"]
    req["uid"] = str(uuidlib.uuid4())
    now = stored(api)
    req["oldObject"] = copy.deepcopy(now)
    obj = copy.deepcopy(now)
    entry = copy.deepcopy(sample["request"]["object"]["status"]["diskStatus"]["disk-nvme2"])
    entry["diskUUID"] = uuid
    obj["status"]["diskStatus"][disk] = entry
    if disk not in obj["spec"]["disks"] or path:
        obj["spec"]["disks"][disk] = {**sample["request"]["object"]["spec"]["disks"]["disk-nvme2"],
                                      "path": path or "/mnt/" + disk}
    req["object"] = obj
    if rv is not None:
        req["oldObject"]["metadata"]["resourceVersion"] = rv
    return doc


def durable(api: ApiServer) -> dict[str, list[str]]:
    out = {key: sorted(o["metadata"]["name"] for o in api.store.list(key, NAMESPACE)[0]) for key in DURABLE}
    out["events"] = sorted(e["metadata"]["name"] for e in api.store.list("v1/events", LONGHORN_NS)[0])
    return out


def skipped(r: Replica, reason: str) -> float:
    return r.metrics.skipped.labels(reason)._value.get()


async def test_a_forged_review_changes_nothing_durable(env: tuple[ApiServer, Replica, dict]) -> None:
    api, r, sample = env
    before, node_before = durable(api), stored(api)
    ghost = review_of(api, sample)  # a node that does not exist
    for obj in (ghost["request"]["object"], ghost["request"]["oldObject"]):
        obj["metadata"]["name"] = "worker-404"
    ghost["request"]["name"] = "worker-404"
    forged = [
        ("unverified_review", review_of(api, sample, rv="1")),  # not the stored resourceVersion
        ("unverified_disk", review_of(api, sample, disk="disk-evil", path="/etc")),  # not in the stored spec
        ("unverified_review", ghost),
    ]
    for reason, doc in forged:
        was = skipped(r, reason)
        status, resp = await post(r, doc)
        assert status == 200 and resp["response"]["allowed"] is True, resp
        assert not patch_of(resp), reason
        assert skipped(r, reason) == was + 1, reason
    assert durable(api) == before
    assert stored(api) == node_before


async def test_a_disk_already_recorded_is_not_first_recorded_again(env: tuple[ApiServer, Replica, dict]) -> None:
    """The right resourceVersion but an oldObject that hides a recorded UUID: the stored status
    decides."""
    api, r, sample = env
    doc = review_of(api, sample, disk="disk-nvme1", uuid="a3afcafe-0000-4000-8000-000000000001")
    del doc["request"]["oldObject"]["status"]["diskStatus"]["disk-nvme1"]
    before = durable(api)
    _, resp = await post(r, doc)
    assert not patch_of(resp) and durable(api) == before


async def test_the_real_review_is_answered_with_a_rewrite(env: tuple[ApiServer, Replica, dict]) -> None:
    """The same disk, as kube-apiserver would send it: prevention works as before."""
    api, r, sample = env
    _, resp = await post(r, review_of(api, sample))
    (op, *_) = patch_of(resp)
    assert op["path"].endswith("/disk-nvme2/diskUUID") and op["value"][:4] != "a3af"
    assert durable(api)["bimguard.io/v1alpha1/diskrewrites"]


async def test_claims_per_node_are_bounded(env: tuple[ApiServer, Replica, dict]) -> None:
    """Reviews that match the stored Node but vary the new disk's UUID (a replay by someone who can
    read Nodes) claim one prefix each -- until the node holds MAX_CLAIMS_PER_DISK per disk of its
    spec; then nothing more."""
    api, r, sample = env
    limit = MAX_CLAIMS_PER_DISK * len(stored(api)["spec"]["disks"])

    def claims_of_node() -> int:
        return sum(1 for c in api.store.list(DURABLE[0], NAMESPACE)[0] if c["spec"]["node"] == "worker-1")

    for i in range(limit + 4):
        fresh = f"{0xb000 + i:04x}cafe-0000-4000-8000-{i:012x}"  # a free prefix each time: no rewrite
        _, resp = await post(r, review_of(api, sample, uuid=fresh))
        assert resp["response"]["allowed"] is True
        n = claims_of_node()
        await until(lambda: sum(1 for o in r.index.claims.values() if o[0] == "worker-1") == n)
    assert claims_of_node() == limit
    assert skipped(r, "claim_limit") >= 4
