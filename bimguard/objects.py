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


class _Wire(msgspec.Struct, gc=False):
    """Decoded objects hold no reference cycles; keeping them out of the garbage collector's
    tracking saves more than half the decoding time of a large dump."""


class Meta(_Wire):
    name: str = ""
    namespace: str | None = ""
    labels: dict[str, str] | None = None
    deletionTimestamp: Any = None


class HeadMeta(_Wire):
    name: str | None = ""


class Head(_Wire):
    """Just enough of any object to route it to the right decoder."""

    apiVersion: str | None = ""
    kind: str | None = ""
    metadata: HeadMeta | None = None


class Condition(_Wire):
    type: str | None = ""
    status: str | None = ""
    reason: str | None = ""
    message: str | None = ""


class DiskSpec(_Wire):
    path: str | None = ""
    diskType: str | None = ""
    allowScheduling: bool | None = True
    evictionRequested: bool | None = False


class DiskStatus(_Wire):
    diskUUID: str | None = ""
    diskName: str | None = ""
    diskPath: str | None = ""
    diskType: str | None = ""
    # v1beta2: a list of conditions; v1beta1: a map keyed by condition type.
    conditions: list[Condition] | dict[str, Condition] | None = None
    scheduledReplica: dict[str, Any] | None = None  # only the names are used


class NodeSpec(_Wire):
    disks: dict[str, DiskSpec] | None = None


class NodeStatus(_Wire):
    diskStatus: dict[str, DiskStatus] | None = None


class Node(_Wire, tag_field="kind", tag="Node"):
    apiVersion: str | None = ""
    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: NodeSpec = msgspec.field(default_factory=NodeSpec)
    status: NodeStatus = msgspec.field(default_factory=NodeStatus)


class ReplicaLabels(_Wire):
    # Only these keys are read; a struct skips the rest without building a dict per replica.
    longhorndiskuuid: str | None = ""
    longhornnode: str | None = ""


class ReplicaMeta(_Wire):
    name: str = ""
    labels: ReplicaLabels | None = None


class ReplicaSpec(_Wire):
    nodeID: str | None = ""
    diskID: str | None = ""
    diskPath: str | None = ""
    backingImage: str | None = ""
    volumeName: str | None = ""


class ReplicaStatus(_Wire):
    currentState: str | None = ""


class Replica(_Wire, tag_field="kind", tag="Replica"):
    apiVersion: str | None = ""
    metadata: ReplicaMeta = msgspec.field(default_factory=ReplicaMeta)
    spec: ReplicaSpec = msgspec.field(default_factory=ReplicaSpec)
    status: ReplicaStatus = msgspec.field(default_factory=ReplicaStatus)


class FileStatus(_Wire):
    state: str | None = ""


class BackingImageSpec(_Wire):
    diskFileSpecMap: dict[str, Any] | None = None
    # v1beta1 (and clusters upgraded from < v1.7 that skipped the migration): uuid -> "".
    disks: dict[str, Any] | None = None


class BackingImageStatus(_Wire):
    diskFileStatusMap: dict[str, FileStatus | None] | None = None


class BackingImage(_Wire, tag_field="kind", tag="BackingImage"):
    apiVersion: str | None = ""
    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: BackingImageSpec = msgspec.field(default_factory=BackingImageSpec)
    status: BackingImageStatus = msgspec.field(default_factory=BackingImageStatus)


class BimSpec(_Wire):
    diskUUID: str | None = ""
    nodeID: str | None = ""
    diskPath: str | None = ""
    image: str | None = ""
    backingImages: dict[str, Any] | None = None


class BackingImageManager(_Wire, tag_field="kind", tag="BackingImageManager"):
    apiVersion: str | None = ""
    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: BimSpec = msgspec.field(default_factory=BimSpec)


class Setting(_Wire, tag_field="kind", tag="Setting"):
    apiVersion: str | None = ""
    metadata: Meta = msgspec.field(default_factory=Meta)
    value: Any = ""


# kind -> wire type, for objects of the longhorn.io group. Each is tagged by `kind` so that a
# whole List decodes in one pass as a union of them (decode.py).
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
