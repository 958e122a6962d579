"""Longhorn's own validating webhook in the emulator, seen through real kubectl.

Each refusal comes back with Longhorn's status code and message (lm v1.7.2
webhook/resources/node/validator.go, replica/validator.go; webhook/error/error.go for the codes)
wrapped the way kube-apiserver wraps a webhook denial (the Status message is prefixed, a 422's
causes are not). kubectl prints a 422 ``Invalid`` from its causes ("The request is invalid: :
<message>", the field being empty) and a 403 from the message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import AsyncIterator

import pytest

from bimguard.kube import Invalid
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn.cluster import SimCluster
from tests.kubectl import Kubectl

NS = "longhorn-system"
DENIED = 'admission webhook "validator.longhorn.io" denied the request: '
INVALID = "The request is invalid: : "


@pytest.fixture
async def cluster(api: ApiServer, tmp_path: Path) -> AsyncIterator[SimCluster]:
    c = SimCluster(api, tmp_path / "hosts", nodes=2, disks_per_node=2, seed=51, time_scale=0.01)
    await c.start()
    await c.wait_until_ready(20)
    yield c
    await c.stop()


@pytest.fixture
def kubectl(api: ApiServer, tmp_path: Path) -> Kubectl:
    path = tmp_path / "kubeconfig"
    api.kubeconfig(path)
    return Kubectl(path, tmp_path)


def _status(api: ApiServer, method: str, fragment: str) -> int:
    return next(code for m, p, code in reversed(api.requests) if m == method and fragment in p)


async def test_disk_eviction_with_scheduling_on_is_refused_422(api: ApiServer, cluster: SimCluster, kubectl: Kubectl) -> None:
    patch = json.dumps({"spec": {"disks": {"disk-1": {"evictionRequested": True}}}})
    code, _, err = await kubectl.run("patch", "nodes.longhorn.io", "worker-1", "-n", NS, "--type=merge", "-p", patch, check=False)
    message = ("need to disable scheduling on disk disk-1 for disk eviction, or cancel eviction to enable "
               "scheduling on this disk")
    assert code != 0 and INVALID + message in err
    assert _status(api, "PATCH", "/nodes/worker-1") == 422
    with pytest.raises(Invalid) as raised:  # the Status body itself, through the Python client
        await cluster.set_disk_flags("worker-1", "disk-1", eviction_requested=True)
    assert raised.value.message == DENIED + message
    # Both in one write is what Longhorn accepts (validator.go:151-156 judges the new spec).
    patch = json.dumps({"spec": {"disks": {"disk-1": {"evictionRequested": True, "allowScheduling": False}}}})
    await kubectl.run("patch", "nodes.longhorn.io", "worker-1", "-n", NS, "--type=merge", "-p", patch)


async def test_node_eviction_with_scheduling_on_is_refused(cluster: SimCluster, kubectl: Kubectl) -> None:
    patch = json.dumps({"spec": {"evictionRequested": True}})
    code, _, err = await kubectl.run("patch", "nodes.longhorn.io", "worker-2", "-n", NS, "--type=merge", "-p", patch, check=False)
    assert code != 0 and INVALID + ("need to disable scheduling on node worker-2 for node eviction, or cancel eviction "
                                    "to enable scheduling on this node") in err


async def test_spec_writes_are_forbidden_while_spec_and_status_disks_differ(api: ApiServer, cluster: SimCluster,
                                                                            kubectl: Kubectl) -> None:
    """403 (validator.go:115-117): judged on the stored object, so it lasts until the node's own
    manager records the new disk; with that manager down it lasts."""
    await cluster.set_node_down("worker-2")
    await cluster.add_disk("worker-2", "disk-new")
    patch = json.dumps({"spec": {"disks": {"disk-1": {"allowScheduling": False}}}})
    code, _, err = await kubectl.run("patch", "nodes.longhorn.io", "worker-2", "-n", NS, "--type=merge", "-p", patch, check=False)
    assert code != 0
    assert "Error from server (Forbidden): " + DENIED + \
        "spec and status of disks on node worker-2 are being syncing and please retry later." in err
    assert _status(api, "PATCH", "/nodes/worker-2") == 403
    # Status writes never reach the validator (it is registered for "nodes", not "nodes/status").
    node = await cluster.get_node("worker-1")
    node["status"]["region"] = "r1"
    assert cluster.kube is not None
    await cluster.kube.replace_status("nodes", node)


async def test_removing_a_disk_needs_scheduling_off_first_and_nothing_scheduled(api: ApiServer, cluster: SimCluster,
                                                                                kubectl: Kubectl) -> None:
    node = await cluster.get_node("worker-1")
    path = node["spec"]["disks"]["disk-1"]["path"]
    remove = json.dumps([{"op": "remove", "path": "/spec/disks/disk-1"}])
    code, _, err = await kubectl.run("patch", "nodes.longhorn.io", "worker-1", "-n", NS, "--type=json", "-p", remove, check=False)
    # The disk's name where the node's should be, and a trailing space: Longhorn's own text.
    assert code != 0 and INVALID + f"Delete Disk on node disk-1 error: Please disable the disk {path} and remove all replicas first" in err
    with pytest.raises(Invalid) as raised:  # with its trailing space, through the Python client
        await cluster.update_node_spec("worker-1", lambda n: n["spec"]["disks"].pop("disk-1"))
    assert raised.value.message == DENIED + f"Delete Disk on node disk-1 error: Please disable the disk {path} and remove all replicas first "
    # Scheduling off and removal in one write is refused too: the *stored* allowScheduling counts.
    both = json.dumps([{"op": "replace", "path": "/spec/disks/disk-1/allowScheduling", "value": False},
                       {"op": "remove", "path": "/spec/disks/disk-1"}])
    code, _, _ = await kubectl.run("patch", "nodes.longhorn.io", "worker-1", "-n", NS, "--type=json", "-p", both, check=False)
    assert code != 0 and _status(api, "PATCH", "/nodes/worker-1") == 422
    # A replica scheduled there keeps it, with scheduling off.
    [r] = await cluster.create_volume("vol", [("worker-1", "disk-1")])

    async def scheduled() -> bool:
        return r in (await cluster.get_node("worker-1"))["status"]["diskStatus"]["disk-1"]["scheduledReplica"]

    await cluster.wait_for(scheduled, 10, "replica counted on disk-1")
    await cluster.set_disk_flags("worker-1", "disk-1", allow_scheduling=False)
    code, _, err = await kubectl.run("patch", "nodes.longhorn.io", "worker-1", "-n", NS, "--type=json", "-p", remove, check=False)
    assert code != 0 and "remove all replicas first" in err
    # The empty disk goes once its scheduling is off.
    await cluster.set_disk_flags("worker-2", "disk-1", allow_scheduling=False)
    await kubectl.run("patch", "nodes.longhorn.io", "worker-2", "-n", NS, "--type=json", "-p", remove)


async def test_the_last_healthy_replica_cannot_be_deleted(api: ApiServer, cluster: SimCluster, kubectl: Kubectl) -> None:
    """replica/validator.go:90-128: refused only for the volume's single replica with healthyAt."""
    [r] = await cluster.create_volume("vol", [("worker-1", "disk-1")])
    assert cluster.kube is not None

    async def healthy() -> bool:
        return bool((await cluster.kube.get("replicas", r))["spec"]["healthyAt"])  # type: ignore[union-attr]

    await cluster.wait_for(healthy, 20, "replica healthy")
    code, _, err = await kubectl.run("delete", "replicas.longhorn.io", r, "-n", NS, check=False)
    assert code != 0 and INVALID + f"cannot delete replica {r} because volume vol only has one available replica" in err
    assert _status(api, "DELETE", f"/replicas/{r}") == 422
    assert await cluster.kube.get_or_none("replicas", r) is not None
