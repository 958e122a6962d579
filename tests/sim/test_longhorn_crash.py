"""The longhorn-manager panic of ``syncBackingImageEvictionRequested``, per release.

A BackingImage whose *status* still lists a disk UUID that its *spec* no longer has, on a node
where something is evicting, makes longhorn-manager dereference nil and exit (lm v1.7.2
controller/node_controller.go:1806 on the evicting branch, :1811 on the other; v1.8.1 guarded only
the latter, :1635 still panics; v1.9.0 :1680 likewise; v1.7.4, v1.8.2 and v1.9.1 check first,
v1.9.1 :1670-1689). The emulator reproduces the crash instead of skipping over it, and a test that
provokes it without saying so fails.

The state is built the way it arises: copies of two BackingImages on worker-1's disk-1, the disk
turns NotReady (its BIM goes ``unknown`` and keeps reporting the files), one BackingImage loses
the disk from its spec (its status entry stays: the status is rebuilt from every BIM that reports
the file, backing_image_controller.go:786-806), then eviction is requested on the node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn.cluster import LonghornCrashed, SimCluster
from bimguard.sim.longhorn.node_status import NIL_DEREFERENCE

TS = 0.01


async def _status_outlives_spec(c: SimCluster) -> str:
    assert c.kube is not None
    for bi in ("img", "img2"):
        await c.create_backing_image(bi, disks_=[("worker-1", "disk-1")])
    u1 = await c.disk_uuid("worker-1", "disk-1")

    async def ready() -> bool:
        for bi in ("img", "img2"):
            st = ((await c.kube.get("backingimages", bi)).get("status") or {}).get("diskFileStatusMap") or {}
            if (st.get(u1) or {}).get("state") != "ready":
                return False
        return True

    await c.wait_for(ready, 15, "both copies ready on disk-1")
    c.cfg_path("worker-1", "disk-1").write_text("{")  # NoDiskInfo: the BIM goes unknown, keeps its files

    async def unknown() -> bool:
        st = ((await c.kube.get("backingimages", "img")).get("status") or {}).get("diskFileStatusMap") or {}
        return (st.get(u1) or {}).get("state") == "unknown"

    await c.wait_for(unknown, 10, "copy unknown")
    bi = await c.kube.get("backingimages", "img")
    del bi["spec"]["diskFileSpecMap"][u1]
    await c.kube.replace("backingimages", bi)
    await asyncio.sleep(0.3)
    bi = await c.kube.get("backingimages", "img")
    assert u1 not in bi["spec"]["diskFileSpecMap"] and u1 in bi["status"]["diskFileStatusMap"]
    return u1


@pytest.mark.parametrize("version,evicting,site", [
    ("v1.7.2", "node", "node_controller.go:1806"),
    ("v1.7.2", "other-disk", "node_controller.go:1811"),
    ("v1.8.1", "node", "node_controller.go:1635"),
    ("v1.8.1", "other-disk", None),
    ("v1.9.1", "node", None),
])
async def test_status_entry_without_spec_entry_while_evicting(tmp_path: Path, version: str, evicting: str,
                                                               site: str | None) -> None:
    api = ApiServer(longhorn_version=version)
    await api.start()
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=2, seed=61, time_scale=TS, longhorn_version=version)
    await c.start()
    try:
        await c.wait_until_ready(20)
        u1 = await _status_outlives_spec(c)
        if evicting == "node":
            await c.set_node_flags("worker-1", allow_scheduling=False, eviction_requested=True)
        else:
            other = next(d for d in c.disks_of("worker-1") if d != "disk-1")
            await c.set_disk_flags("worker-1", other, allow_scheduling=False, eviction_requested=True)
        if site is None:
            await asyncio.sleep(1.0)  # ~3 monitor polls and many node syncs
            assert c.crashes == []
            if version == "v1.9.1":
                assert any(f"Evicting missing disk {u1} from backing image img. Will enqueue then resync the node worker-1"
                           in line for line in c.all_log_lines())
            return
        await c.wait_for(lambda: len(c.crashes) >= 2, 15, "the manager crash-looping")
        crashes = c.acknowledge_crashes()
        assert {(x.node, x.where, x.message) for x in crashes} == {("worker-1", site, NIL_DEREFERENCE)}
        assert f"panic: {NIL_DEREFERENCE}" in c.manager_log("worker-1") or "worker-1" not in c.managers
    finally:
        c.acknowledge_crashes() if site is not None else None
        await c.stop()
        await api.stop()


async def test_an_unacknowledged_crash_fails_the_test_that_caused_it(tmp_path: Path) -> None:
    api = ApiServer()
    await api.start()
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=2, seed=62, time_scale=TS)
    await c.start()
    try:
        await c.wait_until_ready(20)
        await _status_outlives_spec(c)
        await c.set_node_flags("worker-1", allow_scheduling=False, eviction_requested=True)
        await c.wait_for(lambda: c.crashes, 15, "a crash")
    finally:
        with pytest.raises(LonghornCrashed, match="worker-1: runtime error: invalid memory address"):
            await c.stop()
        await api.stop()
