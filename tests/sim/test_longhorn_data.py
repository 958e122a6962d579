"""Data-bearing behaviour of the simulated Longhorn: orphans after a UUID change, eviction on a
NotReady disk, disk re-connection.

Orphan names are recomputed here from the rule in lm v1.7.2 types/types.go:685 (sha256 of
"<node>-<diskName>-<diskPath>-<diskUUID>-<dataDir>"). Volume-level eviction is in
test_longhorn_eviction.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any


from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition


async def _get(c: SimCluster, plural: str, name: str) -> dict[str, Any] | None:
    assert c.kube is not None
    return await c.kube.get_or_none(plural, name)


async def _running(c: SimCluster, name: str) -> bool:
    r = await _get(c, "replicas", name)
    return bool(r) and (r.get("status") or {}).get("currentState") == "running"


async def test_uuid_change_turns_replica_dirs_into_orphans_that_auto_deletion_removes(api: ApiServer, tmp_path: Path) -> None:
    c = SimCluster(api, tmp_path, nodes=["worker-1"], disks_per_node=2, seed=5, time_scale=0.01)
    await c.start()
    try:
        await c.wait_until_ready(20)
        [r] = await c.create_volume("vol1", [("worker-1", "disk-1")])
        await c.wait_for(lambda: _running(c, r), 10, "replica running")
        rep = await _get(c, "replicas", r)
        assert rep is not None
        data_dir = tmp_path / "worker-1" / "mnt" / "disk1" / "replicas" / rep["spec"]["dataDirectoryName"]
        assert (data_dir / "volume.meta").is_file()
        assert c.kube is not None
        assert await c.kube.list("orphans") == []  # a matched directory is no orphan

        # Change the disk's UUID in status and cfg while the replica directory is still there.
        new = "0123" + (await c.disk_uuid("worker-1", "disk-1"))[4:]
        await c.set_status_disk_uuid("worker-1", "disk-1", new)
        disks.replace_cfg_atomically(c.disk_dir("worker-1", "disk-1"), disks.DiskConfig("disk-1", new))
        expected = "orphan-" + hashlib.sha256(
            f"worker-1-disk-1-/mnt/disk1-{new}-{rep['spec']['dataDirectoryName']}".encode()).hexdigest()

        async def cleanable_orphan() -> dict[str, Any] | None:
            o = await _get(c, "orphans", expected)
            if o and get_condition((o.get("status") or {}).get("conditions"), "DataCleanable").get("status") == "True":
                return o
            return None

        o = await c.wait_for(cleanable_orphan, 15, "orphan with DataCleanable=True")
        assert o["spec"]["parameters"] == {"DataName": rep["spec"]["dataDirectoryName"], "DiskName": "disk-1",
                                           "DiskPath": "/mnt/disk1", "DiskType": "filesystem", "DiskUUID": new}
        assert o["spec"]["nodeID"] == "worker-1" and o["metadata"]["labels"]["longhornnode"] == "worker-1"
        await asyncio.sleep(0.3)
        assert data_dir.is_dir()  # orphan-auto-deletion is false: data kept

        await c.set_setting("orphan-auto-deletion", "true")

        async def gone() -> bool:
            return not data_dir.exists() and await _get(c, "orphans", expected) is None

        await c.wait_for(gone, 15, "orphan and its data deleted")
    finally:
        await c.stop()


async def test_eviction_does_nothing_on_a_not_ready_disk(api: ApiServer, tmp_path: Path) -> None:
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=1, seed=9, time_scale=0.01)
    await c.start()
    try:
        await c.wait_until_ready(20)
        d1 = next(iter((await c.get_node("worker-1"))["spec"]["disks"]))
        [r1] = await c.create_volume("vol2", [("worker-1", d1)])
        await c.wait_for(lambda: _running(c, r1), 10, "replica running")
        u = await c.disk_uuid("worker-1", d1)
        await c.set_status_disk_uuid("worker-1", d1, "ffff" + u[4:])  # disk turns NotReady

        async def not_ready() -> bool:
            e = (await c.get_node("worker-1"))["status"]["diskStatus"][d1]
            return get_condition(e["conditions"], "Ready")["status"] == "False" and e["scheduledReplica"] == {}

        await c.wait_for(not_ready, 10, "NotReady with empty scheduledReplica")
        await c.set_disk_flags("worker-1", d1, allow_scheduling=False, eviction_requested=True)
        await asyncio.sleep(1.0)  # ~100 Longhorn seconds: several syncs and polls
        rep = await _get(c, "replicas", r1)
        assert rep is not None and rep["spec"]["evictionRequested"] is False
        assert c.kube is not None
        assert len(await c.kube.list("replicas", "longhornvolume=vol2")) == 1
    finally:
        await c.stop()


async def test_reconnected_disk_relinks_replicas_by_uuid(api: ApiServer, tmp_path: Path) -> None:
    """A disk moved to another node keeps its cfg; Longhorn re-records the old UUID there and
    rewrites the Replica's nodeID/diskPath (controller/node_controller.go:849-864 @v1.7.2,
    lh enhancements/20201106-disk-reconnection.md)."""
    import shutil

    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=2, seed=12, time_scale=0.01)
    await c.start()
    try:
        await c.wait_until_ready(20)
        u = await c.disk_uuid("worker-1", "disk-1")
        [r] = await c.create_volume("vol3", [("worker-1", "disk-1")])
        await c.wait_for(lambda: _running(c, r), 10, "replica running")
        await c.set_disk_flags("worker-1", "disk-1", allow_scheduling=False)
        # The disk is pulled out of worker-1 (its directory goes): NotReady, so Longhorn's
        # validator lets the entry go although a replica is scheduled there (storageScheduled is
        # zeroed on a NotReady disk, node_controller.go:821-823; validator.go:192-199).
        shutil.move(str(c.disk_dir("worker-1", "disk-1")), str(tmp_path / "worker-2" / "mnt" / "moved"))

        async def not_ready() -> bool:
            e = (await c.get_node("worker-1"))["status"]["diskStatus"]["disk-1"]
            return get_condition(e["conditions"], "Ready")["status"] == "False" and e["storageScheduled"] == 0

        await c.wait_for(not_ready, 10, "disk-1 NotReady on worker-1")
        await c.remove_disk("worker-1", "disk-1")
        await c.add_disk("worker-2", "disk-moved", "/mnt/moved", create_dir=False)
        await c.wait_until_ready(20)
        assert await c.disk_uuid("worker-2", "disk-moved") == u

        async def relinked() -> dict[str, Any] | None:
            rep = await _get(c, "replicas", r)
            if rep and rep["spec"]["nodeID"] == "worker-2" and rep["spec"]["diskPath"] == "/mnt/moved":
                return rep
            return None

        rep = await c.wait_for(relinked, 10, "replica re-linked")
        assert rep["metadata"]["labels"]["longhornnode"] == "worker-2"
        assert rep["metadata"]["labels"]["longhorndiskuuid"] == u
        e = (await c.get_node("worker-2"))["status"]["diskStatus"]["disk-moved"]
        assert r in e["scheduledReplica"]
    finally:
        await c.stop()
