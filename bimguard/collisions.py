"""Collision groups and their visible symptoms.

A group is two or more v1 disks whose recorded UUIDs share their first four hex characters, so
they want the same BIM name (`types/types.go:385 @v1.7.2`). Block (v2) disks have no BIM and never
collide: v1.7 refuses backing images on v2 volumes (`webhook/resources/volume/validator.go:153-154
@v1.7.2`), later releases skip v2 copies when creating BIMs
(`controller/backing_image_controller.go:1199-1203 @v1.9.0`). A symptom is a backing-image copy
Longhorn asked for on a disk whose BIM name is taken by another disk's BIM: the create fails with
AlreadyExists and the whole BackingImage sync stops there
(`controller/backing_image_controller.go:742-746 @v1.7.2`), so the copy and the replicas waiting
for it are stuck.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from operator import attrgetter
from typing import Iterable, Literal

from bimguard.bim import LonghornInfo
from bimguard.model import BackingImage, Bim, Disk, DiskType, Replica

GroupKind = Literal["prefix", "duplicate-uuid"]


@dataclass(frozen=True, slots=True)
class CollisionGroup:
    prefix: str
    kind: GroupKind
    disks: tuple[Disk, ...]  # sorted by (node, disk name)


_by_node_and_name = attrgetter("node", "name")


def find_groups(disks: Iterable[Disk]) -> list[CollisionGroup]:
    by_prefix: dict[str, list[Disk]] = defaultdict(list)
    for d in disks:
        if d.type is DiskType.V1 and d.uuid:
            by_prefix[d.prefix].append(d)
    groups = []
    for prefix in sorted(p for p, members in by_prefix.items() if len(members) > 1):
        members = by_prefix[prefix]
        members.sort(key=_by_node_and_name)
        kind: GroupKind = "duplicate-uuid" if len({d.uuid for d in members}) < len(members) else "prefix"
        groups.append(CollisionGroup(prefix, kind, tuple(members)))
    return groups


@dataclass(frozen=True, slots=True)
class BimOwner:
    node: str
    disk: str | None  # None: the BIM's disk is not among the known disks
    uuid: str


@dataclass(frozen=True, slots=True)
class Symptom:
    backing_image: str
    node: str | None  # None: the UUID matches no disk (a stale reference)
    disk: str | None
    disk_uuid: str
    expected_bim_name: str
    bim_owner: BimOwner
    stuck_replicas: tuple[str, ...]


def bim_owner(bim: Bim, disks_by_node_uuid: dict[tuple[str, str], Disk]) -> BimOwner:
    disk = disks_by_node_uuid.get((bim.node, bim.owner_uuid))
    return BimOwner(bim.node, disk.name if disk else None, bim.owner_uuid)


def find_symptoms(
    info: LonghornInfo,
    disks: Iterable[Disk],
    replicas: Iterable[Replica],
    backing_images: Iterable[BackingImage],
    bims: Iterable[Bim],
) -> list[Symptom]:
    disks = list(disks)
    bims = [b for b in bims if not b.deleting]
    by_name = {b.name: b for b in bims}
    uuids_with_bim = {u for b in bims for u in b.disk_uuids}
    disks_by_uuid: dict[str, list[Disk]] = defaultdict(list)
    disks_by_node_uuid: dict[tuple[str, str], Disk] = {}
    for d in disks:
        if d.uuid:
            disks_by_uuid[d.uuid].append(d)
            disks_by_node_uuid[(d.node, d.uuid)] = d
    waiting: dict[tuple[str, str], list[Replica]] = defaultdict(list)
    for r in replicas:
        if r.backing_image and r.state != "running":
            for u in r.disk_uuids:
                waiting[(r.backing_image, u)].append(r)

    symptoms = []
    for bi in sorted(backing_images, key=lambda b: b.name):
        for uuid in sorted(bi.spec_disks):
            # A missing status entry alone is normal for a copy being created; it is stuck only
            # when no BIM serves the UUID and the name it needs belongs to another disk's BIM.
            if uuid in bi.status_disks or uuid in uuids_with_bim:
                continue
            name = info.expected_bim_name(uuid)
            holder = by_name.get(name) if name else None
            if holder is None or holder.owner_uuid == uuid:
                continue
            owner = bim_owner(holder, disks_by_node_uuid)
            targets: list[Disk | None] = list(disks_by_uuid.get(uuid, [])) or [None]
            for disk in targets:
                stuck = sorted(
                    r.name for r in waiting.get((bi.name, uuid), []) if disk is None or r.node == disk.node
                )
                symptoms.append(
                    Symptom(
                        backing_image=bi.name,
                        node=disk.node if disk else None,
                        disk=disk.name if disk else None,
                        disk_uuid=uuid,
                        expected_bim_name=name or "",
                        bim_owner=owner,
                        stuck_replicas=tuple(stuck),
                    )
                )
    return symptoms
