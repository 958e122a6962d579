"""Volumes, engines, attachment tickets and the replica scheduler of the simulated Longhorn. Pure.

What the emulator's volume controller (``volume_controller.py``) decides with, each rule cited at
lm v1.7.2 (the same code at v1.8.1, v1.9.0 and v1.9.1 unless said otherwise):

- Replica health lives in the Replica's spec: ``healthyAt`` is stamped by the volume controller
  the first time the engine reports the replica ``RW`` (controller/volume_controller.go:739-744),
  ``lastHealthyAt`` on every transition into ``RW`` (745-757), ``failedAt``/``lastFailedAt`` when
  the engine reports ``ERR`` (721-736) or a rebuild is cut short by a detach (1975-1996). A
  replica with neither ``healthyAt`` nor ``failedAt`` is "new" (being created, scheduled or rebuilt).
- The scheduler (scheduler/replica_scheduler.go) places a replica on a disk that is in spec and
  status, ``allowScheduling`` and not ``evictionRequested``, ``Schedulable=True`` (106-123), on a
  node that is Ready, Schedulable and ``allowScheduling`` (492-521), with room for it (794-801,
  424-434), honouring replica node/zone/disk anti-affinity (192-366, 467-490), and takes the disk
  with the most ``storageAvailable - storageReserved`` (523-557).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from bimguard.sim.longhorn.node_status import get_condition

ENGINE_IMAGE = "longhornio/longhorn-engine:v1.7.2"
# Attachment ticket types and priorities (lm k8s/pkg/apis/longhorn/v1beta2/volumeattachment.go:25-75).
TICKET_CSI = "csi-attacher"
TICKET_EVICTION = "volume-eviction-controller"
TICKET_PRIORITY = {"volume-restore-controller": 2000, "volume-expansion-controller": 2000, "longhorn-api": 1000,
                   TICKET_CSI: 900, "salvage-controller": 900, "share-manager-controller": 900,
                   "snapshot-controller": 800, "backup-controller": 800, "volume-clone-controller": 800,
                   TICKET_EVICTION: 800, "bim-ds-controller": 800, "volume-rebuilding-controller": 800}
MODE_RW, MODE_WO, MODE_ERR = "RW", "WO", "ERR"
# Scheduling errors (lm k8s/pkg/apis/longhorn/v1beta2/node.go:48-58).
ERR_INSUFFICIENT_STORAGE = "insufficient storage"
ERR_DISKS_UNAVAILABLE = "disks are unavailable"
ERR_NODES_UNAVAILABLE = "nodes are unavailable"
ERR_SCHEDULING_FAILED = "replica scheduling failed"
ERR_PRECHECK = "precheck new replica failed"
# The rebuild counter a replacement replica starts with, so a failed rebuild is never reused
# (lm scheduler/replica_scheduler.go:18 FailedReplicaMaxRetryCount, volume_controller.go:3680).
FAILED_REPLICA_MAX_RETRY_COUNT = 5


def ticket_id(kind: str, ident: str) -> str:
    """lm volumeattachment.go GetAttachmentTicketID: "<type>-<id>", at most 253 characters."""
    return f"{kind}-{ident}"[:253]


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def volume_of(replica: Mapping[str, Any]) -> str:
    return str(_spec(replica).get("volumeName") or _labels(replica).get("longhornvolume") or "")


def is_new(r: Mapping[str, Any]) -> bool:
    """Never healthy, never failed (lm volume_controller.go:571-574)."""
    return not _spec(r).get("healthyAt") and not _spec(r).get("failedAt")


def is_healthy_and_active(r: Mapping[str, Any]) -> bool:
    """lm volume_controller.go:884-895 isHealthyAndActiveReplica."""
    s = _spec(r)
    return not s.get("failedAt") and bool(s.get("healthyAt")) and bool(s.get("active", True))


def is_available_healthy(r: Mapping[str, Any]) -> bool:
    """lm datastore/longhorn.go:1692-1704 IsAvailableHealthyReplica (``active`` not looked at)."""
    s = _spec(r)
    return not (r.get("metadata") or {}).get("deletionTimestamp") and not s.get("failedAt") and bool(s.get("healthyAt"))


def is_rebuilding(r: Mapping[str, Any]) -> bool:
    """lm controller/replica_controller.go:448-450 IsRebuildingReplica."""
    s = _spec(r)
    return int(s.get("rebuildRetryCount") or 0) != 0 and not s.get("healthyAt") and not s.get("failedAt")


def replenish_count(volume: Mapping[str, Any], replicas: Iterable[Mapping[str, Any]]) -> int:
    """lm volume_controller.go:2882-2933 getReplenishReplicasCount without data locality and
    auto-balance: replicas that are not failed, not evicting and active count as usable."""
    usable = sum(1 for r in replicas if not _spec(r).get("failedAt") and not _spec(r).get("evictionRequested")
                 and _spec(r).get("active", True))
    return max(0, int(_spec(volume).get("numberOfReplicas") or 0) - usable)


def engine_status_synced(engine: Mapping[str, Any], replicas: Iterable[Mapping[str, Any]]) -> bool:
    """lm volume_controller.go:3008-3032 hasEngineStatusSynced."""
    addresses = dict(_spec(engine).get("replicaAddressMap") or {})
    modes = dict((engine.get("status") or {}).get("replicaModeMap") or {})
    scheduled = sum(1 for r in replicas if not _spec(r).get("failedAt") and _spec(r).get("nodeID")
                    and _spec(r).get("active", True))
    if len(addresses) != scheduled or len(addresses) != len(modes):
        return False
    return all(name in modes and modes[name] != MODE_ERR for name in addresses)


def rebuilding_count(engine: Mapping[str, Any]) -> int:
    """lm volume_controller.go:2339-2356 getRebuildingReplicaCount."""
    status = engine.get("status") or {}
    modes = status.get("replicaModeMap") or {}
    return sum(1 for m in modes.values() if m == MODE_WO) + \
        sum(1 for name in (status.get("currentReplicaAddressMap") or {}) if name not in modes)


@dataclass(frozen=True)
class SchedulingSettings:
    """The settings the replica scheduler reads (lm types/setting.go defaults)."""

    replica_soft_anti_affinity: bool = False  # replica-soft-anti-affinity (setting.go:494)
    replica_zone_soft_anti_affinity: bool = True  # replica-zone-soft-anti-affinity (setting.go:778)
    replica_disk_soft_anti_affinity: bool = True  # replica-disk-soft-anti-affinity (setting.go:1397)
    minimal_available_percentage: int = 25  # storage-minimal-available-percentage (setting.go:568)
    over_provisioning_percentage: int = 100  # storage-over-provisioning-percentage (setting.go:555)

    @classmethod
    def from_settings(cls, value: Any) -> "SchedulingSettings":
        """``value(name, default)`` reads a Setting's value."""
        def flag(name: str, default: bool) -> bool:
            return str(value(name, str(default).lower())).lower() == "true"

        return cls(flag("replica-soft-anti-affinity", False), flag("replica-zone-soft-anti-affinity", True),
                   flag("replica-disk-soft-anti-affinity", True),
                   int(value("storage-minimal-available-percentage", "25")),
                   int(value("storage-over-provisioning-percentage", "100")))


@dataclass(frozen=True)
class Candidate:
    node: str
    disk_name: str
    uuid: str
    path: str
    usable: int  # storageAvailable - storageReserved


@dataclass
class Placement:
    candidates: dict[str, Candidate] = field(default_factory=dict)  # disk UUID -> candidate
    errors: list[str] = field(default_factory=list)

    def message(self) -> str:
        """util.MultiError.Join: de-duplicated, sorted, joined with ";" (lm util/multierror.go)."""
        return ";".join(sorted(set(self.errors)))


def _override(setting: bool, field_value: str | None) -> bool:
    """A volume field overrides its setting unless "" or "ignored" (replica_scheduler.go:212-244)."""
    if field_value in (None, "", "ignored"):
        return setting
    return field_value == "enabled"


def _schedulable_node(node: Mapping[str, Any]) -> bool:
    """replica_scheduler.go:492-521 getNodeInfo."""
    conds = (node.get("status") or {}).get("conditions")
    return (not (node.get("metadata") or {}).get("deletionTimestamp")
            and get_condition(conds, "Ready").get("status") == "True"
            and get_condition(conds, "Schedulable").get("status") == "True"
            and bool(_spec(node).get("allowScheduling", True)))


def _disks_of(node: Mapping[str, Any], volume: Mapping[str, Any], volume_replicas: Sequence[Mapping[str, Any]],
              settings: SchedulingSettings) -> tuple[dict[str, Candidate], list[str]]:
    """FindDiskCandidates' disk set (106-123) and filterNodeDisksForReplica (368-465), filesystem only."""
    name = node["metadata"]["name"]
    spec_disks = _spec(node).get("disks") or {}
    status = (node.get("status") or {}).get("diskStatus") or {}
    eligible = {}
    for dname, entry in status.items():
        dspec = spec_disks.get(dname)
        if dspec is None or not dspec.get("allowScheduling") or dspec.get("evictionRequested"):
            continue
        if get_condition(entry.get("conditions"), "Schedulable").get("status") != "True" or not entry.get("diskUUID"):
            continue
        eligible[dname] = (dspec, entry)
    if not eligible:
        return {}, [ERR_DISKS_UNAVAILABLE]
    size = int(_spec(volume).get("size") or 0)
    out: dict[str, Candidate] = {}
    errors: list[str] = []
    for dname, (dspec, entry) in eligible.items():
        if (dspec.get("diskType") or "filesystem") != "filesystem":
            continue
        maximum = int(entry.get("storageMaximum") or 0)
        available = int(entry.get("storageAvailable") or 0)
        reserved = int(dspec.get("storageReserved") or 0)
        scheduled = int(entry.get("storageScheduled") or 0)
        listed = entry.get("scheduledReplica") or {}
        scheduled += sum(int(_spec(r).get("volumeSize") or 0) for r in volume_replicas
                         if _spec(r).get("nodeID") == name and r["metadata"]["name"] not in listed)
        fits = (maximum > 0 and available > 0
                and available > maximum * settings.minimal_available_percentage / 100
                and size + scheduled <= (maximum - reserved) * settings.over_provisioning_percentage / 100)
        if not fits:
            errors.append(ERR_INSUFFICIENT_STORAGE)
            continue
        out[entry["diskUUID"]] = Candidate(name, dname, entry["diskUUID"], dspec.get("path", ""), available - reserved)
    return out, errors


def find_disk_candidates(volume: Mapping[str, Any], volume_replicas: Sequence[Mapping[str, Any]],
                         nodes: Sequence[Mapping[str, Any]], settings: SchedulingSettings) -> Placement:
    """lm v1.7.2 scheduler/replica_scheduler.go:94-127 FindDiskCandidates with getDiskCandidates'
    anti-affinity tiers (192-366). Not emulated: node/disk selectors and tags, zones other than
    the one empty zone every simulated node is in, data locality, auto-balance."""
    node_soft = _override(settings.replica_soft_anti_affinity, _spec(volume).get("replicaSoftAntiAffinity"))
    zone_soft = _override(settings.replica_zone_soft_anti_affinity, _spec(volume).get("replicaZoneSoftAntiAffinity"))
    disk_soft = _override(settings.replica_disk_soft_anti_affinity, _spec(volume).get("replicaDiskSoftAntiAffinity"))
    usable_nodes = {n["metadata"]["name"]: n for n in nodes if _schedulable_node(n)}
    if not usable_nodes:
        return Placement(errors=[ERR_NODES_UNAVAILABLE])
    # getCurrentNodesAndZones (954-1006): failed replicas are not reusable in the emulator, so
    # they never count; evicting ones still do.
    used: set[str] = set()
    only_evicting: dict[str, bool] = {}
    for r in volume_replicas:
        node = _spec(r).get("nodeID")
        if not node or (r.get("metadata") or {}).get("deletionTimestamp") or _spec(r).get("failedAt"):
            continue
        if node in usable_nodes:
            if _spec(r).get("evictionRequested"):
                only_evicting.setdefault(node, True)
            else:
                only_evicting[node] = False
            used.add(node)
    zone_used = bool(used)  # every simulated node is in the zone ""
    zone_only_evicting = bool(used) and all(only_evicting.get(n) for n in used)
    unused = {n: usable_nodes[n] for n in usable_nodes if n not in used}
    after_eviction = {n: usable_nodes[n] for n in usable_nodes if only_evicting.get(n)}
    in_unused_zone = {} if zone_used else dict(usable_nodes)
    in_unused_zone_after_eviction = dict(after_eviction) if zone_only_evicting else {}

    errors: list[str] = []

    def from_nodes(group: Mapping[str, Mapping[str, Any]]) -> dict[str, Candidate]:
        found: dict[str, Candidate] = {}
        for node in group.values():
            disks, errs = _disks_of(node, volume, volume_replicas, settings)
            found.update(disks)
            errors.extend(errs)
        # filterDisksWithMatchingReplicas (467-490)
        per_disk: dict[str, int] = {}
        for r in volume_replicas:
            per_disk[str(_spec(r).get("diskID") or "")] = per_disk.get(str(_spec(r).get("diskID") or ""), 0) + 1
        empty = {u: c for u, c in found.items() if per_disk.get(u, 0) == 0}
        return empty if empty or not disk_soft else found

    tiers: list[Mapping[str, Mapping[str, Any]]] = [in_unused_zone]
    if not zone_soft:
        tiers.append(in_unused_zone_after_eviction)
    elif not node_soft:
        tiers += [unused, after_eviction]
    else:
        tiers += [unused, {n: usable_nodes[n] for n in used}]
    for group in tiers:
        found = from_nodes(group)
        if found:
            return Placement(found)
    return Placement(errors=errors or [ERR_SCHEDULING_FAILED])


def pick_disk(placement: Placement, rng: random.Random) -> Candidate:
    """replica_scheduler.go:523-557 getDiskWithMostUsableStorage; ties go to whichever disk Go's
    map iteration visits last, i.e. any of them."""
    best = max(c.usable for c in placement.candidates.values())
    return rng.choice(sorted((c for c in placement.candidates.values() if c.usable == best), key=lambda c: c.uuid))


def go_map_order(keys: Iterable[str], rng: random.Random) -> list[str]:
    """Go randomises map iteration: where Longhorn's outcome depends on it, so does the emulator's."""
    out = list(keys)
    rng.shuffle(out)
    return out


def volume_manifest(name: str, size: int, replicas: int, backing_image: str | None = None, *,
                    anti_affinity: str = "ignored") -> dict[str, Any]:
    """A Volume as Longhorn's API/CSI creates it (fields of the v1.7.2 CRD)."""
    return {
        "kind": "Volume",
        "metadata": {"name": name, "finalizers": ["longhorn.io"], "labels": {"longhornvolume": name}},
        "spec": {"Standby": False, "accessMode": "rwo", "backingImage": backing_image or "", "dataEngine": "v1",
                 "dataLocality": "disabled", "disableFrontend": False, "frontend": "blockdev", "image": ENGINE_IMAGE,
                 "lastAttachedBy": "", "migratable": False, "migrationNodeID": "", "nodeID": "",
                 "numberOfReplicas": replicas, "replicaAutoBalance": "ignored",
                 "replicaDiskSoftAntiAffinity": "ignored", "replicaSoftAntiAffinity": anti_affinity,
                 "replicaZoneSoftAntiAffinity": "ignored", "revisionCounterDisabled": True, "size": str(size),
                 "snapshotMaxCount": 250, "snapshotMaxSize": "0", "staleReplicaTimeout": 30},
    }


def engine_manifest(volume: Mapping[str, Any]) -> dict[str, Any]:
    """lm volume_controller.go createEngine: ``<volume>-e-0`` (the first engine's name)."""
    name = volume["metadata"]["name"]
    return {
        "kind": "Engine",
        "metadata": {"name": f"{name}-e-0", "finalizers": ["longhorn.io"],
                     "labels": {"longhornvolume": name, "longhorn.io/volume": name}},
        "spec": {"active": True, "dataEngine": "v1", "desireState": "stopped", "disableFrontend": False,
                 "frontend": "blockdev", "image": _spec(volume).get("image") or ENGINE_IMAGE, "logRequested": False,
                 "nodeID": "", "replicaAddressMap": {}, "revisionCounterDisabled": True, "salvageRequested": False,
                 "volumeName": name, "volumeSize": str(_spec(volume).get("size") or "0")},
    }


def attachment_manifest(volume: str) -> dict[str, Any]:
    """The LH VolumeAttachment, named after the volume (lm types/types.go:1159)."""
    return {"kind": "VolumeAttachment", "metadata": {"name": volume, "labels": {"longhornvolume": volume}},
            "spec": {"attachmentTickets": {}, "volume": volume}}


def ticket(kind: str, ident: str, node: str, parameters: dict[str, str] | None = None) -> dict[str, Any]:
    tid = ticket_id(kind, ident)
    return {"id": tid, "type": kind, "nodeID": node, "parameters": dict(parameters or {}), "generation": 0}


def new_replica(volume: Mapping[str, Any], engine: Mapping[str, Any], name: str, *, rebuilding: bool) -> dict[str, Any]:
    """lm volume_controller.go:3632-3656 newReplica (+3671-3694 createReplica): unscheduled,
    ``desireState: stopped``; a replacement for an existing volume carries rebuildRetryCount 5."""
    vname = volume["metadata"]["name"]
    spec = _spec(volume)
    labels = {"longhornvolume": vname}
    if spec.get("backingImage"):
        labels["longhorn.io/backing-image"] = spec["backingImage"]
    return {
        "kind": "Replica",
        "metadata": {"name": name, "labels": labels, "finalizers": ["longhorn.io"]},
        "spec": {"active": True, "backendStoreDriver": "", "backingImage": spec.get("backingImage") or "",
                 "dataDirectoryName": "", "dataEngine": "v1", "desireState": "stopped", "diskID": "",
                 "diskPath": "", "engineImage": "", "engineName": engine["metadata"]["name"],
                 "evictionRequested": False, "failedAt": "", "hardNodeAffinity": "", "healthyAt": "",
                 "image": spec.get("image") or ENGINE_IMAGE, "lastFailedAt": "", "lastHealthyAt": "",
                 "logRequested": False, "nodeID": "", "rebuildRetryCount": FAILED_REPLICA_MAX_RETRY_COUNT if rebuilding else 0,
                 "revisionCounterDisabled": True, "salvageRequested": False, "snapshotMaxCount": 250,
                 "snapshotMaxSize": "0", "unmapMarkDiskChainRemovedEnabled": False, "volumeName": vname,
                 "volumeSize": str(spec.get("size") or "0")},
    }


def place(replica: dict[str, Any], where: Candidate, data_directory: str) -> None:
    """scheduleReplicaToDisk (replica_scheduler.go:523-537) and the labels the datastore derives
    from the spec on every write (lm datastore/longhorn.go:1468,3121)."""
    replica["spec"].update(nodeID=where.node, diskID=where.uuid, diskPath=where.path, dataDirectoryName=data_directory)
    replica["metadata"].setdefault("labels", {}).update(longhornnode=where.node, longhorndiskuuid=where.uuid)
