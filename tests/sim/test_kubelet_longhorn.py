"""Kubelet + simulated Longhorn together: a pod rewrites a disk's cfg through a hostPath mount,
the way the product's rewriter pod will, and Longhorn turns the disk Ready again once status and
cfg agree (controller/node_controller.go:700-712 @v1.7.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition

REWRITE = """
import json, os, sys
path, new = sys.argv[1], sys.argv[2]
cfg = json.load(open(path + '/longhorn-disk.cfg'))
cfg['diskUUID'] = new
tmp = path + '/.longhorn-disk.cfg.tmp'
open(tmp, 'w').write(json.dumps(cfg, separators=(',', ':')))
os.chmod(tmp, 0o644)
os.replace(tmp, path + '/longhorn-disk.cfg')
open('/dev/termination-log', 'w').write('rewrote ' + new)
"""


async def test_rewriter_pod_via_hostpath_brings_disk_back(api: ApiServer, tmp_path: Path) -> None:
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=2, seed=21, time_scale=0.01)
    await c.start()
    try:
        await c.wait_until_ready(20)
        await c.start_kubelet(images=["bimguard"])
        old = await c.disk_uuid("worker-2", "disk-1")
        new = "5eed" + old[4:]
        await c.set_status_disk_uuid("worker-2", "disk-1", new)  # webhook-style status change first

        pod: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rewrite-disk-1", "namespace": "longhorn-system"},
            "spec": {"nodeName": "worker-2", "restartPolicy": "Never",
                     "containers": [{"name": "rewrite", "image": "bimguard:test",
                                     "command": ["python", "-c", REWRITE, "/disk", new],
                                     "volumeMounts": [{"name": "disk", "mountPath": "/disk"}]}],
                     "volumes": [{"name": "disk", "hostPath": {"path": "/mnt/disk1", "type": "Directory"}}]},
        }
        api.store.create("v1/pods", pod)

        async def done() -> dict[str, Any] | None:
            p = api.store.get("v1/pods", "longhorn-system", "rewrite-disk-1")
            return p if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

        p = await c.wait_for(done, 15, "rewriter pod finished")
        assert p["status"]["phase"] == "Succeeded"
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == f"rewrote {new}"
        assert (c.read_cfg("worker-2", "disk-1")) == disks.DiskConfig("disk-1", new)

        async def ready() -> bool:
            e = (await c.get_node("worker-2"))["status"]["diskStatus"]["disk-1"]
            return e["diskUUID"] == new and get_condition(e["conditions"], "Ready")["status"] == "True"

        await c.wait_for(ready, 10, "disk Ready under the new UUID")
    finally:
        await c.stop()


async def test_recreated_node_object_re_records_existing_uuids(api: ApiServer, tmp_path: Path) -> None:
    c = SimCluster(api, tmp_path, nodes=["worker-1", "worker-2"], disks_per_node=2, seed=4, time_scale=0.01)
    await c.start()
    try:
        await c.wait_until_ready(20)
        before = {d: e["diskUUID"] for d, e in (await c.get_node("worker-2"))["status"]["diskStatus"].items()}
        await c.recreate_node("worker-2")  # not the leader: its own manager drops the finalizer
        await c.wait_until_ready(20)
        after = {d: e["diskUUID"] for d, e in (await c.get_node("worker-2"))["status"]["diskStatus"].items()}
        # the cfg files are the identity: the UUID is recorded from them (node_controller.go:745 @v1.7.2)
        assert after == before
    finally:
        await c.stop()


async def test_down_node_runs_no_pods_and_is_reported_not_ready(api: ApiServer, tmp_path: Path) -> None:
    import asyncio

    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=1, seed=2, time_scale=0.01)
    await c.start()
    try:
        await c.wait_until_ready(20)
        await c.start_kubelet()
        await c.set_node_down("worker-2")
        api.store.create("v1/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "worker-2", "containers": [{"name": "c", "image": "bimguard", "command": ["true"]}]},
        })

        async def node_down() -> bool:
            cond = get_condition((await c.get_node("worker-2"))["status"]["conditions"], "Ready")
            return cond["status"] == "False" and cond["reason"] == "ManagerPodDown"

        await c.wait_for(node_down, 10, "worker-2 reported down by the other manager")
        await asyncio.sleep(0.3)
        assert (api.store.get("v1/pods", "default", "p").get("status") or {}).get("phase") in (None, "Pending")
        await c.set_node_down("worker-2", False)

        async def ran() -> bool:
            return (api.store.get("v1/pods", "default", "p").get("status") or {}).get("phase") == "Succeeded"

        await c.wait_for(ran, 10, "pod ran after the node came back")
        await c.wait_for(lambda: _not(node_down()), 10, "worker-2 Ready again")
    finally:
        await c.stop()


async def _not(coro: Any) -> bool:
    return not await coro
