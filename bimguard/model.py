"""Domain records built from Longhorn objects, and the rules for building them.

A `Disk` is one entry of a Longhorn Node (spec.disks and/or status.diskStatus); its UUID is the
one recorded in `status.diskStatus[<disk>].diskUUID` (`k8s/pkg/apis/longhorn/v1beta2/node.go:116
@v1.7.2`). Parsing is pure: wire objects in, records and `Skipped` explanations out.
"""

from __future__ import annotations

import enum
import re

import msgspec

from bimguard import objects as wire

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Label keys Longhorn puts on objects and selects them by (types/types.go:116,149 and
# datastore/longhorn.go:2328,3065 @v1.7.2).
LABEL_REPLICA_DISK_UUID = "longhorndiskuuid"  # decoded by objects.ReplicaLabels
LABEL_BIM_DISK_UUID = "longhorn.io/disk-uuid"


class DiskType(enum.Enum):
    V1 = "filesystem"  # also an empty diskType: v1beta1 objects and pre-v1.5 disks
    V2 = "block"

    @classmethod
    def parse(cls, value: str | None) -> DiskType | None:
        if value in ("", None, "filesystem"):
            return cls.V1
        if value == "block":
            return cls.V2
        return None


def prefix_of(uuid: str) -> str:
    """The part of a disk UUID that names its BIM (lm v1.7.2 types/types.go:385)."""
    return uuid[:4].lower()


class _Record(msgspec.Struct, frozen=True, gc=False):
    """Records hold no cycles: untracked by the garbage collector (see objects._Wire)."""


class Skipped(_Record):
    """An object (or part of one) that could not be used, and why."""

    source: str
    kind: str
    name: str
    error: str


class Disk(_Record):
    node: str
    name: str
    path: str
    type: DiskType
    uuid: str  # "" until Longhorn records it
    ready: bool | None  # None: no Ready condition yet
    schedulable: bool | None
    scheduled_replicas: tuple[str, ...] = ()
    # `uuid` is lower-cased for comparing; this is the UUID exactly as Longhorn recorded it (a cfg
    # edited by hand may hold upper case), for whatever is written back or compared with the file:
    # Longhorn compares status and cfg as written (controller/node_controller.go:707 @v1.7.2).
    recorded_uuid: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.node, self.name)

    @property
    def prefix(self) -> str:
        return self.uuid[:4]  # parse_node stores UUIDs lower-cased


# The state of a copy Longhorn was asked for but never reported (no status entry).
SPEC_ONLY = "spec-only"


class Replica(_Record):
    name: str
    node: str
    disk_id: str  # spec.diskID
    disk_label: str  # label longhorndiskuuid; can briefly disagree with spec.diskID
    backing_image: str
    state: str

    @property
    def disk_uuids(self) -> tuple[str, ...]:
        """Every disk UUID the replica refers to: both while spec.diskID and the label disagree
        (longhorn-manager sets the label from spec.diskID only when it writes the Replica,
        `datastore/longhorn.go:1475,1512 @v1.7.2`)."""
        if self.disk_label and self.disk_label != self.disk_id:
            return (self.disk_id, self.disk_label) if self.disk_id else (self.disk_label,)
        return (self.disk_id,) if self.disk_id else ()


class BackingImage(_Record):
    name: str
    spec_disks: frozenset[str]  # UUIDs in spec.diskFileSpecMap (and v1beta1 spec.disks)
    status_disks: dict[str, str] = {}  # UUID -> file state

    def copies(self) -> dict[str, str]:
        """Disk UUID -> file state of every copy asked for or reported (SPEC_ONLY: no status yet)."""
        found = {u: SPEC_ONLY for u in self.spec_disks}
        found.update((u, state or SPEC_ONLY) for u, state in self.status_disks.items())
        return found


class Bim(_Record):
    name: str
    node: str
    disk_uuid: str
    disk_path: str
    image: str
    label_uuid: str
    backing_images: frozenset[str]
    deleting: bool

    @property
    def owner_uuid(self) -> str:
        """The UUID of the disk this BIM serves (spec.diskUUID, else its label)."""
        return self.disk_uuid or self.label_uuid

    @property
    def disk_uuids(self) -> tuple[str, ...]:
        """Every disk UUID the BIM refers to (spec and label can disagree)."""
        return tuple(dict.fromkeys(u for u in (self.disk_uuid, self.label_uuid) if u))


def _s(value: str | None) -> str:
    return value or ""


def _condition(conditions: list[wire.Condition] | dict[str, wire.Condition] | None, kind: str) -> bool | None:
    if not conditions:
        return None
    items = conditions.values() if isinstance(conditions, dict) else conditions
    for cond in items:
        if cond.type == kind:
            return cond.status == "True"
    return None


def parse_node(node: wire.Node, source: str) -> tuple[list[Disk], list[Skipped]]:
    """The disks of one Longhorn Node: the union of spec.disks and status.diskStatus."""
    name = node.metadata.name
    spec = node.spec.disks or {}
    status = node.status.diskStatus or {}
    disks: list[Disk] = []
    skipped: list[Skipped] = []
    for disk_name in sorted(spec.keys() | status.keys()):
        ds = spec.get(disk_name) or wire.DiskSpec()
        st = status.get(disk_name) or wire.DiskStatus()
        raw_type = st.diskType or ds.diskType
        dtype = DiskType.parse(raw_type)
        uuid = _s(st.diskUUID)
        where = f"{name}/{disk_name}"
        if dtype is None:
            skipped.append(Skipped(source, "Node", where, f"unknown diskType {raw_type!r}"))
            continue
        if uuid and not UUID_RE.match(uuid):
            skipped.append(Skipped(source, "Node", where, f"diskUUID {uuid!r} is not a UUID"))
            continue
        disks.append(
            Disk(
                node=name,
                name=disk_name,
                path=_s(st.diskPath) or _s(ds.path),
                type=dtype,
                uuid=uuid.lower(),
                ready=_condition(st.conditions, "Ready"),
                schedulable=_condition(st.conditions, "Schedulable"),
                scheduled_replicas=tuple(sorted(st.scheduledReplica or ())),
                recorded_uuid=uuid,
            )
        )
    return disks, skipped


def parse_replica(obj: wire.Replica) -> Replica:
    labels = obj.metadata.labels or wire.ReplicaLabels()
    return Replica(
        name=obj.metadata.name,
        node=_s(obj.spec.nodeID) or _s(labels.longhornnode),
        disk_id=_s(obj.spec.diskID).lower(),
        disk_label=_s(labels.longhorndiskuuid).lower(),
        backing_image=_s(obj.spec.backingImage),
        state=_s(obj.status.currentState),
    )


def parse_backing_image(obj: wire.BackingImage) -> BackingImage:
    spec = set(obj.spec.diskFileSpecMap or ()) | set(obj.spec.disks or ())
    status = {u.lower(): _s(fs.state if fs else "") for u, fs in (obj.status.diskFileStatusMap or {}).items()}
    return BackingImage(
        name=obj.metadata.name,
        # The maps are keyed by disk UUID; a key that is not one names no disk (and would be
        # reported as a stuck copy of a "disk" no BIM could ever serve).
        spec_disks=frozenset(u.lower() for u in spec if UUID_RE.match(u)),
        status_disks=status,
    )


def parse_bim(obj: wire.BackingImageManager) -> Bim:
    labels = obj.metadata.labels or {}
    return Bim(
        name=obj.metadata.name,
        node=_s(obj.spec.nodeID),
        disk_uuid=_s(obj.spec.diskUUID).lower(),
        disk_path=_s(obj.spec.diskPath),
        image=_s(obj.spec.image),
        label_uuid=labels.get(LABEL_BIM_DISK_UUID, "").lower(),
        backing_images=frozenset(obj.spec.backingImages or ()),
        deleting=bool(obj.metadata.deletionTimestamp),
    )
