"""Everything a scan knows about one cluster, gathered from any source.

Sources (live API, kubectl dump, support bundle) decode objects and hand them to `add`; the
analysis only ever sees an `Inventory`, so every source gives the same answer for the same
objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bimguard import model
from bimguard import objects as wire


@dataclass
class Inventory:
    disks: list[model.Disk] = field(default_factory=list)
    replicas: list[model.Replica] = field(default_factory=list)
    backing_images: list[model.BackingImage] = field(default_factory=list)
    bims: list[model.Bim] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    skipped: list[model.Skipped] = field(default_factory=list)
    nodes: int = 0  # Longhorn Node objects that were usable
    # What else the source held, only to explain an input with no usable Node ("a v1 Node is not
    # a Longhorn Node"): documents and List items seen, and the objects not read, by (apiVersion, kind).
    objects: int = 0
    ignored: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, obj: wire.Node | wire.Replica | wire.BackingImage | wire.BackingImageManager | wire.Setting,
            source: str) -> None:
        if isinstance(obj, wire.Node):
            if not obj.metadata.name:
                self.skip(source, "Node", "", "metadata.name is missing")
                return
            disks, skipped = model.parse_node(obj, source)
            self.nodes += 1
            self.disks.extend(disks)
            self.skipped.extend(skipped)
        elif isinstance(obj, wire.Replica):
            self.replicas.append(model.parse_replica(obj))
        elif isinstance(obj, wire.BackingImage):
            self.backing_images.append(model.parse_backing_image(obj))
        elif isinstance(obj, wire.BackingImageManager):
            self.bims.append(model.parse_bim(obj))
        elif isinstance(obj, wire.Setting):
            # Only string-valued settings matter here (image, version); others are ignored.
            if isinstance(obj.value, str):
                self.settings[obj.metadata.name] = obj.value
        else:  # pragma: no cover - the decoder only produces the kinds above
            raise TypeError(type(obj))

    def skip(self, source: str, kind: str, name: str, error: str) -> None:
        self.skipped.append(model.Skipped(source, kind, name, error))

    def ignore(self, api_version: str | None, kind: str | None) -> None:
        key = (api_version or "", kind or "")
        self.ignored[key] = self.ignored.get(key, 0) + 1

    def merge(self, other: Inventory) -> None:
        self.disks.extend(other.disks)
        self.replicas.extend(other.replicas)
        self.backing_images.extend(other.backing_images)
        self.bims.extend(other.bims)
        self.settings.update(other.settings)
        self.skipped.extend(other.skipped)
        self.nodes += other.nodes
        self.objects += other.objects
        for key, n in other.ignored.items():
            self.ignored[key] = self.ignored.get(key, 0) + n
