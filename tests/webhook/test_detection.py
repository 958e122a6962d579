"""Continuous detection (webhook/detection.py): existing collision groups from the webhook's index,
as the gauge `bimguard_collision_groups{kind}` and one Warning Event per group on each affected
Longhorn Node.

First the watch over an index fed directly (what it computes, when it speaks), then the whole
thing in the emulator with a real webhook replica (tests/webhook/harness.py): a collision planted
while the webhook runs -- a re-recorded UUID, which matchConditions never send to the webhook --
shows up in the scraped gauge and as one Event per node; repairing it clears the gauge.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from bimguard.bim import SETTING_BIM_IMAGE, SETTING_VERSION
from bimguard.kube import AlreadyExists, Kube, KubeError
from bimguard.sim.apiserver import ApiServer
from tests.builders import bim, disk_entry, node, replica, setting
from tests.webhook.harness import LONGHORN_NS, prepare, register, start_replica
from webhook import detection
from webhook.detection import REASON_COLLISION, REASON_RESOLVED, CollisionWatch, event_name, group_id
from webhook.index import ClusterIndex
from webhook.metrics import Metrics

IMAGE = "longhornio/backing-image-manager:v1.7.2"
A1 = "1a2b0000-0000-4000-8000-000000000001"
A2 = "1a2b1111-1111-4111-8111-111111111111"
B1 = "3c4d0000-0000-4000-8000-000000000002"
C1 = "5e6f0000-0000-4000-8000-000000000003"
NODES = ("longhorn.io", "v1beta2", LONGHORN_NS, "nodes")


class FakeKube:
    """Records Events; a second create of a name is 409, as the API server answers."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.fail = False

    async def create(self, res: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise KubeError(503, "ServiceUnavailable", "down")
        name = body["metadata"]["name"]
        if name in self.events:
            raise AlreadyExists(409, "AlreadyExists", name)
        self.events[name] = body
        return body

    def of(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.events.values() if e["reason"] == reason]


def gauge(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("bimguard_collision_groups", {"kind": kind})


def seeded(*nodes: dict[str, Any], version: str = "v1.7.2") -> ClusterIndex:
    index = ClusterIndex()
    index.upsert("settings", setting(SETTING_VERSION, version))
    index.upsert("settings", setting(SETTING_BIM_IMAGE, IMAGE))
    for n in nodes:
        index.upsert("nodes", n)
    return index


def make_watch(index: ClusterIndex, *, leading: bool = True) -> tuple[CollisionWatch, Metrics, FakeKube]:
    metrics, kube = Metrics(), FakeKube()
    state = {"leading": leading}
    watch = CollisionWatch(index, metrics, kube, LONGHORN_NS, ready=lambda: None,  # type: ignore[arg-type]
                           leading=lambda: state["leading"], debounce=0.01)
    watch.state = state  # type: ignore[attr-defined]
    return watch, metrics, kube


# ------------------------------------------------------------------------------ the watch itself

async def test_a_group_is_counted_and_announced_once_per_node_with_the_scans_plan() -> None:
    index = seeded(node("worker-1", {"disk-1": disk_entry(A1, "/d1")}),
                   node("worker-2", {"disk-1": disk_entry(A2, "/d1"), "disk-2": disk_entry(B1, "/d2")}))
    index.upsert("replicas", replica("vol-r-1", "worker-2", A2))  # worker-2/disk-1 holds data: the keeper
    watch, metrics, kube = make_watch(index)
    await watch.evaluate()
    assert gauge(metrics, "prefix") == 1 and gauge(metrics, "duplicate-uuid") == 0
    warnings = kube.of(REASON_COLLISION)
    assert sorted(e["involvedObject"]["name"] for e in warnings) == ["worker-1", "worker-2"]
    (plan,) = watch.findings.plans  # the scan's own plan (bimguard.findings.analyze)
    gid = group_id(plan.group)
    assert {e["metadata"]["name"] for e in warnings} == {event_name("worker-1", gid), event_name("worker-2", gid)}
    message = warnings[0]["message"]
    assert "share the UUID prefix 1a2b" in message and "backing-image-manager-5ae6-1a2b" in message
    assert "keep worker-2/disk-1 (holds the most data (1 replica))" in message
    assert "regenerate worker-1/disk-1: holds no data" in message
    assert all(e["type"] == "Warning" and e["metadata"]["labels"][detection.LABEL_GROUP] == gid for e in warnings)

    # Resyncs, unrelated writes and re-evaluations announce nothing new and analyse nothing again.
    for _ in range(3):
        index.upsert("nodes", node("worker-1", {"disk-1": disk_entry(A1, "/d1", ready=False)}))
        await watch.evaluate()
    assert len(kube.events) == 2 and watch.analyses == 1 and watch.evaluations == 4


async def test_a_restarted_or_new_leader_does_not_announce_again() -> None:
    nodes = (node("worker-1", {"disk-1": disk_entry(A1, "/d1")}), node("worker-2", {"disk-1": disk_entry(A2, "/d1")}))
    first, _, kube = make_watch(seeded(*nodes))
    await first.evaluate()
    second, metrics, _ = make_watch(seeded(*nodes))
    second.kube = kube  # the same API server: the deterministic names exist already
    await second.evaluate()
    assert len(kube.events) == 2 and gauge(metrics, "prefix") == 1


async def test_only_the_leader_creates_events_and_a_new_leader_announces_what_is_current() -> None:
    index = seeded(node("worker-1", {"disk-1": disk_entry(A1, "/d1"), "disk-2": disk_entry(A2, "/d2")}))
    watch, metrics, kube = make_watch(index, leading=False)
    await watch.evaluate()
    assert gauge(metrics, "prefix") == 1 and kube.events == {}  # every replica exports the gauge
    watch.state["leading"] = True  # type: ignore[attr-defined]
    await watch.evaluate()  # what the leadership hook's poke leads to
    (event,) = kube.events.values()  # both disks on one node: one Event
    assert event["involvedObject"]["name"] == "worker-1"


async def test_repair_clears_the_gauge_and_says_so_once() -> None:
    index = seeded(node("worker-1", {"disk-1": disk_entry(A1, "/d1")}), node("worker-2", {"disk-1": disk_entry(A2, "/d1")}))
    watch, metrics, kube = make_watch(index)
    await watch.evaluate()
    index.upsert("nodes", node("worker-2", {"disk-1": disk_entry(C1, "/d1")}))  # the repair Job's new UUID
    await watch.evaluate()
    await watch.evaluate()
    assert gauge(metrics, "prefix") == 0 and watch.groups == {}
    resolved = kube.of(REASON_RESOLVED)
    assert sorted(e["involvedObject"]["name"] for e in resolved) == ["worker-1", "worker-2"]
    assert all(e["type"] == "Normal" for e in resolved) and len(kube.of(REASON_COLLISION)) == 2


async def test_cloned_disks_count_as_duplicate_uuid_and_a_group_that_grows_is_announced_again() -> None:
    index = seeded(node("worker-1", {"disk-1": disk_entry(A1, "/d1")}), node("worker-2", {"disk-1": disk_entry(A1, "/d1")}))
    watch, metrics, kube = make_watch(index)
    await watch.evaluate()
    assert gauge(metrics, "duplicate-uuid") == 1 and gauge(metrics, "prefix") == 0
    assert "cloned disks" in kube.of(REASON_COLLISION)[0]["message"]
    index.upsert("nodes", node("worker-3", {"disk-1": disk_entry(A2, "/d1")}))  # a third disk joins
    await watch.evaluate()
    assert gauge(metrics, "duplicate-uuid") == 1
    assert len(kube.of(REASON_COLLISION)) == 2 + 3  # the new group, on its three nodes
    assert kube.of(REASON_RESOLVED) == []  # the prefix still collides: nothing was resolved


async def test_block_disks_and_full_uuid_bim_names_are_not_collisions() -> None:
    block = node("worker-1", {"disk-1": disk_entry(A1, "/d1"), "blk": disk_entry(A2, "/dev/sdb", dtype="block")})
    watch, metrics, kube = make_watch(seeded(block))
    await watch.evaluate()
    assert gauge(metrics, "prefix") == 0 and kube.events == {} and watch.analyses == 0

    pair = (node("worker-1", {"disk-1": disk_entry(A1, "/d1")}), node("worker-2", {"disk-1": disk_entry(A2, "/d1")}))
    watch, metrics, kube = make_watch(seeded(*pair, version="v1.9.2"))  # BIMs named by the whole UUID
    await watch.evaluate()
    assert gauge(metrics, "prefix") == 0 and kube.events == {}
    assert watch.findings is not None and watch.findings.informational


async def test_the_owner_of_the_bim_keeps_its_uuid() -> None:
    index = seeded(node("worker-1", {"disk-1": disk_entry(A1, "/d1")}), node("worker-2", {"disk-1": disk_entry(A2, "/d1")}))
    index.upsert("backingimagemanagers", bim("backing-image-manager-5ae6-1a2b", "worker-2", A2, IMAGE))
    watch, _, kube = make_watch(index)
    await watch.evaluate()
    assert "keep worker-2/disk-1 (owns backing-image-manager-5ae6-1a2b)" in kube.of(REASON_COLLISION)[0]["message"]


async def test_failed_event_creates_are_retried_and_the_watch_waits_for_a_synced_index() -> None:
    index = seeded(node("worker-1", {"disk-1": disk_entry(A1, "/d1"), "disk-2": disk_entry(A2, "/d2")}))
    metrics, kube = Metrics(), FakeKube()
    kube.fail = True
    ready: dict[str, str | None] = {"why": "index not synced"}
    watch = CollisionWatch(index, metrics, kube, LONGHORN_NS, ready=lambda: ready["why"],  # type: ignore[arg-type]
                           debounce=0.02)
    watch.start()
    try:
        await asyncio.sleep(0.15)
        assert watch.evaluations == 0 and gauge(metrics, "prefix") is None  # nothing before the index is synced
        ready["why"] = None
        await until(lambda: gauge(metrics, "prefix") == 1)
        assert kube.events == {}
        kube.fail = False
        await until(lambda: len(kube.events) == 1)  # retried after the debounce, without an index change
        evaluations = watch.evaluations
        await asyncio.sleep(0.15)
        assert watch.evaluations == evaluations  # quiet once done
        index.upsert("nodes", node("worker-1", {"disk-1": disk_entry(A1, "/d1"), "disk-2": disk_entry(C1, "/d2")}))
        await until(lambda: gauge(metrics, "prefix") == 0)  # an index change pokes it
    finally:
        await watch.stop()


async def until(predicate: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


# ------------------------------------------------------------------------------ in the emulator


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def series(text: str, kind: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'bimguard_collision_groups{{kind="{kind}"}} '):
            return float(line.split()[-1])
    return None


async def test_a_collision_planted_while_the_webhook_runs_is_reported_and_its_repair_clears_it(
        api: ApiServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k"
    api.kubeconfig(kubeconfig)
    await prepare(kubeconfig)
    for s in (setting(SETTING_VERSION, "v1.7.2"), setting(SETTING_BIM_IMAGE, IMAGE)):
        api.store.create("longhorn.io/v1beta2/settings", s)
    for name, uuid in (("worker-1", A1), ("worker-2", B1)):
        n = node(name, {"disk-1": disk_entry(uuid, "/var/lib/longhorn")})
        status = n.pop("status")
        created = api.store.create("longhorn.io/v1beta2/nodes", n)
        api.store.update("longhorn.io/v1beta2/nodes", {**created, "status": status}, subresource="status")
    r = await start_replica(kubeconfig)
    await register(api, r)  # the webhook with its matchConditions, as installed
    watch = CollisionWatch(r.index, r.metrics, Kube(r.api_client), LONGHORN_NS, debounce=0.1,
                           ready=lambda: None if r.informers.ready else "index not synced")
    watch.start()
    co = client.CustomObjectsApi(r.api_client)
    port = r.server.bound_metrics_port
    try:
        await until(lambda: watch.evaluations > 0)
        assert series(await scrape(port), "prefix") == 0

        # Plant: worker-2's disk is re-recorded with a UUID of worker-1's prefix (a disk swapped
        # under Longhorn, a restored node): not a first-record, so the webhook is never asked.
        obj = await co.get_namespaced_custom_object(*NODES, "worker-2")
        obj["status"]["diskStatus"]["disk-1"]["diskUUID"] = A2
        await co.replace_namespaced_custom_object_status(*NODES, "worker-2", obj)
        counts = api.admission.counts
        assert counts[("longhorn.io/nodes/status UPDATE", "skipped disk-uuid-prefix.bimguard.io")] == 1
        assert counts[("longhorn.io/nodes/status UPDATE", "sent disk-uuid-prefix.bimguard.io")] == 0
        await until(lambda: gauge(r.metrics, "prefix") == 1)
        assert series(await scrape(port), "prefix") == 1 and series(await scrape(port), "duplicate-uuid") == 0

        def warnings() -> list[dict[str, Any]]:
            return [e for e in api.store.list("v1/events", LONGHORN_NS)[0] if e.get("reason") == REASON_COLLISION]

        await until(lambda: len(warnings()) == 2)
        by_node = {e["involvedObject"]["name"]: e for e in warnings()}
        assert sorted(by_node) == ["worker-1", "worker-2"]  # one Event on each affected Longhorn Node
        assert by_node["worker-2"]["involvedObject"]["uid"] == obj["metadata"]["uid"]

        # Routine writes go on (each pokes the watch): still one Event per node.
        for i in range(3):
            obj = await co.get_namespaced_custom_object(*NODES, "worker-1")
            obj["status"]["diskStatus"]["disk-1"]["storageAvailable"] = 1000 + i
            await co.replace_namespaced_custom_object_status(*NODES, "worker-1", obj)
        await asyncio.sleep(0.5)
        assert len(warnings()) == 2

        # Repair: worker-2's disk gets a UUID of its own in status.
        obj = await co.get_namespaced_custom_object(*NODES, "worker-2")
        obj["status"]["diskStatus"]["disk-1"]["diskUUID"] = C1
        await co.replace_namespaced_custom_object_status(*NODES, "worker-2", obj)
        await until(lambda: gauge(r.metrics, "prefix") == 0)
        assert series(await scrape(port), "prefix") == 0
        await until(lambda: len([e for e in api.store.list("v1/events", LONGHORN_NS)[0]
                                 if e.get("reason") == REASON_RESOLVED]) == 2)
        assert len(warnings()) == 2
    finally:
        await watch.stop()
        await r.stop()


def test_the_chart_lets_the_webhook_create_events_in_longhorns_namespace() -> None:
    # Events are all the watch writes; the chart's Role grants create/patch on them (tests/chart).
    import helm_python as helm
    import yaml

    with helm.Chart.load(Path(__file__).resolve().parents[2] / "charts" / "bimguard") as chart:
        out = chart.render({}, name="bg", namespace="bimguard-system", is_install=True)
    roles = [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text)
             if d and d.get("kind") == "Role" and d["metadata"].get("namespace") == "longhorn-system"]
    rules = [r for role in roles for r in role["rules"] if "events" in r.get("resources", [])]
    assert rules and "create" in rules[0]["verbs"]
