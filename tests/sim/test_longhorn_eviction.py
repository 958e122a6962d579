"""Eviction as Longhorn does it, judged from the emulator's own history of stored writes.

Each test states the Longhorn behaviour it pins (lm = longhorn-manager, v1.7.2 unless a tag is
named) and fails on an emulator that deletes an evicted replica early, drains what Longhorn never
drains, or rebuilds where Longhorn would not.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bimguard.sim.apiserver import ApiServer
from bimguard.sim.history import History
from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition

TS = 0.01  # a 30 s Longhorn period is 0.3 s


async def _volume(c: SimCluster, name: str) -> dict[str, Any]:
    assert c.kube is not None
    return await c.kube.get("volumes", name)


async def _replicas(c: SimCluster, volume: str) -> list[dict[str, Any]]:
    assert c.kube is not None
    return await c.kube.list("replicas", f"longhornvolume={volume}")


async def _healthy(c: SimCluster, volume: str, nodes: list[str] | None = None) -> bool:
    v = await _volume(c, volume)
    if (v.get("status") or {}).get("robustness") != "healthy":
        return False
    if nodes is None:
        return True
    reps = await _replicas(c, volume)
    return sorted(r["spec"]["nodeID"] for r in reps) == sorted(nodes) and all(r["spec"]["healthyAt"] for r in reps)


def _first_disk(node: dict[str, Any]) -> str:
    return next(iter(node["spec"]["disks"]))


async def test_evicted_replica_is_deleted_only_after_its_replacement_is_healthy(api: ApiServer, tmp_path: Path) -> None:
    """lm volume_controller.go:560-588 (one more replica for eviction), 1065-1133 (the evicted one
    goes only when there are more healthy replicas than numberOfReplicas)."""
    history = History(api.store, "replicas")
    c = SimCluster(api, tmp_path, nodes=3, disks_per_node=1, seed=41, time_scale=TS, rebuild_seconds=30)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d = {n: _first_disk(await c.get_node(n)) for n in c.node_names}
        r1, r2 = await c.create_volume("vol", [("worker-1", d["worker-1"]), ("worker-2", d["worker-2"])])
        await c.wait_for(lambda: _healthy(c, "vol", ["worker-1", "worker-2"]), 20, "vol healthy")
        evicted_dir = c.disk_dir("worker-1", d["worker-1"]) / "replicas" / \
            (await c.kube.get("replicas", r1))["spec"]["dataDirectoryName"]
        assert (evicted_dir / disks.VOLUME_META).is_file()

        await c.set_disk_flags("worker-1", d["worker-1"], allow_scheduling=False, eviction_requested=True)
        await c.wait_for(lambda: _healthy(c, "vol", ["worker-2", "worker-3"]), 30, "replica moved to worker-3")
        [new] = [r["metadata"]["name"] for r in await _replicas(c, "vol") if r["spec"]["nodeID"] == "worker-3"]

        healthy_at = history.first("replicas", new, lambda o: bool(o["spec"].get("healthyAt")))
        deleted_at = history.deletion_requested("replicas", r1)
        assert healthy_at is not None and deleted_at is not None
        assert healthy_at < deleted_at, "the evicted replica went before its replacement was healthy"
        # Redundancy never dropped: at every stored change at least two healthy replicas were left.
        live: dict[str, dict[str, Any]] = {}
        for ch in history.of("replicas"):
            if ch.type == "DELETED" or ch.obj["metadata"].get("deletionTimestamp"):
                live.pop(ch.name, None)
            else:
                live[ch.name] = ch.obj
            if ch.rv > healthy_at:
                assert sum(1 for r in live.values() if r["spec"].get("healthyAt")) >= 2, ch
        assert not evicted_dir.exists()  # its owner removed the data (replica_controller.go:254-285)
        assert any('msg="Creating one more replica for eviction"' in line for line in c.all_log_lines())
        assert any(f'msg="Evicted replica {r1} in disk' in line for line in c.all_log_lines())
        assert r2 in {r["metadata"]["name"] for r in await _replicas(c, "vol")}
    finally:
        history.close()
        await c.stop()


async def test_a_rebuild_that_outlasts_the_wait_keeps_the_evicted_replica_until_it_ends(api: ApiServer, tmp_path: Path) -> None:
    """A rebuild may run for as long as long-grpc-timeout allows (24 h by default; lm
    engine_controller.go:1859-1863,1949, types/setting.go:1266-1277): its replacement stays `WO`
    without `healthyAt`, so the evicted replica is kept (volume_controller.go:1065-1133) and no
    second replacement is made (560-588). Made short again, the rebuild that was running ends and
    the eviction completes."""
    history = History(api.store, "replicas")
    c = SimCluster(api, tmp_path, nodes=3, disks_per_node=1, seed=44, time_scale=TS)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d = {n: _first_disk(await c.get_node(n)) for n in c.node_names}
        r1, _ = await c.create_volume("vol", [("worker-1", d["worker-1"]), ("worker-2", d["worker-2"])])
        await c.wait_for(lambda: _healthy(c, "vol", ["worker-1", "worker-2"]), 20, "vol healthy")
        c.set_rebuild_seconds(10**9)
        await c.set_disk_flags("worker-1", d["worker-1"], allow_scheduling=False, eviction_requested=True)

        async def rebuilding() -> bool:
            engine = (await c.kube.list("engines", "longhornvolume=vol"))[0]
            return "WO" in ((engine.get("status") or {}).get("replicaModeMap") or {}).values()

        await c.wait_for(rebuilding, 20, "the replacement rebuilding")
        await asyncio.sleep(100 * TS)  # ~100 Longhorn seconds (a loaded machine only makes it fewer)
        reps = await _replicas(c, "vol")
        assert r1 in {r["metadata"]["name"] for r in reps} and len(reps) == 3
        assert [r["spec"].get("healthyAt") for r in reps if r["spec"]["nodeID"] == "worker-3"] == [""]
        assert history.deletion_requested("replicas", r1) is None

        c.set_rebuild_seconds(1)
        await c.wait_for(lambda: _healthy(c, "vol", ["worker-2", "worker-3"]), 30, "the eviction completed")
        added = [ch.name for ch in history.of("replicas") if ch.type == "ADDED"]
        assert len(added) == 3  # the volume's two and one replacement: the one whose rebuild was slow
    finally:
        history.close()
        await c.stop()


async def test_detached_volume_is_attached_for_eviction_and_detached_after(api: ApiServer, tmp_path: Path) -> None:
    """lm volume_eviction_controller.go:161-210 (a volume-eviction-controller ticket while a replica
    is evicting), volume_controller.go:2247 (replacements only while attached)."""
    history = History(api.store, "volumes", "volumeattachments", "replicas")
    c = SimCluster(api, tmp_path, nodes=3, disks_per_node=1, seed=42, time_scale=TS)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d = {n: _first_disk(await c.get_node(n)) for n in c.node_names}
        await c.create_volume("vol", [("worker-1", d["worker-1"]), ("worker-2", d["worker-2"])])
        await c.wait_for(lambda: _healthy(c, "vol"), 20, "vol healthy")
        await c.set_attachment("vol", None)

        async def detached() -> bool:
            return (await _volume(c, "vol"))["status"]["state"] == "detached"

        await c.wait_for(detached, 20, "vol detached")
        mark = api.store.resource_version
        await asyncio.sleep(0.3)
        assert len(await _replicas(c, "vol")) == 2  # nothing is rebuilt while detached

        await c.set_disk_flags("worker-1", d["worker-1"], allow_scheduling=False, eviction_requested=True)

        async def moved_and_detached() -> bool:
            reps = await _replicas(c, "vol")
            return await detached() and sorted(r["spec"]["nodeID"] for r in reps) == ["worker-2", "worker-3"]

        await c.wait_for(moved_and_detached, 30, "replica moved, volume detached again")
        tickets = [set(((ch.obj.get("spec") or {}).get("attachmentTickets") or {}))
                   for ch in history.of("volumeattachments", "vol") if ch.rv > mark]
        assert {"volume-eviction-controller-vol"} in tickets and tickets[-1] == set()
        states = [ch.obj["status"].get("state") for ch in history.of("volumes", "vol") if ch.rv > mark and ch.obj.get("status")]
        assert "attached" in states and states[-1] == "detached"
        created = [ch for ch in history.of("replicas") if ch.type == "ADDED" and ch.rv > mark]
        [attached_at] = [ch.rv for ch in history.of("volumes", "vol")
                         if ch.rv > mark and (ch.obj.get("status") or {}).get("state") == "attached"][:1]
        assert created and all(ch.rv > attached_at for ch in created), "a replacement was created while detached"
    finally:
        history.close()
        await c.stop()


async def _stuck_rebuild(c: SimCluster) -> tuple[dict[str, str], str]:
    """A healthy, attached volume (backing image, replicas on worker-1 and worker-2) that wants a
    third replica which can only go to worker-3, whose disk collides with worker-1's: the third
    replica waits for its backing-image copy for ever (never healthy, never failed)."""
    d = {n: _first_disk(await c.get_node(n)) for n in c.node_names}
    prefix = (await c.disk_uuid("worker-1", d["worker-1"]))[:4]
    await c.set_disk_flags("worker-3", d["worker-3"], allow_scheduling=False)
    await c.add_disk("worker-3", "disk-c", force_uuid=prefix)
    d["worker-3"] = "disk-c"
    await c.wait_until_ready(20)
    await c.create_backing_image("img", min_copies=1, disks_=[("worker-1", d["worker-1"])])
    await c.create_volume("vol", [("worker-1", d["worker-1"]), ("worker-2", d["worker-2"])], backing_image="img")
    await c.wait_for(lambda: _healthy(c, "vol", ["worker-1", "worker-2"]), 20, "vol healthy")
    assert c.kube is not None
    v = await c.kube.get("volumes", "vol")
    v["spec"]["numberOfReplicas"] = 3
    await c.kube.replace("volumes", v)

    async def stuck() -> str | None:
        for r in await _replicas(c, "vol"):
            cond = get_condition((r.get("status") or {}).get("conditions"), "WaitForBackingImage")
            if r["spec"]["nodeID"] == "worker-3" and cond.get("status") == "True":
                return str(r["metadata"]["name"])
        return None

    return d, await c.wait_for(stuck, 20, "the third replica waiting for its backing image")


async def test_no_replacement_while_a_never_healthy_replica_exists(api: ApiServer, tmp_path: Path) -> None:
    """lm volume_controller.go:567-575: EvictReplicas creates nothing while a replica that has
    neither healthyAt nor failedAt exists, so the evicting healthy replica stays."""
    c = SimCluster(api, tmp_path, nodes=3, disks_per_node=1, seed=43, time_scale=TS)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d, stuck = await _stuck_rebuild(c)
        before = {r["metadata"]["name"] for r in await _replicas(c, "vol")}
        await c.set_disk_flags("worker-2", d["worker-2"], allow_scheduling=False, eviction_requested=True)

        async def flagged() -> bool:
            return any(r["spec"]["nodeID"] == "worker-2" and r["spec"]["evictionRequested"] for r in await _replicas(c, "vol"))

        await c.wait_for(flagged, 10, "worker-2's replica flagged")
        await asyncio.sleep(1.0)  # ~100 Longhorn seconds of syncs
        assert {r["metadata"]["name"] for r in await _replicas(c, "vol")} == before
        assert not any("Creating one more replica for eviction" in line for line in c.all_log_lines())
        assert stuck in before
    finally:
        await c.stop()


async def test_a_stuck_never_healthy_replica_is_not_drained_by_eviction(api: ApiServer, tmp_path: Path) -> None:
    """The stuck replica is flagged, but only the clean-up of *extra healthy* replicas deletes an
    evicting one (lm volume_controller.go:1065-1072): with 2 healthy of 3 wanted it stays."""
    c = SimCluster(api, tmp_path, nodes=3, disks_per_node=1, seed=44, time_scale=TS)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d, stuck = await _stuck_rebuild(c)
        await c.set_disk_flags("worker-3", d["worker-3"], allow_scheduling=False, eviction_requested=True)

        async def flagged() -> bool:
            assert c.kube is not None
            return bool((await c.kube.get("replicas", stuck))["spec"]["evictionRequested"])

        await c.wait_for(flagged, 10, "the stuck replica flagged")
        await asyncio.sleep(1.0)
        assert c.kube is not None
        r = await c.kube.get("replicas", stuck)
        assert not r["metadata"].get("deletionTimestamp") and not r["spec"]["healthyAt"] and not r["spec"]["failedAt"]
        assert len(await _replicas(c, "vol")) == 3
    finally:
        await c.stop()


async def test_no_disk_fits_the_replacement_stalls_with_longhorns_reason(api: ApiServer, tmp_path: Path) -> None:
    """Hard node anti-affinity (replica-soft-anti-affinity false, the default) and no free node:
    no replica is created, the volume says why (lm volume_controller.go:2312-2325, 3658-3669), and
    the evicting replica stays."""
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=1, seed=45, time_scale=TS)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d = {n: _first_disk(await c.get_node(n)) for n in c.node_names}
        r1, r2 = await c.create_volume("vol", [("worker-1", d["worker-1"]), ("worker-2", d["worker-2"])])
        await c.wait_for(lambda: _healthy(c, "vol"), 20, "vol healthy")
        await c.set_disk_flags("worker-1", d["worker-1"], allow_scheduling=False, eviction_requested=True)

        async def stalled() -> dict[str, Any] | None:
            cond = get_condition((await _volume(c, "vol"))["status"].get("conditions"), "Scheduled")
            return dict(cond) if cond.get("status") == "False" else None

        cond = await c.wait_for(stalled, 20, "Scheduled=False")
        assert cond["reason"] == "ReplicaSchedulingFailure"
        assert cond["message"].startswith("precheck new replica failed;")
        await asyncio.sleep(0.5)
        assert {r["metadata"]["name"] for r in await _replicas(c, "vol")} == {r1, r2}
    finally:
        await c.stop()


async def test_a_data_source_that_never_transferred_is_never_drained(tmp_path: Path) -> None:
    """lm backing_image_data_source_controller.go:402-406: while the file is not transferred the
    data source keeps its disk in the BackingImage's spec, and it moves only when its disk is not
    ready (backing_image_controller.go:660-683): eviction cannot drain it. (Run on v1.9.1: on
    v1.7.2-v1.9.0 the eviction can also crash the manager here, since the clean-up drops the
    non-ready evicting copy from spec while the data source's status entry stays, the state of
    test_longhorn_crash.py.)"""
    api = ApiServer(longhorn_version="v1.9.1")
    await api.start()
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=1, seed=46, time_scale=TS, longhorn_version="v1.9.1")
    await c.start()
    try:
        await c.wait_until_ready(20)
        d = {n: _first_disk(await c.get_node(n)) for n in c.node_names}
        u1 = await c.disk_uuid("worker-1", d["worker-1"])
        await c.create_backing_image("img", disks_=[("worker-1", d["worker-1"])], url="http://images.invalid/disk.raw")
        assert c.kube is not None

        async def failed() -> dict[str, Any] | None:
            bids = await c.kube.get_or_none("backingimagedatasources", "img")
            return bids if bids and (bids.get("status") or {}).get("currentState") == "failed" else None

        await c.wait_for(failed, 10, "download failed")
        await c.set_disk_flags("worker-1", d["worker-1"], allow_scheduling=False, eviction_requested=True)
        await asyncio.sleep(1.0)
        bids = await c.kube.get("backingimagedatasources", "img")
        assert bids["spec"]["diskUUID"] == u1 and bids["spec"]["fileTransferred"] is False

        async def entry_back() -> bool:  # the clean-up drops it, the data source puts it back: churn
            return u1 in (await c.kube.get("backingimages", "img"))["spec"]["diskFileSpecMap"]

        await c.wait_for(entry_back, 5, "the data source's disk back in the spec")
        assert c.crashes == []
    finally:
        await c.stop()
        await api.stop()


async def test_a_running_replica_does_not_re_add_its_backing_image_entry(api: ApiServer, tmp_path: Path) -> None:
    """lm replica_controller.go:407-446 is only reached from CreateInstance: a replica that already
    runs never puts its disk back into the BackingImage's spec."""
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=1, seed=47, time_scale=TS)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d = {n: _first_disk(await c.get_node(n)) for n in c.node_names}
        u2 = await c.disk_uuid("worker-2", d["worker-2"])
        await c.create_backing_image("img", min_copies=1, disks_=[("worker-1", d["worker-1"])])
        await c.create_volume("vol", [("worker-2", d["worker-2"])], backing_image="img")
        await c.wait_for(lambda: _healthy(c, "vol"), 20, "vol healthy")
        assert c.kube is not None
        bi = await c.kube.get("backingimages", "img")
        assert u2 in bi["spec"]["diskFileSpecMap"]  # put there while the replica started
        del bi["spec"]["diskFileSpecMap"][u2]
        await c.kube.replace("backingimages", bi)
        await asyncio.sleep(1.0)
        assert u2 not in (await c.kube.get("backingimages", "img"))["spec"]["diskFileSpecMap"]
    finally:
        await c.stop()


@pytest.mark.parametrize("version,text", [("v1.7.2", "The backing image"), ("v1.9.1", "backing image")])
async def test_starting_replica_on_a_not_ready_disk_fails_with_an_event_not_a_condition(tmp_path: Path, version: str,
                                                                                         text: str) -> None:
    """lm replica_controller.go:422-428 (CanPutBackingImageOnDisk false) returns an error: a
    FailedStarting Event, and the status with GetBackingImageFailed is never written (289-292).
    The message lost its capital in v1.7.4 and v1.9.0 (:427)."""
    api = ApiServer(longhorn_version=version)
    await api.start()
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=1, seed=48, time_scale=TS, longhorn_version=version)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d = {n: _first_disk(await c.get_node(n)) for n in c.node_names}
        u2 = await c.disk_uuid("worker-2", d["worker-2"])
        await c.create_backing_image("img", disks_=[("worker-1", d["worker-1"])])
        c.cfg_path("worker-2", d["worker-2"]).write_text("not json")  # NoDiskInfo: NotReady

        async def not_ready() -> bool:
            e = (await c.get_node("worker-2"))["status"]["diskStatus"][d["worker-2"]]
            return get_condition(e["conditions"], "Ready")["status"] == "False"

        await c.wait_for(not_ready, 10, "worker-2's disk NotReady")
        [r] = await c.create_volume("vol", [("worker-2", d["worker-2"])], backing_image="img")
        assert c.kube is not None

        async def event() -> list[dict[str, Any]]:
            evs = (await c.kube.core.list_namespaced_event("longhorn-system")).items
            return [e for e in evs if e.reason == "FailedStarting" and e.involved_object.name == r]

        [ev] = (await c.wait_for(event, 10, "FailedStarting"))[:1]
        assert ev.message == f"Error starting {r}: {text} img can not be put on the disk {u2}"
        rep = await c.kube.get("replicas", r)
        assert get_condition((rep.get("status") or {}).get("conditions"), "WaitForBackingImage").get("reason") != "GetBackingImageFailed"
        assert u2 not in (await c.kube.get("backingimages", "img"))["spec"]["diskFileSpecMap"]
    finally:
        await c.stop()
        await api.stop()
