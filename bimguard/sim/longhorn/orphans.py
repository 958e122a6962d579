"""Orphaned replica directories: the node controller's Orphan bookkeeping and the orphan controller.

lm v1.7.2 node_controller.go:1502-1630 (syncOrphans), orphan_controller.go:201-441. Pure parts: the
Orphan name (lm v1.7.2 types/types.go:685), the new/missing diff (node_controller.go:1518), the
DataCleanable rule (orphan_controller.go:375-441). Deleting an Orphan whose DataCleanable is True
deletes the directory with its data (orphan_controller.go:293-300) -- this is how a UUID change with
replica directories left on the disk destroys data when ``orphan-auto-deletion`` is on
(node_controller.go:1557,1584).
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from bimguard.sim.clock import SimClock
from bimguard.sim.longhorn import Release
from bimguard.sim.longhorn.node_status import get_condition, set_condition

FINALIZER = "longhorn.io"


def auto_deletion_grace(release: Release, setting: Any) -> float | None:
    """Whether the node controller deletes cleanable replica-data orphans by itself, and after how
    many (Longhorn) seconds; None: never. ``setting(name, default)`` reads a Setting.

    v1.7/v1.8: boolean ``orphan-auto-deletion``, no grace (lm v1.7.2 node_controller.go:1556-1591).
    v1.9: ``orphan-resource-auto-deletion`` is a ``;``-separated list; ``replica-data`` turns it on,
    after ``orphan-resource-auto-deletion-grace-period`` seconds (default 300; lm v1.9.0
    types/setting.go:103-104,1063-1090,1807-1830; node_controller.go:1422-1447).
    """
    if release.orphan_auto_deletion_setting == "orphan-auto-deletion":
        return 0.0 if str(setting("orphan-auto-deletion", "false")).lower() == "true" else None
    items = {i.strip() for i in str(setting("orphan-resource-auto-deletion", "")).split(";") if i.strip()}
    if "replica-data" not in items:
        return None
    try:
        return float(setting("orphan-resource-auto-deletion-grace-period", "300"))
    except ValueError:
        return 300.0


def age(orphan: Mapping[str, Any], clock: SimClock) -> float:
    """Longhorn seconds since the Orphan was created (its creationTimestamp is real time)."""
    stamp = (orphan.get("metadata") or {}).get("creationTimestamp") or ""
    try:
        created = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(timezone.utc) - created).total_seconds()) / clock.time_scale


def orphan_name(node_id: str, disk_name: str, disk_path: str, disk_uuid: str, data_dir: str) -> str:
    """``orphan-`` + sha256("<node>-<diskName>-<diskPath>-<diskUUID>-<dataDir>") (lm types/types.go:685)."""
    raw = f"{node_id}-{disk_name}-{disk_path}-{disk_uuid}-{data_dir}".strip()
    return "orphan-" + hashlib.sha256(raw.encode()).hexdigest()


def orphan_manifest(node: Mapping[str, Any], disk_name: str, disk_uuid_in_cfg: str, data_dir: str) -> dict[str, Any]:
    """lm v1.7.2 node_controller.go:1603 createOrphan; labels as the orphan mutator sets them."""
    name = node["metadata"]["name"]
    dspec = node["spec"]["disks"][disk_name]
    recorded = node["status"]["diskStatus"][disk_name].get("diskUUID", "")
    return {
        "kind": "Orphan",
        "metadata": {
            "name": orphan_name(name, disk_name, dspec.get("path", ""), disk_uuid_in_cfg, data_dir),
            "labels": {
                "longhorn.io/component": "orphan",
                "longhorn.io/managed-by": "longhorn-manager",
                "longhorn.io/orphan-type": "replica",
                "longhornnode": name,
            },
            "finalizers": [FINALIZER],
        },
        "spec": {
            "nodeID": name,
            "orphanType": "replica",
            "parameters": {
                "DataName": data_dir,
                "DiskName": disk_name,
                "DiskUUID": recorded,
                "DiskPath": dspec.get("path", ""),
                "DiskType": dspec.get("diskType", "filesystem"),
            },
        },
    }


def orphan_diff(
    node_id: str, disk_name: str, disk_uuid: str, disk_path: str, found_dirs: frozenset[str],
    existing: Sequence[Mapping[str, Any]],
) -> tuple[set[str], set[str]]:
    """(new data dirs without an Orphan, Orphan names whose dir is gone) for one disk."""
    names = {o["metadata"]["name"] for o in existing}
    new = {d for d in found_dirs if orphan_name(node_id, disk_name, disk_path, disk_uuid, d) not in names}
    missing: set[str] = set()
    for o in existing:
        p = (o.get("spec") or {}).get("parameters") or {}
        if p.get("DiskName") != disk_name or p.get("DiskUUID") != disk_uuid or p.get("DiskPath") != disk_path:
            continue
        if p.get("DataName") not in found_dirs:
            missing.add(o["metadata"]["name"])
    return new, missing


def data_cleanable_reason(orphan: Mapping[str, Any], node: Mapping[str, Any] | None, node_up: bool) -> str:
    """"" when DataCleanable=True, else the reason (lm v1.7.2 orphan_controller.go:375-441)."""
    if not node_up or node is None:
        return "NodeUnavailable"
    spec = node.get("spec", {})
    if spec.get("evictionRequested"):
        return "NodeEvicted"
    params = (orphan.get("spec") or {}).get("parameters") or {}
    uuid = params.get("DiskUUID", "")
    ready_disk = None
    for dname, entry in ((node.get("status") or {}).get("diskStatus") or {}).items():
        if entry.get("diskUUID") == uuid and get_condition(entry.get("conditions"), "Ready").get("status") == "True":
            ready_disk = dname
            break
    if ready_disk is None:
        return "DiskInvalid"
    dspec = (spec.get("disks") or {}).get(ready_disk) or {}
    if ready_disk != params.get("DiskName") or dspec.get("path") != params.get("DiskPath"):
        return "DiskChanged"
    if dspec.get("evictionRequested"):
        return "DiskEvicted"
    return ""


def orphan_status(orphan: Mapping[str, Any], node: Mapping[str, Any] | None, node_up: bool, owner: str, now: str) -> dict[str, Any]:
    status = dict(orphan.get("status") or {})
    status["ownerID"] = owner
    reason = data_cleanable_reason(orphan, node, node_up)
    conds = set_condition(status.get("conditions"), "DataCleanable", "False" if reason else "True", reason, "", now, [], "Normal")
    if get_condition(conds, "Error").get("status") != "True":
        conds = set_condition(conds, "Error", "False", "", "", now, [], "Normal")
    status["conditions"] = conds
    return status


def delete_orphan_data(host_dir_of: Any, orphan: Mapping[str, Any]) -> bool:
    """Delete ``<path>/replicas/<DataName>`` if DataCleanable=True (orphan_controller.go:272-330)."""
    if get_condition((orphan.get("status") or {}).get("conditions"), "DataCleanable").get("status") != "True":
        return False
    params = (orphan.get("spec") or {}).get("parameters") or {}
    target = host_dir_of(params.get("DiskPath", "")) / "replicas" / params.get("DataName", "")
    if params.get("DataName") and target.exists():
        shutil.rmtree(target)
        return True
    return False
