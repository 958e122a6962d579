"""The simulated Longhorn reproduces the BIM-name collision and recovers like the KB.

The collision: two disks whose UUIDs share four characters want one BIM name (types/types.go:385
@v1.7.2) and the second create fails with AlreadyExists (controller/backing_image_controller.go:742-746
@v1.7.2).

Compared with the constructed sample set ``tests/fixtures/longhorn/samples/collision/`` (log line
format, BIM shape, stuck BackingImage/Replica shape).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition


@pytest.fixture
def samples(fixtures: Path) -> Path:
    return fixtures / "longhorn/samples/collision"


def _strip_time(line: str) -> str:
    return re.sub(r'^time="[^"]*" ', "", line)


def _sample_lines(samples: Path) -> list[str]:
    return [l for l in (samples / "longhorn-manager-log-excerpt.txt").read_text().splitlines() if l.startswith("time=")]


async def _bi(c: SimCluster, name: str) -> dict[str, Any]:
    assert c.kube is not None
    return await c.kube.get("backingimages", name)


async def _replica(c: SimCluster, name: str) -> dict[str, Any]:
    assert c.kube is not None
    return await c.kube.get("replicas", name)


async def test_forced_prefix_collision_blocks_second_bim_then_recovers(api: ApiServer, tmp_path: Path, samples: Path) -> None:
    c = SimCluster(api, tmp_path, nodes=["worker-a", "worker-b"], disks_per_node=1, seed=3, time_scale=0.01)
    # Both default disks draw a UUID with prefix c012 (the KB's pair), in creation order.
    c.uuids.force("c01200da-8a5c-4692-92e6-c4a983087951")
    c.uuids.force("c012eb76-f8eb-4ea1-b81d-472eac9d98bf")
    await c.start()
    try:
        await c.wait_until_ready(20)
        da = next(iter((await c.get_node("worker-a"))["spec"]["disks"]))
        db = next(iter((await c.get_node("worker-b"))["spec"]["disks"]))
        ua, ub = await c.disk_uuid("worker-a", da), await c.disk_uuid("worker-b", db)
        assert {ua, ub} == {"c01200da-8a5c-4692-92e6-c4a983087951", "c012eb76-f8eb-4ea1-b81d-472eac9d98bf"}
        bim = c.expected_bim_name(ua)
        assert bim == "backing-image-manager-5ae6-c012" == c.expected_bim_name(ub)

        # First copy on worker-a: BIM created, file ready.
        await c.create_backing_image("parrot", min_copies=1, disks_=[("worker-a", da)])

        async def copy_ready(u: str) -> bool:
            st = ((await _bi(c, "parrot")).get("status") or {}).get("diskFileStatusMap") or {}
            return (st.get(u) or {}).get("state") == "ready"

        await c.wait_for(lambda: copy_ready(ua), 10, "first copy ready")
        assert c.kube is not None
        existing = await c.kube.get("backingimagemanagers", bim)
        sample_bim = yaml.safe_load((samples / "backingimagemanager-existing.yaml").read_text())
        assert existing["metadata"]["labels"] == {**sample_bim["metadata"]["labels"], "longhorn.io/disk-uuid": ua,
                                                  "longhorn.io/node": "worker-a"}
        assert set(existing["spec"]) == set(sample_bim["spec"])
        assert existing["spec"]["diskUUID"] == ua and existing["spec"]["image"] == sample_bim["spec"]["image"]
        assert set(existing["status"]) >= {"backingImageFileMap", "currentState", "ownerID"}

        # A volume with replicas on both disks: the worker-b one needs the file on ub.
        r_a, r_b = await c.create_volume("pvc-6d1e2f3a", [("worker-a", da), ("worker-b", db)], backing_image="parrot")

        async def stuck() -> bool:
            rb = await _replica(c, r_b)
            cond = get_condition((rb.get("status") or {}).get("conditions"), "WaitForBackingImage")
            return cond.get("status") == "True" and any("Dropping Longhorn backing image" in l for l in c.all_log_lines())

        await c.wait_for(stuck, 15, "replica on worker-b stuck")
        await c.wait_for(lambda: _running(c, r_a), 10, "replica on worker-a running")
        bi = await _bi(c, "parrot")
        assert ub in bi["spec"]["diskFileSpecMap"] and ub not in (bi["status"].get("diskFileStatusMap") or {})
        assert ua in bi["status"]["diskFileStatusMap"]
        assert await c.kube.list("backingimagemanagers", f"longhorn.io/disk-uuid={ub}") == []
        assert [b["metadata"]["name"] for b in await c.kube.list("backingimagemanagers")] == [bim]
        rb = await _replica(c, r_b)
        cond = get_condition(rb["status"]["conditions"], "WaitForBackingImage")
        assert (cond["status"], cond["reason"], cond["message"]) == ("True", "Waiting", "")
        assert rb["status"]["currentState"] == "stopped" and rb["spec"]["desireState"] == "running"
        assert rb["metadata"]["labels"] == {"longhorn.io/backing-image": "parrot", "longhorndiskuuid": ub,
                                            "longhornnode": "worker-b", "longhornvolume": "pvc-6d1e2f3a"}
        # The Node looks healthy: Ready/Schedulable True, stuck replica counted (sample node-worker-b.yaml)
        nb = await c.get_node("worker-b")
        entry = nb["status"]["diskStatus"][db]
        assert get_condition(entry["conditions"], "Ready")["status"] == "True"
        assert r_b in entry["scheduledReplica"]

        # Log lines: same shape as the KB excerpt (time stripped, names substituted).
        lines = [_strip_time(l) for l in c.all_log_lines()]
        owner = bi["status"]["ownerID"]
        expect = [_strip_time(l).replace("c012eb76-f8eb-4ea1-b81d-472eac9d98bf", ub).replace("worker-a", owner)
                  for l in _sample_lines(samples)]
        creating, failed, waiting, dropping = expect
        assert creating in lines
        assert failed in lines
        waiting = waiting.replace("pvc-6d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6-r-0d9a2b7e", r_b)
        assert waiting in lines
        assert dropping in lines  # after maxRetries (3) in one burst

        # The stuck replica holds the volume in "attaching": Longhorn waits for every scheduled
        # replica to run before it starts the engine (volume_controller.go:1893-1896).
        vol = await c.kube.get("volumes", "pvc-6d1e2f3a")
        assert vol["status"]["state"] == "attaching" and not (await _replica(c, r_a))["spec"]["healthyAt"]

        # Recovery (KB option 2 in our words): give worker-b's disk a unique UUID in status and
        # cfg, then drop the stuck spec entry and the stuck replica; Longhorn attaches the volume
        # and replaces the replica by itself.
        new_ub = "d00d" + ub[4:]
        await c.set_disk_flags("worker-b", db, allow_scheduling=False)
        await c.set_status_disk_uuid("worker-b", db, new_ub)
        disks.replace_cfg_atomically(c.disk_dir("worker-b", db), disks.DiskConfig(db, new_ub))

        async def disk_ready() -> bool:
            e = (await c.get_node("worker-b"))["status"]["diskStatus"][db]
            return e["diskUUID"] == new_ub and get_condition(e["conditions"], "Ready")["status"] == "True"

        await c.wait_for(disk_ready, 10, "worker-b disk Ready under the new UUID")
        bi = await _bi(c, "parrot")
        del bi["spec"]["diskFileSpecMap"][ub]
        await c.kube.replace("backingimages", bi)
        await c.kube.delete("replicas", r_b)
        await c.set_disk_flags("worker-b", db, allow_scheduling=True)

        async def replaced() -> list[dict[str, Any]]:
            reps = [r for r in await c.kube.list("replicas", "longhornvolume=pvc-6d1e2f3a") if r["spec"]["healthyAt"]]
            return reps if len(reps) == 2 else []

        reps = await c.wait_for(replaced, 20, "both replicas healthy")
        assert sorted((r["spec"]["nodeID"], r["spec"]["diskID"]) for r in reps) == [("worker-a", ua), ("worker-b", new_ub)]
        assert await copy_ready(new_ub)
        names = sorted(b["metadata"]["name"] for b in await c.kube.list("backingimagemanagers"))
        assert names == sorted([bim, c.expected_bim_name(new_ub)])
    finally:
        await c.stop()


async def _running(c: SimCluster, name: str) -> bool:
    r = await _replica(c, name)
    return (r.get("status") or {}).get("currentState") == "running"


async def test_eviction_cannot_drain_the_stuck_copy(api: ApiServer, tmp_path: Path) -> None:
    """On the colliding disk Longhorn flags the replica for eviction but never the
    backing-image copy, because eviction only looks at ``status.diskFileStatusMap``."""
    import asyncio

    c = SimCluster(api, tmp_path, nodes=["worker-a", "worker-b"], disks_per_node=1, seed=3, time_scale=0.01)
    c.uuids.force("c012")
    c.uuids.force("c012")
    await c.start()
    try:
        await c.wait_until_ready(20)
        da = next(iter((await c.get_node("worker-a"))["spec"]["disks"]))
        db = next(iter((await c.get_node("worker-b"))["spec"]["disks"]))
        ua, ub = await c.disk_uuid("worker-a", da), await c.disk_uuid("worker-b", db)
        assert ua[:4] == ub[:4] == "c012" and ua != ub
        await c.create_backing_image("parrot", disks_=[("worker-a", da)])
        _, r_b = await c.create_volume("vol", [("worker-a", da), ("worker-b", db)], backing_image="parrot")

        async def stuck() -> bool:
            bi = await _bi(c, "parrot")
            return ub in bi["spec"]["diskFileSpecMap"] and any("already exists" in l for l in c.all_log_lines())

        await c.wait_for(stuck, 15, "collision")
        await c.set_disk_flags("worker-b", db, allow_scheduling=False, eviction_requested=True)

        async def flagged() -> bool:
            return (await _replica(c, r_b))["spec"]["evictionRequested"] is True

        await c.wait_for(flagged, 10, "stuck replica flagged for eviction")
        await asyncio.sleep(0.5)  # ~50 Longhorn seconds of syncs
        bi = await _bi(c, "parrot")
        assert bi["spec"]["diskFileSpecMap"][ub] == {"evictionRequested": False}
        assert ub not in (bi["status"].get("diskFileStatusMap") or {})
        # The volume never attached (its stuck replica never ran), so nothing is rebuilt and
        # nothing is deleted: eviction does not drain a stuck replica either.
        assert await _replica(c, r_b)
        assert len(await c.kube.list("replicas", "longhornvolume=vol")) == 2
        assert not any("Creating one more replica for eviction" in l for l in c.all_log_lines())
    finally:
        await c.stop()
