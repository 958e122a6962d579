"""Which disk of a collision group keeps its UUID, and what regenerating the others takes.

Keep rule, in order (KB "troubleshooting-backing-image-manager-cr-naming"; the repair flow in
docs/design.md):
1. the disk that owns the existing BIM of the colliding name (its copies are served; renaming
   it would strand them);
2. else the disk with the most data (replicas + backing-image copies);
3. else the smallest (node, disk) pair, so the plan is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from bimguard.bim import prefix_bim_name
from bimguard.collisions import CollisionGroup
from bimguard.dependents import Dependents, DependentsIndex
from bimguard.model import Bim, Disk


@dataclass(frozen=True, slots=True)
class Regenerate:
    disk: Disk
    needs_eviction: bool
    reason: str


@dataclass(frozen=True, slots=True)
class GroupPlan:
    group: CollisionGroup
    keep: Disk
    keep_reason: str
    regenerate: tuple[Regenerate, ...]
    dependents: tuple[Dependents, ...]  # of group.disks, in the same order


def plan_group(
    group: CollisionGroup,
    deps: DependentsIndex,
    bims_by_name: Mapping[str, Bim],
    bim_image: str | None,
) -> GroupPlan:
    keep, keep_reason = None, ""
    if bim_image:
        name = prefix_bim_name(bim_image, group.prefix)
        bim = bims_by_name.get(name)
        if bim is not None and not bim.deleting:
            owners = [d for d in group.disks if d.node == bim.node and d.uuid == bim.owner_uuid]
            if owners:
                keep, keep_reason = owners[0], f"owns {name}"
    held = tuple(deps.of(d) for d in group.disks)
    if keep is None:
        counts = [h.data_count for h in held]
        most = max(counts)
        fullest = counts.index(most)  # the first of them: disks are sorted by key
        keep = group.disks[fullest]
        if counts.count(most) == 1:
            keep_reason = f"holds the most data ({held[fullest].describe()})"
        else:
            keep_reason = "first by node and disk name (no disk owns the BIM; equal data)"

    regenerate = []
    for disk, data in zip(group.disks, held):
        if disk is keep:
            continue
        if data.holds_data:
            reason = f"holds {data.describe()}: drain it with Longhorn's disk eviction before the UUID changes"
        else:
            reason = "holds no data: the UUID can be regenerated directly"
        if group.kind == "duplicate-uuid" and disk.uuid == keep.uuid:
            reason = f"same full UUID as {keep.node}/{keep.name} (a cloned disk); " + reason
        regenerate.append(Regenerate(disk, data.holds_data, reason))
    return GroupPlan(group, keep, keep_reason, tuple(regenerate), held)
