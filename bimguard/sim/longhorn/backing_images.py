"""BackingImage and BackingImageManager controllers of the simulated Longhorn v1.7.2.

This is where the bug bimguard exists for lives: BIMs are named
``backing-image-manager-<sha512(image)[:4]>-<diskUUID[:4]>`` (lm v1.7.2 types/types.go:385), so two
disks whose UUIDs share four hex characters want the same name. On ``AlreadyExists`` the whole
BackingImage reconcile aborts (lm v1.7.2 backing_image_controller.go:693-753, 186-313): no spec or
status write, file status frozen, no Event, only the manager log lines of the KB.

The BackingImageDataSource downloads the first copy and the BIM on its disk takes it over; BIMs
fetch further copies once one is ready. Not emulated: checksum mismatch, v2 backing images,
``backing-image-cleanup-wait-interval``, re-downloads after every copy failed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from bimguard.sim.longhorn import Release
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.sim.longhorn.volumes import go_map_order

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
    """lm v1.7.2 backing_image_controller.go:918 generateBackingImageManagerManifest (+ labels,
    ``types/types.go:534-544 @v1.7.2`` GetBackingImageManagerLabels)."""
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


def ready_disk(nodes: Sequence[Mapping[str, Any]], uuid: str) -> ReadyDisk | None:
    """lm v1.7.2 datastore/longhorn.go:2637-2665 GetReadyDiskNode: the disk with this UUID on a
    Ready node, in spec and Ready."""
    if not uuid:
        return None
    return next((d for d in ready_disks(nodes) if d.uuid == uuid), None)


def disk_ready_on(node: Mapping[str, Any], uuid: str) -> bool:
    """CanPutBackingImageOnDisk (lm datastore/longhorn.go:5589-5616) without selectors."""
    return ready_disk([node], uuid) is not None


def choose_disk_for_copy(bi: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]], rng: random.Random) -> ReadyDisk | None:
    """GetReadyNodeDiskForBackingImage (lm v1.7.2 datastore/longhorn.go:2841-2900): nodes in random
    order, disks in Go map order, the first that is allowed and Schedulable and holds no copy yet.
    Evicting disks are out only because Longhorn's validator forces allowScheduling off with eviction."""
    spec_map = (bi.get("spec") or {}).get("diskFileSpecMap") or {}
    by_node: dict[str, list[ReadyDisk]] = {}
    for n in nodes:
        conds = (n.get("status") or {}).get("conditions")
        if not (n.get("spec") or {}).get("allowScheduling", True) or get_condition(conds, "Schedulable").get("status") != "True":
            continue
        by_node[n["metadata"]["name"]] = []
    for d in ready_disks(nodes):
        if d.node in by_node:
            by_node[d.node].append(d)
    for node in go_map_order(by_node, rng):
        for d in rng.sample(by_node[node], len(by_node[node])):
            if d.uuid not in spec_map and d.allow_scheduling and d.schedulable:
                return d
    return None


def spec_entry(release: Release) -> dict[str, Any]:
    """A new ``spec.diskFileSpecMap`` entry (v1.8+ with ``dataEngine``, lm v1.8.1 replica_controller.go:430)."""
    return {"evictionRequested": False, "dataEngine": "v1"} if release.replica_data_engine_in_bi_spec else {"evictionRequested": False}


def data_source_manifest(bi: Mapping[str, Any], disk: ReadyDisk, *, transferred: bool) -> dict[str, Any]:
    """The BackingImageDataSource the BackingImage controller creates (lm v1.7.2
    backing_image_controller.go:545-575): named after the BackingImage, owned by it."""
    meta = bi.get("metadata") or {}
    spec = bi.get("spec") or {}
    return {
        "kind": "BackingImageDataSource",
        "metadata": {"name": meta["name"], "labels": {"longhorn.io/component": "backing-image-data-source",
                                                      "longhorn.io/managed-by": "longhorn-manager",
                                                      "longhorn.io/backing-image": meta["name"]},
                     "ownerReferences": [{"apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage", "name": meta["name"],
                                          "uid": meta.get("uid", ""), "controller": True}],
                     "finalizers": ["longhorn.io"]},
        "spec": {"nodeID": disk.node, "uuid": (bi.get("status") or {}).get("uuid", ""), "diskUUID": disk.uuid,
                 "diskPath": disk.path, "checksum": spec.get("checksum", ""), "sourceType": spec.get("sourceType", "download"),
                 "parameters": dict(spec.get("sourceParameters") or {}), "fileTransferred": transferred},
    }


def download_fails(bids: Mapping[str, Any]) -> bool:
    """A download from a host that does not resolve never completes (the emulator's way to keep a
    data source untransferred; Longhorn's retry after backing-image-recovery-wait-interval is not emulated)."""
    url = str(((bids.get("spec") or {}).get("parameters") or {}).get("url", ""))
    return ".invalid/" in url or url.endswith(".invalid")


def file_status(bi: Mapping[str, Any], bids: Mapping[str, Any] | None, bims: Sequence[Mapping[str, Any]],
                now: str) -> dict[str, Any]:
    """syncBackingImageFileInfo (lm v1.7.2 backing_image_controller.go:755-858), "blindly" from
    the data source and from *every* BIM that reports the file: the spec is not consulted, so a
    status entry outlives its spec entry until the BIM drops the file."""
    name = bi["metadata"]["name"]
    bi_uuid = (bi.get("status") or {}).get("uuid")
    old = (bi.get("status") or {}).get("diskFileStatusMap") or {}
    found: dict[str, Mapping[str, Any]] = {}
    preparing = ""
    if bids is not None and ((bids.get("status") or {}).get("currentState") or "") != "ready":
        bst = bids.get("status") or {}
        preparing = str((bids.get("spec") or {}).get("diskUUID") or "")
        if preparing:
            found[preparing] = {"state": bst.get("currentState") or "pending", "progress": bst.get("progress", 0),
                                "message": bst.get("message", "")}
    for bim in bims:
        if (bim.get("metadata") or {}).get("deletionTimestamp"):
            continue
        f = ((bim.get("status") or {}).get("backingImageFileMap") or {}).get(name)
        uuid = str((bim.get("spec") or {}).get("diskUUID") or "")
        if not f or f.get("uuid") != bi_uuid or not uuid or uuid == preparing:
            continue
        found[uuid] = f
    out: dict[str, Any] = {}
    for uuid, f in found.items():
        prev = old.get(uuid) or {}
        state = f.get("state", "")
        out[uuid] = {"state": state, "progress": f.get("progress", 0), "message": f.get("message", ""),
                     "lastStateTransitionTime": prev.get("lastStateTransitionTime", "") if prev.get("state") == state else now}
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


def evicted_copies_to_drop(bi: Mapping[str, Any], replicas: Sequence[Mapping[str, Any]], rng: random.Random,
                           release: Release) -> tuple[list[str], str]:
    """cleanupEvictionRequestedBackingImageCopies (lm v1.7.2 backing_image_controller.go:379-420):
    (copies to delete, the evicting copy kept because no non-evicting copy is ready). Which of
    several ready evicting copies is kept depends on Go's map order. v1.8.2 and v1.9.1 also keep
    a copy a replica still uses (lm v1.9.1 :906-913)."""
    name = bi["metadata"]["name"]
    spec_map = (bi.get("spec") or {}).get("diskFileSpecMap") or {}
    status_map = (bi.get("status") or {}).get("diskFileStatusMap") or {}
    order = go_map_order(spec_map, rng)
    has_healthy, kept = False, ""
    for u in order:
        if (status_map.get(u) or {}).get("state") != "ready":
            continue
        if not (spec_map[u] or {}).get("evictionRequested"):
            has_healthy = True
            break
        kept = u
    in_use = {(r.get("spec") or {}).get("diskID") for r in replicas if (r.get("spec") or {}).get("backingImage") == name}
    drop = []
    for u in order:
        if not (spec_map[u] or {}).get("evictionRequested"):
            continue
        if not has_healthy and u == kept:
            continue
        if release.keeps_copies_in_use_when_evicting and u in in_use:
            continue
        drop.append(u)
    return drop, ("" if has_healthy else kept)


def bim_file_entry(bi_name: str, bi_uuid: str, state: str, progress: int, release: Release) -> dict[str, Any]:
    entry = {
        "name": bi_name, "uuid": bi_uuid, "state": state, "progress": progress, "message": "",
        "size": len(BACKING_FILE_CONTENT), "virtualSize": len(BACKING_FILE_CONTENT),
        "currentChecksum": hashlib.sha512(BACKING_FILE_CONTENT).hexdigest() if state == "ready" else "",
        "senderManagerAddress": "", "sendingReference": 0,
    }
    if release.backing_image_real_size:  # lm v1.8.1 BIM backingImageFileMap[].realSize
        entry["realSize"] = len(BACKING_FILE_CONTENT) if state == "ready" else 0
    return entry
