"""The rewriter pod end to end in the emulator: a pod on the disk's node runs
`python -m bimguard.rewrite_cfg` against its hostPath mount after the status was changed
webhook-style, and the simulated Longhorn turns the disk Ready under the new UUID (BRIEF §1.6).
A refusal surfaces as exit code 3 and a termination message, and leaves the cfg alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from bimguard.rewrite_cfg import EXIT_REFUSED
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition

NS = "bimguard-system"


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    server = ApiServer(namespace_seed=("default", "longhorn-system", NS))
    await server.start()
    yield server
    await server.stop()


def rewriter_pod(name: str, node: str, host_path: str, disk_name: str, old: str, new: str) -> dict[str, Any]:
    # The shape the controller is expected to create: hostPath type Directory on exactly the disk
    # path (BRIEF §1.6), separate argv words (the emulated kubelet maps paths at the start of an
    # argument) and an explicit --termination-log so the emulator can map it too.
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node, "restartPolicy": "Never", "automountServiceAccountToken": False,
            "containers": [{
                "name": "rewrite-cfg", "image": "bimguard:test",
                "command": ["python", "-m", "bimguard.rewrite_cfg"],
                "args": ["--path", "/disk", "--disk-name", disk_name, "--old", old, "--new", new,
                         "--termination-log", "/dev/termination-log"],
                "volumeMounts": [{"name": "disk", "mountPath": "/disk"}],
            }],
            "volumes": [{"name": "disk", "hostPath": {"path": host_path, "type": "Directory"}}],
        },
    }


async def finished(c: SimCluster, api: ApiServer, name: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        p = api.store.get("v1/pods", NS, name)
        return p if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    return await c.wait_for(done, 20, f"pod {name} finished")


async def test_rewriter_pod_rewrites_and_longhorn_converges(api: ApiServer, tmp_path: Path) -> None:
    c = SimCluster(api, tmp_path, nodes=2, disks_per_node=1, seed=8, time_scale=0.01)
    await c.start()
    try:
        await c.wait_until_ready(20)
        await c.start_kubelet(images=["bimguard"])
        node, disk = "worker-2", c.disks_of("worker-2")[0]
        old = await c.disk_uuid(node, disk)
        new = ("0000" if not old.startswith("0000") else "ffff") + old[4:]
        disk_name = c.read_cfg(node, disk).disk_name

        # A refusal first: wrong expected UUID -> exit 3, message, cfg untouched.
        wrong = "1234" + old[4:] if not old.startswith("1234") else "4321" + old[4:]
        api.store.create("v1/pods", rewriter_pod("refused", node, c.host_path(node, disk), disk_name, wrong, new))
        p = await finished(c, api, "refused")
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (p["status"]["phase"], term["exitCode"]) == ("Failed", EXIT_REFUSED)
        assert term["message"].startswith("refused:") and old in term["message"]
        assert c.read_cfg(node, disk).disk_uuid == old

        await c.set_status_disk_uuid(node, disk, new)  # what the webhook's patch does
        api.store.create("v1/pods", rewriter_pod("rewrite", node, c.host_path(node, disk), disk_name, old, new))
        p = await finished(c, api, "rewrite")
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (p["status"]["phase"], term["exitCode"]) == ("Succeeded", 0), term
        assert term["message"].startswith("written:")
        assert c.read_cfg(node, disk) == disks.DiskConfig(disk_name, new)

        async def ready() -> bool:
            e = (await c.get_node(node))["status"]["diskStatus"][disk]
            return e["diskUUID"] == new and get_condition(e["conditions"], "Ready")["status"] == "True"

        await c.wait_for(ready, 15, "disk Ready under the new UUID")

        # A retried pod (same record) is a no-op success.
        api.store.create("v1/pods", rewriter_pod("retry", node, c.host_path(node, disk), disk_name, old, new))
        p = await finished(c, api, "retry")
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0 and term["message"].startswith("unchanged:")
    finally:
        await c.stop()
