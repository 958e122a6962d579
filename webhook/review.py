"""AdmissionReview v1 on the wire: decode only what the decision needs, build responses.

A Longhorn Node review carries two objects of ~15 KB each, most of it managedFields and
conditions; msgspec Structs skip everything undeclared in C. Two shapes: `decode_brief` reads only
what routes a review and says whether any disk got a UUID (every routine status write stops
there), `decode` the rest for the rare review that first-records a disk; disk conditions stay raw
JSON until a disk is actually rewritten. Responses are built by small constructors, never by hand in
the handler (the shape controller-runtime's admission package uses).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from bimguard.decision import DiskEntry

ADMISSION_API_VERSION = "admission.k8s.io/v1"


class _W(msgspec.Struct, gc=False):
    pass


class GroupVersionResource(_W):
    group: str | None = ""
    version: str | None = ""
    resource: str | None = ""


class GroupVersionKind(_W):
    group: str | None = ""
    version: str | None = ""
    kind: str | None = ""


class DiskStatusIn(_W):
    diskUUID: str | None = ""
    diskType: str | None = ""
    diskName: str | None = ""
    diskPath: str | None = ""
    conditions: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # decoded only for a rewrite
    scheduledReplica: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # decoded only for a new disk


class DiskSpecIn(_W):
    path: str | None = ""
    diskType: str | None = ""


class NodeSpecIn(_W):
    disks: dict[str, DiskSpecIn] | None = None


class NodeStatusIn(_W):
    diskStatus: dict[str, DiskStatusIn] | None = None


class MetaIn(_W):
    name: str | None = ""
    uid: str | None = ""
    resourceVersion: str | None = ""  # oldObject's: checked against the stored Node (webhook/admission.py)


class NodeIn(_W):
    metadata: MetaIn | None = None
    spec: NodeSpecIn | None = None
    status: NodeStatusIn | None = None


class RequestIn(_W):
    uid: str
    resource: GroupVersionResource | None = None
    subResource: str | None = ""
    operation: str | None = ""
    name: str | None = ""
    namespace: str | None = ""
    dryRun: bool | None = False
    object: NodeIn | None = None
    oldObject: NodeIn | None = None


class ReviewIn(_W):
    apiVersion: str | None = ""
    kind: str | None = ""
    request: RequestIn | None = None


# The brief shape: routing plus each disk's UUID, nothing else.
class DiskUUIDIn(_W):
    diskUUID: str | None = ""


class NodeStatusBrief(_W):
    diskStatus: dict[str, DiskUUIDIn] | None = None


class NodeBrief(_W):
    status: NodeStatusBrief | None = None


class RequestBrief(_W):
    uid: str
    resource: GroupVersionResource | None = None
    subResource: str | None = ""
    operation: str | None = ""
    object: NodeBrief | None = None
    oldObject: NodeBrief | None = None


class ReviewBrief(_W):
    apiVersion: str | None = ""
    kind: str | None = ""
    request: RequestBrief | None = None


_DECODER = msgspec.json.Decoder(ReviewIn)
_BRIEF_DECODER = msgspec.json.Decoder(ReviewBrief)
_CONDITIONS = msgspec.json.Decoder(list[dict[str, Any]])
_REPLICAS = msgspec.json.Decoder(dict[str, msgspec.Raw] | None)
_ENCODER = msgspec.json.Encoder()


class BadReview(Exception):
    """Not an AdmissionReview we can answer: the handler replies 400 with this message."""


def decode_brief(body: bytes) -> ReviewBrief:
    return _decode(body, _BRIEF_DECODER)


def decode(body: bytes) -> ReviewIn:
    return _decode(body, _DECODER)


def _decode(body: bytes, decoder: msgspec.json.Decoder) -> Any:
    try:
        review = decoder.decode(body)
    except msgspec.ValidationError as err:
        raise BadReview(f"not an AdmissionReview: {err}") from None
    except msgspec.DecodeError as err:
        raise BadReview(f"not JSON: {err}") from None
    if review.kind != "AdmissionReview" or review.apiVersion != ADMISSION_API_VERSION:
        raise BadReview(f"expected kind AdmissionReview, apiVersion {ADMISSION_API_VERSION}; "
                        f"got kind {review.kind!r}, apiVersion {review.apiVersion!r}")
    if review.request is None or not review.request.uid:
        raise BadReview("AdmissionReview without request.uid")
    return review


def disk_entries(node: NodeIn | None) -> dict[str, DiskEntry]:
    """status.diskStatus as the decision sees it; diskType and path fall back to spec."""
    if node is None or node.status is None or not node.status.diskStatus:
        return {}
    spec = (node.spec.disks if node.spec else None) or {}
    out = {}
    for name, st in node.status.diskStatus.items():
        ds = spec.get(name)
        out[name] = DiskEntry(
            uuid=st.diskUUID or "",
            disk_type=st.diskType or (ds.diskType if ds else "") or "",
            disk_name=st.diskName or name,
            disk_path=st.diskPath or (ds.path if ds else "") or "",
            scheduled_replicas=_replica_names(st.scheduledReplica),
        )
    return out


def _replica_names(raw: msgspec.Raw) -> tuple[str, ...]:
    if not raw:
        return ()
    try:
        return tuple(_REPLICAS.decode(raw) or ())
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ()


def no_new_uuid(new: NodeIn | NodeBrief | None, old: NodeIn | NodeBrief | None) -> bool:
    """True when every disk with a UUID in `new` already had one in `old`: then no disk is
    first-recorded (bimguard.decision.first_recorded is empty) and the review is routine. A cheap,
    conservative pre-check that skips building DiskEntry maps on the hot path."""
    now = new.status.diskStatus if new is not None and new.status is not None else None
    if not now:
        return True
    before = (old.status.diskStatus if old is not None and old.status is not None else None) or {}
    for name, st in now.items():
        if st.diskUUID:
            prev = before.get(name)
            if prev is None or not prev.diskUUID:
                return False
    return True


def disk_conditions(node: NodeIn | None, disk: str) -> list[dict[str, Any]]:
    st = ((node.status.diskStatus or {}) if node and node.status else {}).get(disk)
    if st is None or not st.conditions:
        return []
    try:
        return _CONDITIONS.decode(st.conditions)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []  # null (a nil slice) or not a list: the patch then sets fresh conditions. Never a
        # v1beta1 map: the API server converts v1beta1 writes before calling us (webhook/registration.py).


def allowed(uid: str, *, patch: list[dict[str, Any]] | None = None, warnings: list[str] | None = None,
            audit: dict[str, str] | None = None) -> bytes:
    """An allowing AdmissionReview response (bimguard never denies: docs/design.md, invariant 1)."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(_ENCODER.encode(patch)).decode()
    if warnings:
        response["warnings"] = warnings
    if audit:
        response["auditAnnotations"] = audit
    return _ENCODER.encode({"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response})
