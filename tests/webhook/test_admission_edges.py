"""Admission in the corners of issue 10, against webhook replicas over verified TLS and the
emulated API server: claims judged on the API server's clock, claims of records that never came to
exist, and the JSON Patch on both shapes of a disk entry (with and without `conditions`), applied
by the emulated API server exactly as kube-apiserver applies a mutating webhook's patch.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bimguard import records
from bimguard.kube import Kube, KubeError, Resource
from tests.webhook.harness import (
    LONGHORN_NS,
    NAMESPACE,
    register,
)
from tests.webhook.test_reviews import (  # noqa: F401 - `cluster` is a fixture the tests here use
    SAMPLE_UUID,
    cluster,
    occupy,
    patch_of,
    post,
    review,
    until,
)

REWRITES = Resource(records.GROUP, records.VERSION, records.REWRITES)
CLAIMS = Resource(records.GROUP, records.VERSION, records.CLAIMS)
NODES = Resource("longhorn.io", "v1beta2", "nodes")


# ------------------------------------------------------------------ 3. claims on the server's clock


async def test_a_live_claim_is_alive_whatever_the_webhook_pods_clock_says(cluster, sample):
    """The webhook pods' clocks are 400 s ahead of the API server's (claims taken over after
    300 s). Replica 1 claims a prefix for a disk whose status write is still in flight (not in
    any index yet); a moment later replica 2 reviews another disk with the same prefix. The claim
    is seconds old on the server's clock: it is alive, so replica 2 must rewrite its disk rather
    than take the claim over and let two disks keep one prefix."""
    api, replica = cluster
    api.clock.skew = -400.0
    r1, r2 = await replica(), await replica()
    prefix = "b00c"
    a = review(sample, disk_uuid=f"{prefix}0001-0000-4000-8000-000000000001", disk="race-a", node="worker-a")
    b = review(sample, disk_uuid=f"{prefix}0002-0000-4000-8000-000000000002", disk="race-b", node="worker-b")
    _, ra = await post(r1, a)
    assert not patch_of(ra)  # the first disk keeps its natural prefix
    _, rb = await post(r2, b)
    assert patch_of(rb) and patch_of(rb)[0]["value"][:4] != prefix, rb
    claim = await Kube(r1.api_client).get(CLAIMS, NAMESPACE, prefix)
    assert (claim["spec"]["node"], claim["spec"]["disk"]) == ("worker-a", "race-a")


# ------------------------------------------------------------------ 5. a claim whose record never came


async def test_a_claim_whose_record_was_never_created_does_not_hold_its_prefix(cluster, sample):
    """A replica dies between claiming the new prefix of a colliding disk and creating its record
    (here: the record create fails as the dying process would leave it). The claim names a record
    that does not exist. Past a short grace (the API server's clock moved a minute on), a disk
    that naturally has that prefix keeps it and takes the claim over."""
    api, replica = cluster
    r = await replica()
    await occupy(r)
    kube = Kube(r.api_client)

    async def crash(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("killed before the record was created")

    real = r.admission.api.create_record
    r.admission.api.create_record = crash  # type: ignore[method-assign]
    _, resp = await post(r, review(sample))
    assert not patch_of(resp)
    r.admission.api.create_record = real  # type: ignore[method-assign]
    (orphan,) = [c for c in await kube.items(CLAIMS, NAMESPACE) if c["spec"]["record"]]
    assert await kube.get_or_none(REWRITES, NAMESPACE, orphan["spec"]["record"]) is None
    prefix = orphan["metadata"]["name"]
    await until(lambda: prefix in r.index.claims)

    api.clock.skew = 60.0
    natural = f"{prefix}7777-1111-4222-8333-444455556666"
    _, resp = await post(r, review(sample, disk_uuid=natural, disk="disk-natural", node="worker-3"))
    assert not patch_of(resp), resp
    claim = await kube.get(CLAIMS, NAMESPACE, prefix)
    assert records.claim_owner(claim) == ("worker-3", "disk-natural", natural) and claim["spec"]["record"] == ""
    assert await kube.items(REWRITES, NAMESPACE) == []


async def test_a_claim_whose_record_is_being_created_is_alive(cluster, sample):
    """The same claim within the grace: its record may be a moment away (the review that made
    the claim is still running), so the prefix stays taken and the new disk is rewritten."""
    _, replica = cluster
    r = await replica()
    kube = Kube(r.api_client)
    prefix = "c1a1"
    await kube.create(CLAIMS, NAMESPACE, records.claim_manifest(
        prefix=prefix, namespace=NAMESPACE, node="worker-9", disk="disk-9", uuid=f"{prefix}0000-1111-4222-8333-444455556666",
        record="r-0123456789abcdef"))
    await until(lambda: prefix in r.index.claims)
    _, resp = await post(r, review(sample, disk_uuid=f"{prefix}7777-1111-4222-8333-444455556666", disk="d",
                                   node="worker-3"))
    assert patch_of(resp) and patch_of(resp)[0]["value"][:4] != prefix


# ------------------------------------------------------------------ 6. the patch on both shapes


def _node(name: str) -> dict[str, Any]:
    return {"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "metadata": {"name": name, "namespace": LONGHORN_NS},
            "spec": {"disks": {"disk-nvme2": {"path": "/mnt/nvme2", "diskType": "filesystem", "allowScheduling": True}}}}


@pytest.mark.parametrize("shape", ["absent", "empty", "null", "longhorn"])
async def test_the_patch_applies_whether_or_not_the_entry_has_conditions(cluster, sample, shape):
    """A status write that first records a colliding disk, through the API server with the webhook
    registered as the chart does. The entry's `conditions` key may be absent (a writer that omits
    it), `[]` (Longhorn's first-record write), null (a nil slice: Longhorn's v1beta2 DiskStatus has
    `json:"conditions"` without omitempty, lm k8s/pkg/apis/longhorn/v1beta2/node.go:105 @v1.7.2), or
    hold Longhorn's conditions. In every shape the API server applies the patch and stores the new
    UUID with Ready and Schedulable False; a patch that does not apply would fail Longhorn's write."""
    api, replica = cluster
    r = await replica()
    await occupy(r)
    await register(api, r)
    kube = Kube(r.api_client)
    await kube.create(NODES, LONGHORN_NS, _node("worker-1"))
    node = await kube.get(NODES, LONGHORN_NS, "worker-1")
    entry = copy.deepcopy(sample["request"]["object"]["status"]["diskStatus"]["disk-nvme2"])
    if shape == "absent":
        entry.pop("conditions", None)
    elif shape == "empty":
        entry["conditions"] = []
    elif shape == "null":
        entry["conditions"] = None
    else:
        assert entry.get("conditions"), "the sample has Longhorn's conditions"
    node["status"] = {"diskStatus": {"disk-nvme2": entry}}
    try:
        stored = await kube.replace_status(NODES, LONGHORN_NS, node)
    except KubeError as err:
        raise AssertionError(f"Longhorn's status write failed: {err}") from None
    st = stored["status"]["diskStatus"]["disk-nvme2"]
    assert st["diskUUID"] != SAMPLE_UUID and st["diskUUID"][:4] != SAMPLE_UUID[:4]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == conds["Schedulable"]["status"] == "False"
    assert conds["Ready"]["reason"] == "BimguardUUIDRewrite"
    assert [n for n, o in api.admission.calls if o == "patched"]
