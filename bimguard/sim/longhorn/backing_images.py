"""BackingImage and BackingImageManager controllers of the simulated Longhorn v1.7.2.

This is where the bug bimguard exists for lives (BRIEF §4): BIMs are named
``backing-image-manager-<sha512(image)[:4]>-<diskUUID[:4]>`` (lm v1.7.2 types/types.go:385), so two
disks whose UUIDs share four hex characters want the same name. On ``AlreadyExists`` the whole
BackingImage reconcile aborts (lm v1.7.2 backing_image_controller.go:693-753, 186-313): no spec or
status write, file status frozen, no Event, only the manager log lines of the KB.

Not simulated: BackingImageDataSource (the first copy is "downloaded" straight by a BIM), file
transfer between BIMs, checksum mismatch, v2 backing images, cleanup-wait-interval.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from bimguard.sim.longhorn.node_status import get_condition

BIM_COMPONENT_LABELS = {"longhorn.io/component": "backing-image-manager", "longhorn.io/managed-by": "longhorn-manager"}
#: Content of every simulated backing file; its size and sha512 become the BI's size/checksum.
BACKING_FILE_CONTENT = b"bimguard simulated backing image\n" * 128


def image_checksum(image: str) -> str:
    """``util.GetStringChecksum`` = SHA-512 hex (lm v1.7.2 util/util.go)."""
    return hashlib.sha512(image.encode()).hexdigest()


def bim_name(image: str, disk_uuid: str) -> str:
    """lm v1.7.2 types/types.go:385 GetBackingImageManagerName."""
    return f"backing-image-manager-{image_checksum(image)[:4]}-{disk_uuid[:4]}"


def bim_manifest(image: str, node: str, disk_uuid: str, disk_path: str, backing_images: Mapping[str, str]) -> dict[str, Any]:
    """lm v1.7.2 backing_image_controller.go:918 generateBackingImageManagerManifest (+ labels, BRIEF §3)."""
    return {
        "kind": "BackingImageManager",
        "metadata": {
            "name": bim_name(image, disk_uuid),
            "labels": {**BIM_COMPONENT_LABELS, "longhorn.io/disk-uuid": disk_uuid, "longhorn.io/node": node},
            "finalizers": ["longhorn.io"],
        },
        "spec": {"image": image, "nodeID": node, "diskUUID": disk_uuid, "diskPath": disk_path,
                 "backingImages": dict(backing_images)},
    }


@dataclass(frozen=True)
class ReadyDisk:
    node: str
    disk_name: str
    path: str
    uuid: str
    schedulable: bool
    allow_scheduling: bool
    evicting: bool


def ready_disks(nodes: Sequence[Mapping[str, Any]]) -> list[ReadyDisk]:
    """All Ready filesystem disks (like ``GetReadyDiskNode``/``GetReadyNodeDiskForBackingImage``)."""
    out: list[ReadyDisk] = []
    for n in nodes:
        name = n["metadata"]["name"]
        spec = n.get("spec", {})
        if get_condition((n.get("status") or {}).get("conditions"), "Ready").get("status") != "True":
            continue
        for dname, entry in ((n.get("status") or {}).get("diskStatus") or {}).items():
            dspec = (spec.get("disks") or {}).get(dname)
            if dspec is None or not entry.get("diskUUID"):
                continue
            conds = entry.get("conditions")
            if get_condition(conds, "Ready").get("status") != "True":
                continue
            out.append(ReadyDisk(
                name, dname, dspec.get("path", ""), entry["diskUUID"],
                get_condition(conds, "Schedulable").get("status") == "True",
                bool(spec.get("allowScheduling", True)) and bool(dspec.get("allowScheduling", True)),
                bool(spec.get("evictionRequested")) or bool(dspec.get("evictionRequested")),
            ))
    return out


def file_status_from_bims(bi: Mapping[str, Any], bims: Sequence[Mapping[str, Any]], now: str) -> dict[str, Any]:
    """New ``status.diskFileStatusMap`` from the BIMs' reports (syncBackingImageFileInfo, line 756).

    Entries are rebuilt for spec disks whose BIM reports the file; vanished ones are dropped.
    """
    name = bi["metadata"]["name"]
    old = (bi.get("status") or {}).get("diskFileStatusMap") or {}
    out: dict[str, Any] = {}
    for uuid in (bi.get("spec") or {}).get("diskFileSpecMap") or {}:
        for bim in bims:
            if (bim.get("metadata", {}).get("labels") or {}).get("longhorn.io/disk-uuid") != uuid:
                continue
            f = ((bim.get("status") or {}).get("backingImageFileMap") or {}).get(name)
            if not f or f.get("uuid") != (bi.get("status") or {}).get("uuid"):
                continue
            prev = old.get(uuid) or {}
            state = f.get("state", "")
            out[uuid] = {
                "state": state,
                "progress": f.get("progress", 0),
                "message": f.get("message", ""),
                "lastStateTransitionTime": prev.get("lastStateTransitionTime", "") if prev.get("state") == state else now,
            }
            break
    return out


def last_ref_map(bi: Mapping[str, Any], replicas: Sequence[Mapping[str, Any]], now: str) -> dict[str, str]:
    """lm v1.7.2 backing_image_controller.go:892 updateDiskLastReferenceMap."""
    name = bi["metadata"]["name"]
    refs = dict((bi.get("status") or {}).get("diskLastRefAtMap") or {})
    in_use = {r["spec"].get("diskID") for r in replicas if r.get("spec", {}).get("backingImage") == name}
    for u in in_use:
        refs.pop(u, None)
    spec_map = (bi.get("spec") or {}).get("diskFileSpecMap") or {}
    for u in list(refs):
        if u not in spec_map:
            del refs[u]
    for u in spec_map:
        if u not in in_use and u not in refs:
            refs[u] = now
    return refs


def evicted_copies_to_drop(bi: Mapping[str, Any]) -> list[str]:
    """lm v1.7.2 backing_image_controller.go:379: drop evicting copies once a non-evicting ready copy exists."""
    spec_map = (bi.get("spec") or {}).get("diskFileSpecMap") or {}
    status_map = (bi.get("status") or {}).get("diskFileStatusMap") or {}
    has_healthy = any(
        not (s or {}).get("evictionRequested") and (status_map.get(u) or {}).get("state") == "ready"
        for u, s in spec_map.items()
    )
    if not has_healthy:
        return []
    return [u for u, s in spec_map.items() if (s or {}).get("evictionRequested")]


def bim_file_entry(bi_name: str, bi_uuid: str, state: str, progress: int) -> dict[str, Any]:
    return {
        "name": bi_name, "uuid": bi_uuid, "state": state, "progress": progress, "message": "",
        "size": len(BACKING_FILE_CONTENT), "virtualSize": len(BACKING_FILE_CONTENT),
        "currentChecksum": hashlib.sha512(BACKING_FILE_CONTENT).hexdigest() if state == "ready" else "",
        "senderManagerAddress": "", "sendingReference": 0,
    }


def copy_obj(obj: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(obj))
