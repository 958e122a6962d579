"""Wire shapes of the Longhorn objects bimguard reads, as msgspec Structs.

Only the fields a decision needs are declared; msgspec skips every other field while
decoding (in C), which is what makes a 190 MB dump scannable in a couple of seconds.
Shapes follow longhorn-manager v1.7.2 `k8s/pkg/apis/longhorn/v1beta2/*.go`; where v1beta1
differs (Node disk conditions were a map keyed by type, BackingImage copies lived in
`spec.disks`) both shapes are accepted.
"""

from __future__ import annotations

from typing import Any

import msgspec

LONGHORN_GROUP = "longhorn.io"


class Meta(msgspec.Struct):
    name: str = ""
    namespace: str | None = ""
    labels: dict[str, str] | None = None
    deletionTimestamp: Any = None


class Head(msgspec.Struct):
    """Just enough of any object to route it to the right decoder."""

    apiVersion: str | None = ""
    kind: str | None = ""
    metadata: Meta | None = None


class Condition(msgspec.Struct):
    type: str | None = ""
    status: str | None = ""
    reason: str | None = ""
    message: str | None = ""


class DiskSpec(msgspec.Struct):
    path: str | None = ""
    diskType: str | None = ""
    allowScheduling: bool | None = True
    evictionRequested: bool | None = False


class DiskStatus(msgspec.Struct):
    diskUUID: str | None = ""
    diskName: str | None = ""
    diskPath: str | None = ""
    diskType: str | None = ""
    # v1beta2: a list of conditions; v1beta1: a map keyed by condition type.
    conditions: list[Condition] | dict[str, Condition] | None = None
    scheduledReplica: dict[str, Any] | None = None


class NodeSpec(msgspec.Struct):
    disks: dict[str, DiskSpec] | None = None


class NodeStatus(msgspec.Struct):
    diskStatus: dict[str, DiskStatus] | None = None


class Node(msgspec.Struct):
    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: NodeSpec = msgspec.field(default_factory=NodeSpec)
    status: NodeStatus = msgspec.field(default_factory=NodeStatus)


class ReplicaSpec(msgspec.Struct):
    nodeID: str | None = ""
    diskID: str | None = ""
    diskPath: str | None = ""
    backingImage: str | None = ""
    volumeName: str | None = ""


class ReplicaStatus(msgspec.Struct):
    currentState: str | None = ""


class Replica(msgspec.Struct):
    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: ReplicaSpec = msgspec.field(default_factory=ReplicaSpec)
    status: ReplicaStatus = msgspec.field(default_factory=ReplicaStatus)


class FileStatus(msgspec.Struct):
    state: str | None = ""


class BackingImageSpec(msgspec.Struct):
    diskFileSpecMap: dict[str, Any] | None = None
    # v1beta1 (and clusters upgraded from < v1.7 that skipped the migration): uuid -> "".
    disks: dict[str, Any] | None = None


class BackingImageStatus(msgspec.Struct):
    diskFileStatusMap: dict[str, FileStatus | None] | None = None


class BackingImage(msgspec.Struct):
    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: BackingImageSpec = msgspec.field(default_factory=BackingImageSpec)
    status: BackingImageStatus = msgspec.field(default_factory=BackingImageStatus)


class BimSpec(msgspec.Struct):
    diskUUID: str | None = ""
    nodeID: str | None = ""
    diskPath: str | None = ""
    image: str | None = ""
    backingImages: dict[str, Any] | None = None


class BackingImageManager(msgspec.Struct):
    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: BimSpec = msgspec.field(default_factory=BimSpec)


class Setting(msgspec.Struct):
    metadata: Meta = msgspec.field(default_factory=Meta)
    value: Any = ""


# kind -> wire type, for objects of the longhorn.io group.
KINDS: dict[str, type[msgspec.Struct]] = {
    "Node": Node,
    "Replica": Replica,
    "BackingImage": BackingImage,
    "BackingImageManager": BackingImageManager,
    "Setting": Setting,
}

# kind -> plural resource name, for messages and for listing a live cluster.
PLURALS: dict[str, str] = {
    "Node": "nodes",
    "Replica": "replicas",
    "BackingImage": "backingimages",
    "BackingImageManager": "backingimagemanagers",
    "Setting": "settings",
}
