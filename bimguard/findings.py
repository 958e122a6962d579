"""The whole analysis of one inventory: groups, plans, symptoms, version, probabilities. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from bimguard import bim, probability
from bimguard.collisions import Symptom, find_groups, find_symptoms
from bimguard.dependents import DependentsIndex
from bimguard.inventory import Inventory
from bimguard.model import DiskType, Skipped
from bimguard.plan import GroupPlan, plan_group


@dataclass(frozen=True, slots=True)
class Findings:
    longhorn: bim.LonghornInfo
    disks_total: int
    disks_v1: int
    disks_v2: int
    disks_without_uuid: int
    plans: tuple[GroupPlan, ...]  # each with the dependents of its disks
    symptoms: tuple[Symptom, ...]
    skipped: tuple[Skipped, ...]
    v1_disks_with_uuid: int
    next_disk_collides: float
    birthday: float

    @property
    def informational(self) -> bool:
        """Groups do not break anything on a Longhorn whose BIM names use the whole UUID."""
        return self.longhorn.affected is False

    @property
    def actionable(self) -> bool:
        return bool(self.plans) and not self.informational


def analyze(inv: Inventory) -> Findings:
    info = bim.detect(inv.settings, inv.bims)
    deps = DependentsIndex(inv.disks, inv.replicas, inv.backing_images, inv.bims)
    bims_by_name = {b.name: b for b in inv.bims}
    plans = tuple(plan_group(g, deps, bims_by_name, info.bim_image) for g in find_groups(inv.disks))
    v1 = [d for d in inv.disks if d.type is DiskType.V1]
    v1_uuids = [d for d in v1 if d.uuid]
    return Findings(
        longhorn=info,
        disks_total=len(inv.disks),
        disks_v1=len(v1),
        disks_v2=len(inv.disks) - len(v1),
        disks_without_uuid=sum(1 for d in inv.disks if not d.uuid),
        plans=plans,
        symptoms=tuple(find_symptoms(info, inv.disks, inv.replicas, inv.backing_images, inv.bims)),
        skipped=tuple(inv.skipped),
        v1_disks_with_uuid=len(v1_uuids),
        next_disk_collides=probability.next_disk_collides(len({d.prefix for d in v1_uuids})),
        birthday=probability.birthday(len(v1_uuids)),
    )
