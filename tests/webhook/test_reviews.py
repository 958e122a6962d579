"""Admission reviews POSTed straight to webhook replicas over verified TLS.

Built from the sample review (tests/fixtures/longhorn/samples/admission): longhorn-manager on worker-1
first records disk-nvme2 with UUID a3af91c2-..., whose prefix a3af another disk already holds.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import uuid as uuidlib
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bimguard import records
from bimguard.kube import EVENTS, Kube, Resource
from bimguard.sim.apiserver import ApiServer
from tests.webhook.harness import LONGHORN_NS, NAMESPACE, SERVICE, prepare, start_replica

REWRITES = Resource(records.GROUP, records.VERSION, records.REWRITES)
CLAIMS = Resource(records.GROUP, records.VERSION, records.CLAIMS)
REPLICAS = Resource("longhorn.io", "v1beta2", "replicas")
BIMS = Resource("longhorn.io", "v1beta2", "backingimagemanagers")
NODES = Resource("longhorn.io", "v1beta2", "nodes")
SAMPLE_UUID = "a3af91c2-5d7e-4f10-9b2a-6c8d0e1f2a3b"


def review(sample: dict, *, disk_uuid: str | None = None, disk: str = "disk-nvme2", node: str | None = None,
           dry_run: bool = False) -> dict:
    doc = copy.deepcopy(sample)
    req = doc["request"]
    req["uid"] = str(uuidlib.uuid4())
    req["dryRun"] = dry_run
    for obj in (req["object"], req["oldObject"]):
        if node:
            obj["metadata"]["name"] = node
    st = req["object"]["status"]["diskStatus"]
    entry = st.pop("disk-nvme2")
    if disk_uuid:
        entry["diskUUID"] = disk_uuid
    st[disk] = entry
    if node:
        req["name"] = node
    return doc


@pytest.fixture
async def cluster(tmp_path: Path):
    api = ApiServer()
    await api.start()
    kubeconfig = tmp_path / "k"
    api.kubeconfig(kubeconfig)
    await prepare(kubeconfig)
    replicas = []

    async def replica(**kw):
        # Hand-made reviews about Nodes the API server does not store: the check of a review against
        # the stored Node (tests/webhook/test_forged_reviews.py) is off here.
        r = await start_replica(kubeconfig, **{"verify_reviews": False, **kw})
        replicas.append(r)
        return r

    try:
        yield api, replica
    finally:
        for r in replicas:
            await r.stop()
        await api.stop()


async def occupy(r, bim_prefix: str = "a3af") -> None:
    """An existing BIM named after prefix a3af: the prefix is taken (a BIM's name ends in its disk's
    UUID prefix, `GetBackingImageManagerName`, types/types.go:385 @v1.7.2)."""
    kube = Kube(r.api_client)
    await kube.create(BIMS, LONGHORN_NS, {
        "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImageManager",
        "metadata": {"name": f"backing-image-manager-5ae6-{bim_prefix}",
                     "labels": {"longhorn.io/disk-uuid": f"{bim_prefix}57ea-8353-4200-a67e-6939ff4dcecf",
                                "longhorn.io/node": "worker-9"}},
        "spec": {"diskUUID": f"{bim_prefix}57ea-8353-4200-a67e-6939ff4dcecf", "nodeID": "worker-9",
                 "diskPath": "/mnt/x", "image": "longhornio/backing-image-manager:v1.7.2", "backingImages": {}}})
    await until(lambda: bim_prefix in r.index.occupied())


async def until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition never held")


async def post(r, doc: dict | bytes, *, hostname: str = f"{SERVICE}.{NAMESPACE}.svc") -> tuple[int, dict | str]:
    ctx = ssl.create_default_context(cadata=r.certs.ca_bundle_pem.decode())
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    async with aiohttp.ClientSession() as s:
        async with s.post(r.url, data=body, ssl=ctx, server_hostname=hostname,
                          headers={"Content-Type": "application/json"}) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


def patch_of(resp: dict) -> list[dict]:
    r = resp["response"]
    return json.loads(base64.b64decode(r["patch"])) if "patch" in r else []


async def test_sample_is_rewritten_with_a_free_prefix_and_a_record(cluster, sample):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    doc = review(sample)
    code, resp = await post(r, doc)
    assert code == 200 and resp["apiVersion"] == "admission.k8s.io/v1" and resp["kind"] == "AdmissionReview"
    body = resp["response"]
    assert body["uid"] == doc["request"]["uid"] and body["allowed"] is True and body["patchType"] == "JSONPatch"
    ops = patch_of(resp)
    assert ops[0]["op"] == "replace" and ops[0]["path"] == "/status/diskStatus/disk-nvme2/diskUUID"
    new = ops[0]["value"]
    assert new[:4] not in r.index.occupied() - {new[:4]} and new[:4] != "a3af"
    conds = {c["type"]: c for c in ops[1]["value"]}
    assert conds["Ready"]["status"] == conds["Schedulable"]["status"] == "False"
    assert conds["Ready"]["reason"] == "BimguardUUIDRewrite" and "bimguard" in conds["Ready"]["message"]
    assert any(new in w for w in body["warnings"])
    assert list(body["auditAnnotations"].values()) == [f"disk-nvme2: {SAMPLE_UUID} -> {new}"]
    kube = Kube(r.api_client)
    rec = await kube.get(REWRITES, NAMESPACE, records.record_name("worker-1", "disk-nvme2", SAMPLE_UUID))
    assert (rec["spec"]["newUUID"], rec["spec"]["diskPath"], rec["spec"]["diskName"]) == (new, "/mnt/nvme2", "disk-nvme2")
    claim = await kube.get(CLAIMS, NAMESPACE, new[:4])
    assert claim["spec"]["uuid"] == new and claim["spec"]["record"] == rec["metadata"]["name"]


async def test_retries_get_the_same_answer_and_one_record(cluster, sample):
    api, replica = cluster
    r1, r2 = await replica(), await replica()
    await occupy(r1)
    await until(lambda: "a3af" in r2.index.occupied())
    answers = [patch_of((await post(r, review(sample)))[1])[0]["value"] for r in (r1, r2, r1)]
    assert len(set(answers)) == 1
    recs = await Kube(r1.api_client).items(REWRITES, NAMESPACE)
    assert len(recs) == 1
    claims = [c for c in await Kube(r1.api_client).items(CLAIMS, NAMESPACE) if c["spec"]["record"]]
    assert [c["metadata"]["name"] for c in claims] == [answers[0][:4]]  # no claim leaked by the retries


async def test_dry_run_gets_the_patch_without_side_effects(cluster, sample):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    code, resp = await post(r, review(sample, dry_run=True))
    assert code == 200 and patch_of(resp)[0]["value"][:4] != "a3af"
    kube = Kube(r.api_client)
    assert await kube.items(REWRITES, NAMESPACE) == [] and await kube.items(CLAIMS, NAMESPACE) == []


async def test_disk_names_are_escaped_per_rfc6901(cluster, sample):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    code, resp = await post(r, review(sample, disk="nvme/2~x"))
    assert [op["path"] for op in patch_of(resp)] == ["/status/diskStatus/nvme~12~0x/diskUUID",
                                                     "/status/diskStatus/nvme~12~0x/conditions"]


async def test_unique_and_routine_writes_pass_untouched(cluster, sample):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    code, resp = await post(r, review(sample, disk_uuid="77aa91c2-5e0b-4c1f-8d7a-2b6c9e4f1a03"))
    assert code == 200 and "patch" not in resp["response"] and resp["response"]["allowed"]
    routine = review(sample)
    routine["request"]["oldObject"]["status"]["diskStatus"]["disk-nvme2"] = \
        routine["request"]["object"]["status"]["diskStatus"]["disk-nvme2"]
    code, resp = await post(r, routine)
    assert "patch" not in resp["response"]
    main_resource = review(sample)
    del main_resource["request"]["subResource"]
    code, resp = await post(r, main_resource)
    assert "patch" not in resp["response"] and resp["response"]["allowed"]


async def test_bad_requests_get_clear_errors_never_a_deny(cluster, sample):
    api, replica = cluster
    r = await replica()
    code, text = await post(r, b"{not json")
    assert code == 400 and "not JSON" in text
    wrong = review(sample)
    wrong["apiVersion"] = "admission.k8s.io/v1beta1"
    code, text = await post(r, wrong)
    assert code == 400 and "admission.k8s.io/v1" in text
    code, text = await post(r, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
    assert code == 400 and "request.uid" in text
    big = review(sample)
    big["request"]["object"]["metadata"]["annotations"] = {"x": "y" * (7 * 1024 * 1024)}
    code, _ = await post(r, big)
    assert code == 413


async def test_two_replicas_admitting_the_same_natural_prefix_at_once(cluster, sample):
    api, replica = cluster
    r1, r2 = await replica(), await replica()
    for i in range(8):
        prefix = f"{0xb000 + i:04x}"
        a = review(sample, disk_uuid=f"{prefix}0001-0000-4000-8000-000000000001", disk=f"race-{i}-a", node="worker-a")
        b = review(sample, disk_uuid=f"{prefix}0002-0000-4000-8000-000000000002", disk=f"race-{i}-b", node="worker-b")
        (_, ra), (_, rb) = await asyncio.gather(post(r1, a), post(r2, b))
        patched = [p for p in (patch_of(ra), patch_of(rb)) if p]
        assert len(patched) == 1, (i, ra, rb)  # exactly one of them keeps the natural prefix
        assert patched[0][0]["value"][:4] != prefix


async def test_a_disk_holding_data_is_blocked_with_an_event(cluster, sample):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    kube = Kube(r.api_client)
    # A re-created Node re-records an old UUID that replicas still use (Longhorn records the UUID the
    # existing cfg holds, controller/node_controller.go:745 @v1.7.2).
    await kube.create(REPLICAS, LONGHORN_NS, {
        "apiVersion": "longhorn.io/v1beta2", "kind": "Replica",
        "metadata": {"name": "pvc-1-r-aaaa", "labels": {"longhorndiskuuid": SAMPLE_UUID, "longhornnode": "worker-1"}},
        "spec": {"nodeID": "worker-1", "diskID": SAMPLE_UUID, "diskPath": "/mnt/nvme2", "volumeName": "pvc-1"}})
    await until(lambda: r.index.dependents("worker-1", SAMPLE_UUID).replicas)
    code, resp = await post(r, review(sample))
    assert code == 200 and "patch" not in resp["response"] and resp["response"]["allowed"]
    rec = await kube.get(REWRITES, NAMESPACE, records.record_name("worker-1", "disk-nvme2", SAMPLE_UUID))
    assert rec["status"]["phase"] == "Blocked" and rec["spec"]["newUUID"] == "" and "1 replica" in rec["spec"]["reason"]
    events = [e for e in await kube.items(EVENTS, LONGHORN_NS) if e["reason"] == "DiskUUIDCollision"]
    assert len(events) == 1 and events[0]["involvedObject"]["kind"] == "Node" and events[0]["type"] == "Warning"
    await post(r, review(sample))  # a retry neither duplicates the Event nor the record
    assert len([e for e in await kube.items(EVENTS, LONGHORN_NS) if e["reason"] == "DiskUUIDCollision"]) == 1


async def _recorded_node(kube: Kube, name: str, disk_uuid: str, ready: bool, node_ready: bool = True) -> None:
    status = "True" if ready else "False"
    await kube.create(NODES, LONGHORN_NS, {
        "apiVersion": "longhorn.io/v1beta2", "kind": "Node", "metadata": {"name": name},
        "spec": {"disks": {"d": {"path": "/mnt/d", "diskType": "filesystem", "allowScheduling": True}}}})
    node = await kube.get(NODES, LONGHORN_NS, name)
    # Node-level conditions as every longhorn-manager writes them (controller/node_controller.go:1964
    # @v1.7.2); a node whose manager is down keeps its disks' last status, Ready=True included.
    node_cond = {"type": "Ready", "status": "True", "reason": "", "message": f"Node {name} is ready"} if node_ready \
        else {"type": "Ready", "status": "False", "reason": "ManagerPodDown",
              "message": f"Node {name} is down: manager pod longhorn-manager-{name} is not running"}
    node["status"] = {"conditions": [node_cond],
                      "diskStatus": {"d": {"diskUUID": disk_uuid, "diskType": "filesystem", "diskPath": "/mnt/d",
                                           "conditions": [{"type": "Ready", "status": status}]}}}
    await kube.replace_status(NODES, LONGHORN_NS, node)


@pytest.mark.parametrize("ready, node_ready, verdict", [(True, True, "rewritten"), (False, True, "blocked"),
                                                        (True, False, "blocked")])
async def test_a_cloned_disk_is_rewritten_unless_the_original_is_not_ready(cluster, sample, ready, node_ready, verdict):
    api, replica = cluster
    r = await replica()
    kube = Kube(r.api_client)
    await _recorded_node(kube, "worker-7", SAMPLE_UUID, ready, node_ready)
    # The original's data refers to the same UUID; the clone's node holds none of it.
    await until(lambda: r.index.disks_with_uuid(SAMPLE_UUID))
    code, resp = await post(r, review(sample))
    events = {e["reason"] for e in await kube.items(EVENTS, LONGHORN_NS)}
    if verdict == "rewritten":
        assert patch_of(resp)[0]["value"][:4] != SAMPLE_UUID[:4]
        assert "ClonedDiskUUID" in events
    else:
        assert "patch" not in resp["response"] and "DiskUUIDCollision" in events


async def test_not_ready_and_crds_missing_allow_without_patch(tmp_path, sample):
    api = ApiServer()
    await api.start()
    api.kubeconfig(tmp_path / "k")
    from tests.webhook.harness import ensure_namespace
    from bimguard.kube import api_client
    c = await api_client(str(tmp_path / "k"))
    await ensure_namespace(c)
    await c.close()
    r = await start_replica(tmp_path / "k", wait_ready=False, verify_reviews=False)
    try:
        await until(lambda: r.informers.missing)
        ctx = ssl.create_default_context(cadata=r.certs.ca_bundle_pem.decode())
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://127.0.0.1:{r.server.bound_port}/readyz", ssl=ctx,
                             server_hostname=f"{SERVICE}.{NAMESPACE}.svc") as resp:
                assert resp.status == 503 and "prefixclaims.bimguard.io/v1alpha1 is not served" in await resp.text()
            async with s.get(f"https://127.0.0.1:{r.server.bound_port}/healthz", ssl=ctx,
                             server_hostname=f"{SERVICE}.{NAMESPACE}.svc") as resp:
                assert resp.status == 200
        code, resp = await post(r, review(sample))
        assert code == 200 and resp["response"]["allowed"] and "patch" not in resp["response"]
        assert r.metrics.skipped.labels("index_not_ready")._value.get() == 1
    finally:
        await r.stop()
        await api.stop()


async def test_full_hash_longhorn_is_left_alone(cluster, sample):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    kube = Kube(r.api_client)
    await kube.create(Resource("longhorn.io", "v1beta2", "settings"), LONGHORN_NS, {
        "apiVersion": "longhorn.io/v1beta2", "kind": "Setting", "metadata": {"name": "current-longhorn-version"},
        "value": "v1.9.2"})
    await until(lambda: not r.index.prefix_naming)
    code, resp = await post(r, review(sample))
    assert "patch" not in resp["response"]
    assert r.metrics.skipped.labels("full_hash_bim_names")._value.get() == 1


async def test_past_the_deadline_the_review_is_allowed_unpatched(cluster, sample):
    api, replica = cluster
    r = await replica(deadline=0.5)
    await occupy(r)
    api.faults.latency(2.0, verbs="create", resource="bimguard.io/v1alpha1/prefixclaims")
    code, resp = await post(r, review(sample))  # without the deadline: a patch once the claim lands
    assert code == 200 and "patch" not in resp["response"]
    assert r.metrics.skipped.labels("deadline")._value.get() == 1


async def test_block_disks_are_never_rewritten(cluster, sample):
    # docs/design.md, invariant 7: a v2 disk's UUID is its SPDK lvstore's; it counts as occupied, never changes.
    api, replica = cluster
    r = await replica()
    await occupy(r)
    doc = review(sample)
    for obj in (doc["request"]["object"],):
        obj["status"]["diskStatus"]["disk-nvme2"]["diskType"] = "block"
        obj["spec"]["disks"]["disk-nvme2"]["diskType"] = "block"
    code, resp = await post(r, doc)
    assert code == 200 and resp["response"]["allowed"] and "patch" not in resp["response"]
    assert await Kube(r.api_client).items(REWRITES, NAMESPACE) == []


async def scrape(r) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{r.server.bound_metrics_port}/metrics") as resp:
            text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_metrics_count_every_review_by_code_outcome_and_latency(cluster, sample):
    api, replica = cluster
    r = await replica()
    await occupy(r)
    routine = review(sample)
    routine["request"]["object"]["status"]["diskStatus"]["disk-nvme2"]["diskUUID"] = ""
    assert (await post(r, routine))[0] == 200
    assert (await post(r, review(sample)))[0] == 200  # rewritten
    assert (await post(r, b"{not json"))[0] == 400
    big = review(sample)
    big["request"]["object"]["metadata"]["annotations"] = {"x": "y" * (7 * 1024 * 1024)}
    assert (await post(r, big))[0] == 413
    m = await scrape(r)
    hook = ("webhook", "/mutate")
    assert {code: m[("bimguard_webhook_requests_total", (("code", code), hook))] for code in ("200", "400", "413")} \
        == {"200": 2, "400": 1, "413": 1}
    assert m[("bimguard_admission_outcomes_total", (("outcome", "unchanged"),))] == 1
    assert m[("bimguard_admission_outcomes_total", (("outcome", "rewritten"),))] == 1
    assert m[("bimguard_webhook_requests_in_flight", (hook,))] == 0
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in m.items()
                     if name == "bimguard_webhook_latency_seconds_bucket")
    assert buckets[-1] == (float("inf"), 4) == (float("inf"), m[("bimguard_webhook_latency_seconds_count", (hook,))])
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert 0 < m[("bimguard_webhook_latency_seconds_sum", (hook,))] < 4 * 2.0
