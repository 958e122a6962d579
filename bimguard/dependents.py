"""What lives on a disk, and the one rule that says whether its UUID may simply change.

Objects refer to a disk by UUID (Longhorn selects Replicas and BIMs by a UUID label,
datastore/longhorn.go:2328,3065 @v1.7.2), and cloned disks can share a whole UUID, so a disk's
dependents are matched by node *and* UUID wherever the object names a node. Changing the UUID of
a disk that still holds data orphans that data, which `orphan-auto-deletion` then deletes
(controller/node_controller.go:1584-1587 and orphan_controller.go:313-328 @v1.7.2):
`Dependents.holds_data` is the single place that decides (docs/design.md, invariant 3).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

import msgspec

from bimguard.model import SPEC_ONLY, BackingImage, Bim, Disk, Replica


class Dependents(msgspec.Struct, frozen=True, gc=False):  # like bimguard.model's records: cheap to build
    replicas: tuple[str, ...] = ()
    backing_image_copies: dict[str, str] = msgspec.field(default_factory=dict)  # BI name -> file state
    bims: tuple[str, ...] = ()
    scheduled_replicas: tuple[str, ...] = ()

    @property
    def holds_data(self) -> bool:
        return bool(self.replicas or self.backing_image_copies or self.bims or self.scheduled_replicas)

    @property
    def data_count(self) -> int:
        """Replicas plus backing-image copies: how the repair plan weighs which disk to keep."""
        return len(self.replicas) + len(self.backing_image_copies)

    def describe(self) -> str:
        parts = []
        for count, noun in (
            (len(self.replicas), "replica"),
            (len(self.backing_image_copies), "backing-image copy"),
            (len(self.bims), "backing image manager"),
        ):
            if count:
                plural = noun if count == 1 else (noun[:-1] + "ies" if noun.endswith("copy") else noun + "s")
                parts.append(f"{count} {plural}")
        extra = set(self.scheduled_replicas) - set(self.replicas)
        if extra:
            parts.append(f"{len(extra)} scheduled replica{'s' if len(extra) != 1 else ''} without a Replica object")
        return ", ".join(parts) if parts else "no data"


class DependentsIndex:
    """Dependents of every disk, built once from an inventory's objects."""

    def __init__(
        self,
        disks: Iterable[Disk],
        replicas: Iterable[Replica],
        backing_images: Iterable[BackingImage],
        bims: Iterable[Bim],
    ) -> None:
        disks = list(disks)
        self._uuid_holders = Counter(d.uuid for d in disks if d.uuid)
        self._replicas: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in replicas:
            # spec.diskID and the label can disagree (Longhorn re-derives the label only when it
            # writes the Replica, datastore/longhorn.go:1475,1512 @v1.7.2): count both.
            for u in r.disk_uuids:
                self._replicas[(r.node, u)].append(r.name)
        self._bims: dict[tuple[str, str], list[Bim]] = defaultdict(list)
        for b in bims:
            for u in b.disk_uuids:
                self._bims[(b.node, u)].append(b)
        self._copies: dict[str, dict[str, str]] = defaultdict(dict)
        for bi in backing_images:
            for u, state in bi.copies().items():
                self._copies[u][bi.name] = state

    def of(self, disk: Disk) -> Dependents:
        if not disk.uuid:
            return Dependents(scheduled_replicas=disk.scheduled_replicas)
        key = (disk.node, disk.uuid)
        bims = self._bims.get(key, ())
        if self._uuid_holders[disk.uuid] == 1:
            copies = dict(self._copies.get(disk.uuid) or ())
        else:
            # A cloned UUID: BackingImage maps cannot tell the clones apart, only a BIM on this
            # node can say which copies are really here.
            known = self._copies.get(disk.uuid, {})
            copies = {bi: known.get(bi, SPEC_ONLY) for b in bims for bi in b.backing_images}
        replicas = self._replicas.get(key)
        return Dependents(
            replicas=tuple(sorted(replicas)) if replicas else (),
            backing_image_copies=copies,
            bims=tuple(sorted(b.name for b in bims)) if bims else (),
            scheduled_replicas=disk.scheduled_replicas,
        )
