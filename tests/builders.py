"""Small builders for Longhorn objects in the shapes longhorn-manager v1.7.2 writes.

Field shapes follow tests/fixtures/longhorn/samples (see their header comments for sources)."""

from __future__ import annotations

import copy
from typing import Any, Iterable


def disk_entry(uuid: str, path: str, *, dtype: str = "filesystem", ready: bool = True,
               scheduled: Iterable[str] = ()) -> dict[str, Any]:
    status = "True" if ready else "False"
    return {
        "conditions": [
            {"lastProbeTime": "", "lastTransitionTime": "2025-03-02T09:15:22Z", "message": "", "reason": "",
             "status": status, "type": "Ready"},
            {"lastProbeTime": "", "lastTransitionTime": "2025-03-02T09:15:22Z", "message": "", "reason": "",
             "status": status, "type": "Schedulable"},
        ],
        "diskDriver": "", "diskName": "", "diskPath": path, "diskType": dtype, "diskUUID": uuid,
        "filesystemType": "ext2/ext3", "scheduledReplica": {r: 10737418240 for r in scheduled},
        "storageAvailable": 90177536000, "storageMaximum": 105686820864, "storageScheduled": 0,
    }


def node(name: str, disks: dict[str, dict[str, Any]], namespace: str = "longhorn-system") -> dict[str, Any]:
    """`disks` maps disk name -> disk_entry(...)."""
    spec = {
        d: {"allowScheduling": True, "diskDriver": "", "diskType": e["diskType"], "evictionRequested": False,
            "path": e["diskPath"], "storageReserved": 0, "tags": []}
        for d, e in disks.items()
    }
    status = {d: {**copy.deepcopy(e), "diskName": d} for d, e in disks.items()}
    return {
        "apiVersion": "longhorn.io/v1beta2", "kind": "Node",
        "metadata": {"name": name, "namespace": namespace, "finalizers": ["longhorn.io"]},
        "spec": {"allowScheduling": True, "disks": spec, "evictionRequested": False, "name": name, "tags": []},
        "status": {"conditions": [], "diskStatus": status, "region": "", "zone": ""},
    }


def replica(name: str, node_name: str, disk_uuid: str, *, backing_image: str = "", state: str = "running",
            label_uuid: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "longhorn.io/v1beta2", "kind": "Replica",
        "metadata": {"name": name, "namespace": "longhorn-system",
                     "labels": {"longhorndiskuuid": disk_uuid if label_uuid is None else label_uuid,
                                "longhornnode": node_name, "longhornvolume": name.rsplit("-r-", 1)[0]}},
        "spec": {"nodeID": node_name, "diskID": disk_uuid, "diskPath": "/x", "backingImage": backing_image,
                 "volumeName": name.rsplit("-r-", 1)[0], "desireState": "running"},
        "status": {"currentState": state},
    }


def backing_image(name: str, spec_uuids: Iterable[str], status: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage",
        "metadata": {"name": name, "namespace": "longhorn-system"},
        "spec": {"diskFileSpecMap": {u: {"evictionRequested": False} for u in spec_uuids}, "disks": {}},
        "status": {"diskFileStatusMap": {u: {"state": s, "progress": 100, "message": ""} for u, s in status.items()},
                   "uuid": "516b7c23"},
    }


def bim(name: str, node_name: str, disk_uuid: str, image: str, backing_images: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImageManager",
        "metadata": {"name": name, "namespace": "longhorn-system",
                     "labels": {"longhorn.io/disk-uuid": disk_uuid, "longhorn.io/node": node_name}},
        "spec": {"diskUUID": disk_uuid, "nodeID": node_name, "diskPath": "/x", "image": image,
                 "backingImages": {b: "516b7c23" for b in backing_images}},
    }


def setting(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "longhorn.io/v1beta2", "kind": "Setting",
            "metadata": {"name": name, "namespace": "longhorn-system"}, "value": value}


def as_list(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(items), "metadata": {"resourceVersion": ""}}
