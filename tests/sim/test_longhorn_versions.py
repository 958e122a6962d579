"""What the emulated cluster does differently per Longhorn release line, where the repair reads
or writes it. Each cluster is started with its release's CRDs (fields a release does not know are
pruned, as on a real cluster)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from bimguard.kube import Invalid
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn.cluster import SimCluster

TS = 0.01


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[tuple[ApiServer, SimCluster]] = []

    async def start(version: str, **kw: Any) -> SimCluster:
        api = ApiServer(longhorn_version=version)
        await api.start()
        c = SimCluster(api, tmp_path / version, nodes=kw.pop("nodes", 1), disks_per_node=kw.pop("disks_per_node", 2),
                       seed=71, time_scale=TS, longhorn_version=version, **kw)
        started.append((api, c))
        await c.start()
        await c.wait_until_ready(20)
        return c

    yield start
    for api, c in started:
        await c.stop()
        await api.stop()


@pytest.mark.parametrize("version,counted", [("v1.7.2", False), ("v1.8.1", True), ("v1.9.1", True)])
async def test_storage_scheduled_counts_backing_images_from_v18(make: Any, version: str, counted: bool) -> None:
    """lm v1.8.1 node_controller.go:853-856,888-919: every BackingImage whose spec names the disk
    adds its status.realSize to storageScheduled and to scheduledBackingImage; v1.7.2 only counts
    replicas (node_controller.go:849-869)."""
    c = await make(version)
    await c.create_backing_image("img", disks_=[("worker-1", "disk-1")])
    assert c.kube is not None

    async def settled() -> dict[str, Any] | None:
        bi = await c.kube.get("backingimages", "img")
        ready = ((bi.get("status") or {}).get("diskFileStatusMap") or {}).values()
        if not any(f.get("state") == "ready" for f in ready):
            return None
        entry = (await c.get_node("worker-1"))["status"]["diskStatus"]["disk-1"]
        return entry if (not counted or any((entry.get("scheduledBackingImage") or {}).values())) else None

    entry = await c.wait_for(settled, 15, "copy ready and node synced")
    if counted:
        size = (await c.kube.get("backingimages", "img"))["status"]["realSize"]
        assert size > 0 and entry["scheduledBackingImage"] == {"img": size} and entry["storageScheduled"] == size
    else:
        assert "scheduledBackingImage" not in entry and entry["storageScheduled"] == 0
        assert "realSize" not in (await c.kube.get("backingimages", "img"))["status"]


async def test_v19_disk_removal_message_names_backing_images(make: Any) -> None:
    """lm v1.9.0 webhook/resources/node/validator.go:188."""
    c = await make("v1.9.1")
    path = (await c.get_node("worker-1"))["spec"]["disks"]["disk-1"]["path"]
    with pytest.raises(Invalid) as raised:
        await c.update_node_spec("worker-1", lambda n: n["spec"]["disks"].pop("disk-1"))
    assert raised.value.message.endswith(
        f"Delete Disk on node disk-1 error: Please disable the disk {path} and remove all replicas and backing images first ")


@pytest.mark.parametrize("value,deleted", [("", False), ("replica-data", True), ("instance;replica-data", True)])
async def test_v19_orphan_resource_auto_deletion(make: Any, value: str, deleted: bool) -> None:
    """v1.9 replaced the boolean orphan-auto-deletion by orphan-resource-auto-deletion, a
    ";"-separated list, plus a grace period (lm v1.9.0 types/setting.go:103-104,1063-1090,
    node_controller.go:1422-1447)."""
    c = await make("v1.9.1", disks_per_node=2)
    assert c.kube is not None
    assert await c.kube.get_or_none("settings", "orphan-auto-deletion") is None
    await c.set_setting("orphan-resource-auto-deletion-grace-period", "10")
    await c.set_setting("orphan-resource-auto-deletion", value)
    [r] = await c.create_volume("vol", [("worker-1", "disk-1")])

    async def running() -> dict[str, Any] | None:
        rep = await c.kube.get("replicas", r)
        return rep if rep["spec"]["healthyAt"] else None

    rep = await c.wait_for(running, 20, "replica healthy")
    data_dir = c.disk_dir("worker-1", "disk-1") / "replicas" / rep["spec"]["dataDirectoryName"]
    new = "0123" + (await c.disk_uuid("worker-1", "disk-1"))[4:]
    await c.set_status_disk_uuid("worker-1", "disk-1", new)
    disks.replace_cfg_atomically(c.disk_dir("worker-1", "disk-1"), disks.DiskConfig("disk-1", new))
    orphan = "orphan-" + hashlib.sha256(
        f"worker-1-disk-1-/mnt/disk1-{new}-{rep['spec']['dataDirectoryName']}".encode()).hexdigest()
    await c.wait_for(lambda: c.kube.get_or_none("orphans", orphan), 15, "orphan created")  # type: ignore[union-attr]
    if deleted:
        await c.wait_for(lambda: not data_dir.exists(), 15, "orphaned data deleted")
    else:
        await asyncio.sleep(0.5)
        assert data_dir.is_dir()
