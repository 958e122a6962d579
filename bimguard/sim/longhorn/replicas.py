"""Replicas: the replica controller's start decision and a minimal volume model for eviction.

Replica controller (lm v1.7.2 controller/replica_controller.go:407 GetBackingImagePathForReplicaStarting,
BRIEF §4): a replica with ``spec.backingImage`` on disk U asks for the file by adding U to the
BackingImage's ``spec.diskFileSpecMap``, then waits (condition ``WaitForBackingImage=True``, reason
``Waiting``, ``currentState: stopped``) until ``status.diskFileStatusMap[U].state == ready``.

Volume model (BRIEF §5; lm volume_controller.go:1093): for a replica with
``spec.evictionRequested`` a replacement is created on another Ready+Schedulable disk of a node that
holds no replica of the volume (hard anti-affinity); once it runs the evicted replica is deleted,
never the last running one. No engines, no data rebuild, no attach/detach.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from bimguard.sim.longhorn.backing_images import ReadyDisk
from bimguard.sim.longhorn.node_status import get_condition

REPLACES_ANNOTATION = "sim.bimguard.io/replaces"


def replica_manifest(
    name: str, volume: str, node: str, disk_path: str, disk_uuid: str, size: int, data_dir: str,
    backing_image: str | None = None, engine_image: str = "longhornio/longhorn-engine:v1.7.2",
) -> dict[str, Any]:
    """A Replica as the scheduler leaves it (labels: lm datastore/longhorn.go:1468,3121; BRIEF §3)."""
    labels = {"longhorndiskuuid": disk_uuid, "longhornnode": node, "longhornvolume": volume}
    if backing_image:
        labels["longhorn.io/backing-image"] = backing_image
    return {
        "kind": "Replica",
        "metadata": {"name": name, "labels": labels, "finalizers": ["longhorn.io"]},
        "spec": {
            "active": True, "backendStoreDriver": "", "backingImage": backing_image or "",
            "dataDirectoryName": data_dir, "dataEngine": "v1", "desireState": "running",
            "diskID": disk_uuid, "diskPath": disk_path, "engineImage": "", "engineName": f"{volume}-e-0",
            "evictionRequested": False, "failedAt": "", "hardNodeAffinity": "", "healthyAt": "",
            "image": engine_image, "lastFailedAt": "", "lastHealthyAt": "", "logRequested": False,
            "nodeID": node, "rebuildRetryCount": 0, "revisionCounterDisabled": True,
            "salvageRequested": False, "snapshotMaxCount": 250, "snapshotMaxSize": "0",
            "unmapMarkDiskChainRemovedEnabled": False, "volumeName": volume, "volumeSize": str(size),
        },
    }


def backing_image_wait_state(replica: Mapping[str, Any], bi: Mapping[str, Any] | None) -> tuple[str, str]:
    """("add-spec" | "wait" | "ready", current file state) for a replica's backing image on its disk."""
    disk = replica["spec"].get("diskID", "")
    if bi is None or not (bi.get("status") or {}).get("uuid"):
        return "wait", ""
    spec_map = (bi.get("spec") or {}).get("diskFileSpecMap")
    if spec_map is None or disk not in spec_map:
        return "add-spec", ""
    fs = ((bi.get("status") or {}).get("diskFileStatusMap") or {}).get(disk)
    if not fs or fs.get("state") != "ready":
        return "wait", (fs or {}).get("state", "")
    return "ready", "ready"


def replicas_of_volume(replicas: Sequence[Mapping[str, Any]], volume: str) -> list[Mapping[str, Any]]:
    return [r for r in replicas if (r.get("metadata", {}).get("labels") or {}).get("longhornvolume") == volume]


def is_running(r: Mapping[str, Any]) -> bool:
    return (r.get("status") or {}).get("currentState") == "running"


def choose_eviction_target(volume_replicas: Sequence[Mapping[str, Any]], disks: Sequence[ReadyDisk]) -> ReadyDisk | None:
    """First Ready+Schedulable, scheduling-allowed, non-evicting disk on a node without a replica of the volume."""
    busy_nodes = {r["spec"].get("nodeID") for r in volume_replicas}
    for d in sorted(disks, key=lambda d: (d.node, d.disk_name)):
        if d.schedulable and d.allow_scheduling and not d.evicting and d.node not in busy_nodes:
            return d
    return None


def wait_condition_status(replica: Mapping[str, Any]) -> str:
    return str(get_condition((replica.get("status") or {}).get("conditions"), "WaitForBackingImage").get("status"))
