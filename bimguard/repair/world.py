"""One snapshot of the cluster as the repair sees it. Pure: built from the lists the Job reads once
per pass (one list per resource, whatever the number of disks), queried by the decision code.

Disk references follow Longhorn: Replicas by ``spec.diskID`` and the ``longhorndiskuuid`` label
(they can disagree briefly), on the node of ``spec.nodeID``; BIMs by ``spec.diskUUID`` and the
``longhorn.io/disk-uuid`` label; backing-image copies by the keys of ``spec.diskFileSpecMap`` and
``status.diskFileStatusMap``; data sources by ``spec.diskUUID`` (lm v1.7.2 datastore/longhorn.go
:1468,2328,3065,3121).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from bimguard.decode import add_object
from bimguard.dependents import Dependents, DependentsIndex
from bimguard.inventory import Inventory
from bimguard.model import Disk, DiskType

Obj = Mapping[str, Any]
KINDS = {"nodes": "Node", "replicas": "Replica", "backingimages": "BackingImage",
         "backingimagemanagers": "BackingImageManager", "settings": "Setting"}


def _spec(o: Obj) -> Obj:
    return o.get("spec") or {}


def _status(o: Obj) -> Obj:
    return o.get("status") or {}


def _labels(o: Obj) -> Obj:
    return (o.get("metadata") or {}).get("labels") or {}


def name_of(o: Obj) -> str:
    return str((o.get("metadata") or {}).get("name") or "")


def deleting(o: Obj) -> bool:
    return bool((o.get("metadata") or {}).get("deletionTimestamp"))


def condition(conds: Iterable[Obj] | None, kind: str) -> Obj:
    return next((c for c in conds or () if c.get("type") == kind), {})


@dataclass(frozen=True)
class World:
    """Longhorn's objects (namespace of Longhorn) and bimguard's pods, as listed in one pass."""

    nodes: Mapping[str, Obj]
    replicas: tuple[Obj, ...] = ()
    backing_images: tuple[Obj, ...] = ()
    bims: tuple[Obj, ...] = ()
    data_sources: tuple[Obj, ...] = ()
    orphans: tuple[Obj, ...] = ()
    volumes: Mapping[str, Obj] = field(default_factory=dict)
    settings: Mapping[str, str] = field(default_factory=dict)
    pods: Mapping[str, Obj] = field(default_factory=dict)

    @classmethod
    def from_lists(cls, *, nodes: Iterable[Obj], replicas: Iterable[Obj] = (), backing_images: Iterable[Obj] = (),
                   bims: Iterable[Obj] = (), data_sources: Iterable[Obj] = (), orphans: Iterable[Obj] = (),
                   volumes: Iterable[Obj] = (), settings: Iterable[Obj] = (), pods: Iterable[Obj] = ()) -> "World":
        return cls(
            nodes={name_of(n): n for n in nodes}, replicas=tuple(replicas), backing_images=tuple(backing_images),
            bims=tuple(bims), data_sources=tuple(data_sources), orphans=tuple(orphans),
            volumes={name_of(v): v for v in volumes},
            settings={name_of(s): str(s.get("value", "")) for s in settings if isinstance(s.get("value", ""), str)},
            pods={name_of(p): p for p in pods},
        )

    # -- the scan's model of the same objects: one rule for "holds data" (bimguard.dependents)
    @functools.cached_property
    def inventory(self) -> Inventory:
        inv = Inventory()
        for plural, items in (("nodes", self.nodes.values()), ("replicas", self.replicas),
                              ("backingimages", self.backing_images), ("backingimagemanagers", self.bims)):
            for o in items:
                add_object({"apiVersion": "longhorn.io/v1beta2", "kind": KINDS[plural], **o}, "live", inv)
        for name, value in self.settings.items():
            add_object({"apiVersion": "longhorn.io/v1beta2", "kind": "Setting", "metadata": {"name": name},
                        "value": value}, "live", inv)
        return inv

    @functools.cached_property
    def _dependents(self) -> DependentsIndex:
        inv = self.inventory
        return DependentsIndex(inv.disks, inv.replicas, inv.backing_images, inv.bims)

    def dependents(self, node: str, disk: str) -> Dependents:
        d = self.disk(node, disk)
        return self._dependents.of(d) if d is not None else Dependents()

    def disk(self, node: str, disk: str) -> Disk | None:
        return next((d for d in self.inventory.disks if d.node == node and d.name == disk), None)

    # -- raw lookups
    def disk_spec(self, node: str, disk: str) -> Obj | None:
        n = self.nodes.get(node)
        return ((_spec(n).get("disks") or {}).get(disk)) if n else None

    def disk_status(self, node: str, disk: str) -> Obj | None:
        n = self.nodes.get(node)
        return ((_status(n).get("diskStatus") or {}).get(disk)) if n else None

    def node_ready(self, node: str) -> bool:
        n = self.nodes.get(node)
        return bool(n) and condition(_status(n).get("conditions"), "Ready").get("status") == "True"

    def disk_ready(self, node: str, disk: str) -> bool:
        entry = self.disk_status(node, disk) or {}
        return condition(entry.get("conditions"), "Ready").get("status") == "True"

    def v1_disks(self) -> Iterable[Disk]:
        return (d for d in self.inventory.disks if d.type is DiskType.V1)

    def replicas_on(self, node: str, uuid: str) -> list[Obj]:
        u = uuid.lower()
        return [r for r in self.replicas
                if (_spec(r).get("nodeID") or _labels(r).get("longhornnode")) == node
                and u in {str(_spec(r).get("diskID") or "").lower(), str(_labels(r).get("longhorndiskuuid") or "").lower()}]

    def replicas_of_volume(self, volume: str) -> list[Obj]:
        return [r for r in self.replicas
                if (_spec(r).get("volumeName") or _labels(r).get("longhornvolume")) == volume]

    def replicas_naming(self, uuid: str) -> list[Obj]:
        u = uuid.lower()
        return [r for r in self.replicas
                if u in {str(_spec(r).get("diskID") or "").lower(), str(_labels(r).get("longhorndiskuuid") or "").lower()}]

    def bims_on(self, node: str, uuid: str) -> list[Obj]:
        u = uuid.lower()
        return [b for b in self.bims if not deleting(b) and _spec(b).get("nodeID") == node
                and u in {str(_spec(b).get("diskUUID") or "").lower(), str(_labels(b).get("longhorn.io/disk-uuid") or "").lower()}]

    def bim_named(self, name: str) -> Obj | None:
        return next((b for b in self.bims if name_of(b) == name), None)

    def spec_copies(self, uuid: str) -> list[Obj]:
        """BackingImages whose spec asks for a copy on this UUID (keyed by the UUID as recorded)."""
        return [bi for bi in self.backing_images if uuid in (_spec(bi).get("diskFileSpecMap") or {})]

    def status_copies(self, uuid: str) -> list[Obj]:
        return [bi for bi in self.backing_images if uuid in (_status(bi).get("diskFileStatusMap") or {})]

    def untransferred_sources(self, uuid: str) -> list[Obj]:
        """Data sources still holding the only copy of a BackingImage's file on this UUID: eviction
        never moves them (lm backing_image_data_source_controller.go:402-406)."""
        return [s for s in self.data_sources
                if _spec(s).get("diskUUID") == uuid and not _spec(s).get("fileTransferred") and not deleting(s)]

    def orphans_on(self, node: str, uuid: str) -> list[Obj]:
        return [o for o in self.orphans if _spec(o).get("nodeID") == node
                and str((_spec(o).get("parameters") or {}).get("DiskUUID") or "").lower() == uuid.lower()]
