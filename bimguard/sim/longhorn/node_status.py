"""Pure status computation of the simulated Longhorn node controller (no I/O).

Given a Longhorn Node object, the disk monitor's snapshot and the Replica/BIM objects, compute the
new ``status`` exactly the way longhorn-manager v1.7.2 ``controller/node_controller.go`` does
(``syncNode``, line 363), plus the Events to emit and the re-link updates to make. The imperative
shell (``node_controller.py``) reads the inputs and writes the results.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from bimguard.sim.longhorn import DEFAULT_RELEASE, Release
from bimguard.sim.longhorn.monitor import DiskInfo

READY = "Ready"
SCHEDULABLE = "Schedulable"
REASON_FS_CHANGED = "DiskFilesystemChanged"
REASON_DISK_NOT_READY = "DiskNotReady"
REASON_DISK_PRESSURE = "DiskPressure"
REASON_MANAGER_POD_DOWN = "ManagerPodDown"
TRUNCATE_TO = 100 * 1024 * 1024  # storageAvailable granularity, lm v1.7.2 node_controller.go:782-783


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the Longhorn Node: reason = condition type (lm types/condition.go)."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Relink:
    """Spec update of a Replica or BIM whose disk UUID now lives at another node/path
    (``controller/node_controller.go:831-864 @v1.7.2``)."""

    kind: str  # "replicas" | "backingimagemanagers"
    name: str
    node_id: str
    disk_path: str


@dataclass(frozen=True)
class SchedulingSettings:
    minimal_available_percentage: int = 25  # setting storage-minimal-available-percentage
    over_provisioning_percentage: int = 100  # setting storage-over-provisioning-percentage


@dataclass
class NodeSyncResult:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    relinks: list[Relink] = field(default_factory=list)
    disk_part_skipped: bool = False  # the "mismatching disks" early return happened


def instance_manager_name(node: str) -> str:
    """Stand-in for the v1 instance manager's name (``instance-manager-<md5 hex>`` in Longhorn)."""
    return "instance-manager-" + hashlib.md5(node.encode()).hexdigest()


def get_condition(conds: Sequence[Mapping[str, Any]] | None, ctype: str) -> Mapping[str, Any]:
    for c in conds or []:
        if c.get("type") == ctype:
            return c
    return {"type": ctype, "status": "Unknown"}


def set_condition(
    conds: list[dict[str, Any]] | None, ctype: str, status: str, reason: str, message: str,
    now: str, events: list[Event], event_type: str,
) -> list[dict[str, Any]]:
    """lm v1.7.2 types/condition.go SetConditionAndRecord: Event and new lastTransitionTime only on a flip."""
    conds = list(conds or [])
    old = get_condition(conds, ctype)
    flipped = old.get("status") != status
    if flipped:
        events.append(Event(event_type, ctype, message))
    new = {
        "type": ctype,
        "status": status,
        "lastProbeTime": old.get("lastProbeTime", "") or "",
        "lastTransitionTime": now if flipped else old.get("lastTransitionTime", ""),
        "reason": reason,
        "message": message,
    }
    for i, c in enumerate(conds):
        if c.get("type") == ctype:
            conds[i] = new
            return conds
    conds.append(new)
    return conds


def node_conditions(node: Mapping[str, Any], manager_up: bool, now: str, events: list[Event]) -> list[dict[str, Any]]:
    """Node-level Ready/Schedulable, written by every manager (lm v1.7.2 node_controller.go:1964).

    The sim has no Kubernetes Node objects; a node whose simulated manager is stopped is reported
    like a manager pod that is not running.
    """
    name = node["metadata"]["name"]
    conds = copy.deepcopy((node.get("status") or {}).get("conditions") or [])
    if manager_up:
        conds = set_condition(conds, READY, "True", "", f"Node {name} is ready", now, events, "Normal")
    else:
        conds = set_condition(
            conds, READY, "False", REASON_MANAGER_POD_DOWN,
            f"Node {name} is down: manager pod longhorn-manager-{name} is not running", now, events, "Warning",
        )
    return set_condition(conds, SCHEDULABLE, "True", "", "", now, events, "Normal")


def disks_matched(node: Mapping[str, Any], collected: Mapping[str, DiskInfo] | None) -> bool:
    """lm v1.7.2 node_controller.go:1734 isDiskMatched: same disk set, paths and eviction flags."""
    if collected is None:
        return False
    spec = node.get("spec", {})
    sdisks = spec.get("disks") or {}
    if len(sdisks) != len(collected):
        return False
    for name, info in collected.items():
        d = sdisks.get(name)
        if d is None:
            return False
        evicted = bool(spec.get("evictionRequested")) or bool(d.get("evictionRequested"))
        if evicted != info.node_or_disk_evicted or d.get("path") != info.path:
            return False
    return True


def align_disk_spec_and_status(node: Mapping[str, Any], status: dict[str, Any],
                               release: Release = DEFAULT_RELEASE) -> list[str]:
    """lm v1.7.2 node_controller.go:1663: create empty entries, zero storage, drop removed disks.

    Returns the names of the deleted entries.
    """
    dstatus: dict[str, Any] = status.setdefault("diskStatus", {}) or {}
    status["diskStatus"] = dstatus
    sdisks = node.get("spec", {}).get("disks") or {}
    for name, d in sdisks.items():
        entry = dstatus.get(name)
        if entry is None:
            entry = {}
        entry.setdefault("conditions", [])
        if entry.get("conditions") is None:
            entry["conditions"] = []
        if entry.get("scheduledReplica") is None:
            entry["scheduledReplica"] = {}
        if release.storage_scheduled_counts_backing_images and entry.get("scheduledBackingImage") is None:
            entry["scheduledBackingImage"] = {}
        for k, v in (("diskUUID", ""), ("diskName", ""), ("diskPath", ""), ("diskDriver", ""),
                     ("filesystemType", ""), ("instanceManagerName", ""), ("storageScheduled", 0)):
            entry.setdefault(k, v)
        entry["storageMaximum"] = 0
        entry["storageAvailable"] = 0
        entry["diskType"] = d.get("diskType", "filesystem")
        dstatus[name] = entry
    removed = [n for n in dstatus if n not in sdisks]
    for n in removed:
        del dstatus[n]
    return removed


def _label(obj: Mapping[str, Any], key: str) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(key)


def _volume_size(replica: Mapping[str, Any]) -> int:
    try:
        return int(replica.get("spec", {}).get("volumeSize") or 0)
    except (TypeError, ValueError):
        return 0


def schedulable(disk_spec: Mapping[str, Any], entry: Mapping[str, Any], settings: SchedulingSettings) -> bool:
    """lm v1.7.2 scheduler/replica_scheduler.go:794 IsSchedulableToDisk(0, 0, info), as node_controller.go:875."""
    maximum = int(entry.get("storageMaximum") or 0)
    available = int(entry.get("storageAvailable") or 0)
    reserved = int(disk_spec.get("storageReserved") or 0)
    scheduled = int(entry.get("storageScheduled") or 0)
    return (
        maximum > 0 and available > 0
        and available > maximum * settings.minimal_available_percentage / 100
        and scheduled <= (maximum - reserved) * settings.over_provisioning_percentage / 100
    )


def sync_node_status(
    node: Mapping[str, Any],
    collected: Mapping[str, DiskInfo] | None,
    replicas: Sequence[Mapping[str, Any]],
    bims: Sequence[Mapping[str, Any]],
    now: str,
    *,
    owner: bool,
    manager_up: bool = True,
    settings: SchedulingSettings = SchedulingSettings(),
    backing_images: Sequence[Mapping[str, Any]] = (),
    release: Release = DEFAULT_RELEASE,
) -> NodeSyncResult:
    """One ``syncNode`` (lm v1.7.2 node_controller.go:363) minus its I/O.

    Non-owners only set node-level conditions (line 433). The owner returns early, without
    touching ``diskStatus``, while the monitor snapshot does not match spec (line 452): this is why a
    new disk's entry (created by ``alignDiskSpecAndStatus``, line 1663) and its UUID (line 745)
    arrive in ONE status write.
    """
    events: list[Event] = []
    name = node["metadata"]["name"]
    status = copy.deepcopy(node.get("status") or {})
    status["conditions"] = node_conditions(node, manager_up, now, events)
    # NodeStatus fields without omitempty (lm v1beta2 node.go); the sim never auto-evicts.
    status.setdefault("region", "")
    status.setdefault("zone", "")
    status.setdefault("autoEvicting", False)
    status.setdefault("snapshotCheckStatus", {})
    if not owner:
        return NodeSyncResult(status, events)
    if not disks_matched(node, collected):
        return NodeSyncResult(status, events, disk_part_skipped=True)
    assert collected is not None

    align_disk_spec_and_status(node, status, release)
    dstatus: dict[str, Any] = status["diskStatus"]
    sdisks = node.get("spec", {}).get("disks") or {}

    # findNotReadyAndReadyDiskMaps (line 673)
    not_ready: dict[str, tuple[str, str]] = {}
    by_fsid: dict[str, list[str]] = {}
    for disk_name in sorted(collected):
        info = collected[disk_name]
        if info.has_error:
            not_ready[disk_name] = (info.error_reason, info.error_message)
            continue
        recorded = dstatus[disk_name].get("diskUUID", "") or ""
        if recorded:
            msg = ""
            if info.disk_uuid == "":
                msg = f"Disk {disk_name}({info.path}) on node {name} is not ready: cannot find disk config file, maybe due to a mount error"
            elif recorded != info.disk_uuid:
                # NB trailing space, verbatim from line 708.
                msg = f"Disk {disk_name}({info.path}) on node {name} is not ready: record diskUUID doesn't match the one on the disk "
            if msg:
                not_ready[disk_name] = (REASON_FS_CHANGED, msg)
                continue
        fsid = info.stat.fsid if info.stat else "unknown"
        by_fsid.setdefault(fsid, []).append(disk_name)

    ready: list[str] = []
    for fsid, group in by_fsid.items():
        ready_in_group: list[str] = []
        for disk_name in group:
            others_ready = len(group) > 1 and any(
                o != disk_name and get_condition(dstatus[o].get("conditions"), READY).get("status") == "True"
                for o in group
            )
            if others_ready or ready_in_group:
                not_ready[disk_name] = (
                    REASON_FS_CHANGED,
                    f"Disk {disk_name}({collected[disk_name].path}) on node {name} is not ready: "
                    f"disk has same file system ID {fsid} as other disks [{' '.join(group)}]",
                )
                continue
            info = collected[disk_name]
            entry = dstatus[disk_name]
            entry["diskUUID"] = info.disk_uuid  # no-op unless it was empty (line 745)
            entry["diskDriver"] = info.disk_driver
            entry["diskName"] = info.disk_name
            entry["diskPath"] = info.path
            ready_in_group.append(disk_name)
        ready.extend(ready_in_group)

    for disk_name, (reason, message) in not_ready.items():
        entry = dstatus[disk_name]
        entry["conditions"] = set_condition(entry["conditions"], READY, "False", reason, message, now, events, "Warning")

    for disk_name in ready:
        info = collected[disk_name]
        entry = dstatus[disk_name]
        if entry["diskUUID"] == info.disk_uuid and info.stat is not None:
            entry["storageAvailable"] = (info.stat.storage_available // TRUNCATE_TO) * TRUNCATE_TO
            entry["storageMaximum"] = info.stat.storage_maximum
            entry["instanceManagerName"] = instance_manager_name(name)
            entry["conditions"] = set_condition(
                entry["conditions"], READY, "True", "", f"Disk {disk_name}({info.path}) on node {name} is ready",
                now, events, "Normal",
            )
            if entry.get("diskType") == "filesystem":
                entry["filesystemType"] = info.stat.fs_type

    relinks: list[Relink] = []
    # updateDiskStatusSchedulableCondition (line 807)
    for disk_name, dspec in sdisks.items():
        entry = dstatus[disk_name]
        path = dspec.get("path", "")
        if get_condition(entry["conditions"], READY).get("status") != "True":
            entry["storageScheduled"] = 0
            entry["scheduledReplica"] = {}
            entry["conditions"] = set_condition(
                entry["conditions"], SCHEDULABLE, "False", REASON_DISK_NOT_READY,
                f"Disk {disk_name} ({path}) on the node {name} is not ready", now, events, "Warning",
            )
            continue
        uuid = entry.get("diskUUID", "")
        for bim in bims:
            if _label(bim, "longhorn.io/disk-uuid") != uuid:
                continue
            bspec = bim.get("spec", {})
            if bspec.get("nodeID") != name or bspec.get("diskPath") != path:
                relinks.append(Relink("backingimagemanagers", bim["metadata"]["name"], name, path))
        scheduled: dict[str, int] = {}
        for r in replicas:
            if _label(r, "longhorndiskuuid") != uuid:
                continue
            rspec = r.get("spec", {})
            if rspec.get("nodeID") != name or rspec.get("diskPath") != path:
                relinks.append(Relink("replicas", r["metadata"]["name"], name, path))
            scheduled[r["metadata"]["name"]] = _volume_size(r)
        entry["scheduledReplica"] = scheduled
        entry["storageScheduled"] = sum(scheduled.values())
        if release.storage_scheduled_counts_backing_images:
            # lm v1.8.1 node_controller.go:853-856,888-919: every BackingImage whose spec names the
            # disk counts with its real size, whatever the file's state.
            on_disk = {bi["metadata"]["name"]: int((bi.get("status") or {}).get("realSize") or 0) for bi in backing_images
                       if uuid in (((bi.get("spec") or {}).get("diskFileSpecMap")) or {})}
            entry["scheduledBackingImage"] = on_disk
            entry["storageScheduled"] += sum(on_disk.values())
        if schedulable(dspec, entry, settings):
            entry["conditions"] = set_condition(
                entry["conditions"], SCHEDULABLE, "True", "", f"Disk {disk_name}({path}) on node {name} is schedulable",
                now, events, "Normal",
            )
        else:
            entry["conditions"] = set_condition(
                entry["conditions"], SCHEDULABLE, "False", REASON_DISK_PRESSURE,
                f"Disk {disk_name} ({path}) on the node {name} has {entry.get('storageAvailable', 0)} available, "
                f"but requires reserved {int(dspec.get('storageReserved') or 0)}, minimal "
                f"{settings.minimal_available_percentage}% to schedule more replicas",
                now, events, "Warning",
            )
    return NodeSyncResult(status, events, relinks)


def eviction_updates(node: Mapping[str, Any], status: Mapping[str, Any], replicas: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Replica name -> desired spec.evictionRequested for replicas in scheduledReplica.

    lm v1.7.2 node_controller.go:1843 syncReplicaEvictionRequested (user-requested part only; the
    sim has no cordon/drain policy). Iterates ``scheduledReplica``, which is emptied on a NotReady
    disk (node_controller.go:821-823), so eviction does nothing there.
    """
    spec = node.get("spec", {})
    by_name = {r["metadata"]["name"]: r for r in replicas}
    out: dict[str, bool] = {}
    for disk_name, dspec in (spec.get("disks") or {}).items():
        entry = (status.get("diskStatus") or {}).get(disk_name) or {}
        want = bool(spec.get("evictionRequested")) or bool(dspec.get("evictionRequested"))
        for rname in entry.get("scheduledReplica") or {}:
            r = by_name.get(rname)
            if r is None:
                continue
            if bool(r.get("spec", {}).get("evictionRequested")) != want:
                out[rname] = want
    return out


class ManagerPanic(Exception):
    """longhorn-manager would panic here: the process exits and its pod restarts (crash loop)."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(f"{message} ({where})")
        self.message = message
        self.where = where


NIL_DEREFERENCE = "runtime error: invalid memory address or nil pointer dereference"


def backing_image_eviction_updates(
    node: Mapping[str, Any], status: Mapping[str, Any], backing_images: Sequence[Mapping[str, Any]],
    release: Release = DEFAULT_RELEASE,
) -> tuple[list[tuple[str, str, bool]], list[str]]:
    """((bi, diskUUID, evictionRequested) flips, log lines) of syncBackingImageEvictionRequested
    (lm v1.7.2 node_controller.go:1780-1841).

    Only BackingImages whose *status* lists the disk are looked at (``GetDiskBackingImageMap``,
    datastore/longhorn.go:5423), so a stuck spec-only copy is never flagged. Nothing happens unless
    the node or one of its disks is evicting (1782-1784): clearing every flag never resets a copy's
    flag. A status entry whose spec entry is gone is dereferenced as nil: on the evicting branch
    (1806; v1.8.1 :1635, v1.9.0 :1680) and, before v1.8, on the non-evicting one (1811) this
    raises :class:`ManagerPanic`; v1.7.4, v1.8.2 and v1.9.1 check first and log instead
    (v1.9.1 :1670-1689).
    """
    spec = node.get("spec", {})
    node_evicting = bool(spec.get("evictionRequested"))
    if not node_evicting and not any((d or {}).get("evictionRequested") for d in (spec.get("disks") or {}).values()):
        return [], []
    out: list[tuple[str, str, bool]] = []
    notes: list[str] = []
    for disk_name, dspec in (spec.get("disks") or {}).items():
        uuid = ((status.get("diskStatus") or {}).get(disk_name) or {}).get("diskUUID", "")
        want = node_evicting or bool(dspec.get("evictionRequested"))
        for bi in backing_images:
            if not uuid or uuid not in ((bi.get("status") or {}).get("diskFileStatusMap") or {}):
                continue
            fspec = ((bi.get("spec") or {}).get("diskFileSpecMap") or {}).get(uuid)
            if fspec is None:
                guarded = release.backing_image_eviction_guarded or (not want and release.non_evicting_branch_guarded)
                if not guarded:
                    raise ManagerPanic(NIL_DEREFERENCE, release.backing_image_eviction_panic_site(want))
                if release.backing_image_eviction_guarded:
                    notes.append(f"Evicting missing disk {uuid} from backing image {bi['metadata']['name']}. "
                                 f"Will enqueue then resync the node {node['metadata']['name']}")
                continue
            if want and not fspec.get("evictionRequested"):
                out.append((bi["metadata"]["name"], uuid, True))
            elif not want and fspec.get("evictionRequested"):
                out.append((bi["metadata"]["name"], uuid, False))
    return out, notes
