"""The rewriter pod end to end in the emulator: the pod the controller builds
(bimguard/rewrite/pod.py) runs `rewrite-cfg` on the disk's node against its hostPath mount after
the status was changed webhook-style, and the simulated Longhorn turns the disk Ready under the
new UUID (Ready once status and cfg agree, controller/node_controller.go:700-712 @v1.7.2). A
refusal surfaces as exit code 3 and a termination message, and leaves the cfg alone; a retried
pod is a no-op success. Both the console script and the standard-library-only
`python -m bimguard.rewrite_cfg` are exercised."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from bimguard import records
from bimguard.rewrite_cfg import EXIT_REFUSED
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.rewrite.pod import DEFAULT_COMMAND, rewriter_pod

NS = "bimguard-system"


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    server = ApiServer(namespace_seed=("default", "longhorn-system", NS))
    await server.start()
    yield server
    await server.stop()


def pod_for(command: tuple[str, ...], attempt: int, node: str, disk: str, disk_name: str, host_path: str,
            old: str, new: str, *, check: bool = False) -> dict[str, Any]:
    record = records.rewrite_manifest(
        name=records.record_name(node, disk, old), namespace=NS, node=node, disk=disk, disk_name=disk_name,
        disk_path=host_path, old_uuid=old, new_uuid=new, reason="test", origin="webhook")
    return rewriter_pod(record, attempt=attempt, namespace=NS, image="bimguard:test", command=command, check=check)


async def finished(c: SimCluster, api: ApiServer, name: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        p = api.store.get("v1/pods", NS, name)
        return p if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    return await c.wait_for(done, 20, f"pod {name} finished")


@pytest.mark.parametrize("command", [DEFAULT_COMMAND, ("python", "-m", "bimguard.rewrite_cfg")],
                         ids=["console-script", "python-m"])
async def test_rewriter_pod_rewrites_and_longhorn_converges(api: ApiServer, tmp_path: Path,
                                                            command: tuple[str, ...]) -> None:
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
        pod = pod_for(command, 1, node, disk, disk_name, c.host_path(node, disk), wrong, new)
        api.store.create("v1/pods", pod)
        p = await finished(c, api, pod["metadata"]["name"])
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (p["status"]["phase"], term["exitCode"]) == ("Failed", EXIT_REFUSED)
        assert term["message"].startswith("refused:") and old in term["message"]
        assert c.read_cfg(node, disk).disk_uuid == old

        await c.set_status_disk_uuid(node, disk, new)  # what the webhook's patch does
        pod = pod_for(command, 1, node, disk, disk_name, c.host_path(node, disk), old, new)
        api.store.create("v1/pods", pod)
        p = await finished(c, api, pod["metadata"]["name"])
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (p["status"]["phase"], term["exitCode"]) == ("Succeeded", 0), term
        assert term["message"].startswith("written:")
        assert c.read_cfg(node, disk) == disks.DiskConfig(disk_name, new)

        async def ready() -> bool:
            e = (await c.get_node(node))["status"]["diskStatus"][disk]
            return e["diskUUID"] == new and get_condition(e["conditions"], "Ready")["status"] == "True"

        await c.wait_for(ready, 15, "disk Ready under the new UUID")

        # A retried pod (same record) is a no-op success.
        pod = pod_for(command, 2, node, disk, disk_name, c.host_path(node, disk), old, new)
        api.store.create("v1/pods", pod)
        p = await finished(c, api, pod["metadata"]["name"])
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0 and term["message"].startswith("unchanged:")

        # A check pod: its own name, the disk read-only, and the same word on what the cfg holds.
        pod = pod_for(command, 3, node, disk, disk_name, c.host_path(node, disk), old, new, check=True)
        assert pod["metadata"]["name"].endswith("-ck3") and pod["spec"]["containers"][0]["command"][-1] == "--check"
        assert pod["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] is True
        api.store.create("v1/pods", pod)
        p = await finished(c, api, pod["metadata"]["name"])
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0 and term["message"].startswith("unchanged:")
        pod = pod_for(command, 4, node, disk, disk_name, c.host_path(node, disk), new, wrong, check=True)
        api.store.create("v1/pods", pod)
        p = await finished(c, api, pod["metadata"]["name"])
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == EXIT_REFUSED and "checked, nothing written" in term["message"]
        assert c.read_cfg(node, disk) == disks.DiskConfig(disk_name, new)
    finally:
        await c.stop()
