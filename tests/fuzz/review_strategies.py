"""Hypothesis strategies for AdmissionReviews of Longhorn Node status writes, well-formed and not.

Well-formed: what kube-apiserver could send for `nodes.longhorn.io/status` (and for whatever else a
misconfigured webhook configuration could route here): every field the webhook declares has its
declared type or is null or absent; everything else is arbitrary JSON. Shapes vary in structure
(missing status, spec or oldObject; disks in spec only, in status only, in both), in size (many
disks, long names, large unread blobs), in encoding (ASCII escapes or raw UTF-8, compact or
indented) and in content: disk names with `/`, `~`, unicode and 200 characters, node names up to
the 253 a DNS subdomain allows, UUIDs empty, upper-case, not UUIDs, taken (their prefix held by a
disk the webhook knows: a rewrite) or clones of a Ready disk.

Malformed: not UTF-8, not JSON, truncated, JSON of the wrong shape, a declared field of the wrong
type, the wrong kind or apiVersion, no request uid; and bodies over the 6 MiB cap.

Each strategy draws `(document, body, Expect)`: the JSON value (None where there is none), the
bytes posted, and what the server must answer (tests.fuzz.webhook_target.check_answer).
"""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.webhook_target import (
    HELD_UUIDS,
    NOT_A_REVIEW,
    TOO_LARGE,
    WELL_FORMED,
    WRONG_TYPE_IN_FULL_DECODE,
)
from webhook.server import MAX_BODY_BYTES

# -- leaves --------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False,
                                                                                   allow_infinity=False) | st.text(max_size=20)
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


@st.composite
def dns_subdomains(draw: st.DrawFn) -> str:
    """A Kubernetes object name: a DNS-1123 subdomain, up to 253 characters (a node's name)."""
    if draw(st.integers(0, 4)) == 0:  # long names, past the 63 characters a label value may have
        parts = draw(st.lists(_LABEL, min_size=2, max_size=8))
        name = ".".join(parts)[:253].strip(".-")
        return name or "n"
    return draw(st.sampled_from(["worker-1", "worker-2", "ip-10-0-3-17.eu-west-1.compute.internal"])
                | _LABEL)


# Disk names are keys of spec.disks: Longhorn checks nothing about them beyond being non-empty.
disk_names = st.one_of(
    st.sampled_from(["default-disk-d4d8a5ad0ab94cae", "disk-nvme2", "a/b", "~", "~1", "/", "a~0/b~1", "日本語ディスク",
                     "disk 1", ".", "..", "emoji-😀", "x" * 200, "UPPER", "null", "-", "\u0000nul", "tab\t"]),
    st.text(min_size=1, max_size=30),
    st.text(alphabet="/~01a", min_size=1, max_size=8),
)


def _uuid(rng_int: int) -> str:
    return str(uuidlib.UUID(int=rng_int, version=4))


@st.composite
def disk_uuids(draw: st.DrawFn) -> str | None:
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        return _uuid(draw(st.integers(0, 2**128 - 1)))  # fresh: keep, or a prefix another example claimed
    if kind <= 4:
        held = draw(st.sampled_from(HELD_UUIDS))  # its prefix is taken: a rewrite
        return held[:4] + _uuid(draw(st.integers(0, 2**128 - 1)))[4:]
    if kind == 5:
        return draw(st.sampled_from(HELD_UUIDS))  # a clone of a Ready disk
    if kind == 6:
        return _uuid(draw(st.integers(0, 2**128 - 1))).upper()
    if kind == 7:
        return draw(st.sampled_from(["", None]))
    return draw(st.text(max_size=40))  # not a Longhorn UUID


# Mostly paths a disk can have (a record can hold them: absolute, no empty, "." or ".." segment),
# sometimes not (the webhook then leaves the disk alone, counted).
disk_paths = st.one_of(
    st.sampled_from(["/var/lib/longhorn/", "/mnt/nvme1", "/mnt/disk 2", "/mnt/ünïcode/~x", "/a/.../b", "/" + "d" * 200]),
    st.builds(lambda parts: "/" + "/".join(parts), st.lists(st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)),
                                                                   min_size=3, max_size=12), min_size=1, max_size=4)),
    st.sampled_from(["", "relative/path", "/", "/mnt//x", "/mnt/./x", "/mnt/../etc"]),
    st.text(max_size=30),
)
disk_types = st.sampled_from(["filesystem", "", "block", None, "FileSystem", "v2", "filesystem "])
conditions = st.one_of(
    st.just([{"type": "Ready", "status": "True", "reason": "", "message": "", "lastProbeTime": "",
              "lastTransitionTime": "2025-03-02T09:15:22Z"},
             {"type": "Schedulable", "status": "True", "reason": "", "message": "", "lastProbeTime": "",
              "lastTransitionTime": "2025-03-02T09:15:22Z"}]),
    st.none(), st.just([]), st.just({"Ready": {"status": "True"}}),  # v1beta1 kept conditions in a map
    st.lists(st.dictionaries(st.sampled_from(["type", "status", "reason"]), any_json, max_size=3), max_size=3),
    any_json,
)
scheduled = st.one_of(st.just({}), st.none(),
                      st.dictionaries(st.text(max_size=30), st.integers(0, 2**40), min_size=1, max_size=3), any_json)


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """A field that may be absent (the marker), null or a value."""
    return st.just(_ABSENT) | st.none() | strategy


_ABSENT = object()


def _obj(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not _ABSENT}


@st.composite
def disk_status(draw: st.DrawFn) -> dict[str, Any]:
    entry = _obj(diskUUID=draw(disk_uuids()), diskType=draw(disk_types), diskName=draw(_optional(disk_names)),
                 diskPath=draw(_optional(disk_paths)), conditions=draw(st.just(_ABSENT) | conditions),
                 scheduledReplica=draw(st.just(_ABSENT) | scheduled))
    if draw(st.booleans()):
        entry.update(diskDriver="", filesystemType="ext2/ext3", storageAvailable=88185241600,
                     storageMaximum=105686820864, storageScheduled=0, instanceManagerName="instance-manager-x")
    if draw(st.integers(0, 5)) == 0:
        entry[draw(st.text(max_size=12))] = draw(any_json)  # a field a later Longhorn adds
    return entry


@st.composite
def longhorn_nodes(draw: st.DrawFn, name: str, disks: list[str], max_extra: int) -> dict[str, Any] | None:
    """A Node with some of `disks` in spec and some in status."""
    if draw(st.integers(0, 9)) == 0:
        return None
    status_disks = {d: draw(disk_status()) for d in disks if draw(st.integers(0, 5))}
    spec_disks = {d: _obj(path=draw(_optional(disk_paths)), diskType=draw(disk_types),
                          allowScheduling=True, tags=draw(st.lists(st.text(max_size=5), max_size=2)))
                  for d in disks if draw(st.integers(0, 3))}
    for d, entry in status_disks.items():  # mostly as Longhorn writes it: status echoes the spec's path
        if d in spec_disks and "path" in spec_disks[d] and draw(st.integers(0, 4)):
            entry["diskPath"] = spec_disks[d]["path"]
    meta = _obj(name=name if draw(st.integers(0, 9)) else draw(_optional(st.just(name))),
                namespace="longhorn-system", uid=draw(_optional(st.just(_uuid(draw(st.integers(0, 2**128 - 1)))))),
                resourceVersion="1240577", finalizers=["longhorn.io"])
    if draw(st.booleans()):
        meta["managedFields"] = [{"manager": "longhorn-manager", "operation": "Update", "fieldsType": "FieldsV1",
                                  "fieldsV1": {"f:status": {"f:diskStatus": {f"f:{d}": {} for d in status_disks}}}}]
    node: dict[str, Any] = {"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "metadata": meta}
    shape = draw(st.integers(0, 9))
    if shape:
        node["spec"] = _obj(disks=spec_disks if shape > 1 else draw(_optional(st.just(spec_disks))),
                            name=name, allowScheduling=True)
    shape = draw(st.integers(0, 9))
    if shape:
        node["status"] = _obj(diskStatus=status_disks if shape > 1 else draw(_optional(st.just(status_disks))),
                              conditions=[], region="", zone="")
    for _ in range(draw(st.integers(0, max_extra))):
        node[draw(st.text(max_size=8))] = draw(any_json)
    return node


def _derive_old(draw: st.DrawFn, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """oldObject: usually the new object with some disks' UUIDs not yet recorded (first-records)."""
    how = draw(st.integers(0, 9))
    if new is None or how == 0:
        return None
    old = json.loads(json.dumps(new))
    disks = ((old.get("status") or {}).get("diskStatus") or {})
    for d in list(disks):
        fate = draw(st.integers(0, 3))
        if fate == 0:
            del disks[d]  # the disk is new in this write
        elif fate == 1 and isinstance(disks[d], dict):
            disks[d]["diskUUID"] = ""  # NotReady first, UUID now
    return old


RESOURCES = [({"group": "longhorn.io", "version": "v1beta2", "resource": "nodes"}, "status")] * 6 + [
    ({"group": "longhorn.io", "version": "v1beta2", "resource": "nodes"}, ""),
    ({"group": "longhorn.io", "version": "v1beta1", "resource": "nodes"}, "status"),
    ({"group": "", "version": "v1", "resource": "nodes"}, "status"),
    ({"group": "longhorn.io", "version": "v1beta2", "resource": "replicas"}, "status"),
]


@st.composite
def well_formed_documents(draw: st.DrawFn, max_disks: int = 6, max_extra: int = 2) -> dict[str, Any]:
    name = draw(dns_subdomains())
    disks = draw(st.lists(disk_names, max_size=max_disks, unique=True))
    new = draw(longhorn_nodes(name, disks, max_extra))
    resource, sub = draw(st.sampled_from(RESOURCES))
    in_scope = draw(st.integers(0, 9)) > 1  # mostly what the webhook configuration routes here
    op = "UPDATE" if in_scope else draw(_optional(st.sampled_from(["UPDATE", "CREATE", "DELETE", "CONNECT", ""])))
    req = _obj(uid=draw(st.just(_uuid(draw(st.integers(0, 2**128 - 1)))) | st.text(min_size=1, max_size=40)),
               kind=_ABSENT if draw(st.integers(0, 9)) == 0 else {"group": "longhorn.io", "version": "v1beta2",
                                                                   "kind": "Node"},
               resource=dict(RESOURCES[0][0] if in_scope else resource) if in_scope or draw(st.integers(0, 2))
               else draw(st.sampled_from([_ABSENT, None])),
               subResource="status" if in_scope else draw(_optional(st.just(sub))),
               requestSubResource=sub, name=draw(_optional(st.just(name))), namespace=draw(_optional(st.just(LH_NS))),
               operation=op, userInfo={"username": "system:serviceaccount:longhorn-system:longhorn-service-account"},
               object=new, oldObject=_derive_old(draw, new), dryRun=draw(_optional(st.booleans())),
               options={"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"})
    doc = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}
    if draw(st.integers(0, 3)) == 0:
        _first_record_of_a_taken_prefix(draw, doc, name)
    return doc


def _first_record_of_a_taken_prefix(draw: st.DrawFn, doc: dict[str, Any], name: str) -> None:
    """Make one disk of the review a clean first record whose prefix a known disk holds (what
    longhorn-manager sends for a new disk that collides), so the sample reaches claims, records
    and patches often; the rest of the review stays as drawn."""
    req = doc["request"]
    req.update(resource=dict(RESOURCES[0][0]), subResource="status", operation="UPDATE", name=name, dryRun=False)
    path = draw(st.sampled_from(["/mnt/new-disk", "/var/lib/longhorn-2/", "/mnt/ünï code", "/mnt/a~b"]))
    disk = draw(disk_names)
    new = req.get("object") if isinstance(req.get("object"), dict) else None
    if new is None:
        new = req["object"] = {"apiVersion": "longhorn.io/v1beta2", "kind": "Node",
                               "metadata": {"name": name, "namespace": LH_NS, "resourceVersion": "1240577"}}
    new["metadata"] = {**(new.get("metadata") if isinstance(new.get("metadata"), dict) else {}), "name": name,
                       "resourceVersion": "1240577"}
    old = json.loads(json.dumps(new))
    for obj in (new, old):
        spec = obj["spec"] = obj["spec"] if isinstance(obj.get("spec"), dict) else {}
        spec["disks"] = spec["disks"] if isinstance(spec.get("disks"), dict) else {}
        spec["disks"][disk] = {"path": path, "diskType": "filesystem", "allowScheduling": True, "tags": []}
        status = obj["status"] = obj["status"] if isinstance(obj.get("status"), dict) else {}
        status["diskStatus"] = status["diskStatus"] if isinstance(status.get("diskStatus"), dict) else {}
    old["status"]["diskStatus"].pop(disk, None)
    held = draw(st.sampled_from(HELD_UUIDS))
    new["status"]["diskStatus"][disk] = {"diskUUID": held[:4] + _uuid(draw(st.integers(0, 2**128 - 1)))[4:],
                                         "diskType": "filesystem", "diskName": disk, "diskPath": path,
                                         "conditions": draw(conditions), "scheduledReplica": {}}
    req["oldObject"] = old


LH_NS = "longhorn-system"


@st.composite
def encodings(draw: st.DrawFn, doc: Any) -> bytes:
    how = draw(st.integers(0, 3))
    if how == 0:
        return json.dumps(doc, ensure_ascii=True).encode()  # \uXXXX escapes, surrogate pairs
    if how == 1:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()  # as Go's encoder writes it
    if how == 2:
        return json.dumps(doc, ensure_ascii=False, indent=draw(st.integers(0, 3))).encode()
    return (" \n\t\r" * draw(st.integers(0, 3))).encode() + json.dumps(doc, ensure_ascii=False).encode() + b"\n "


@st.composite
def well_formed_reviews(draw: st.DrawFn, max_disks: int = 6, max_extra: int = 2, big: bool = False):
    doc = draw(well_formed_documents(max_disks, max_extra))
    if big and draw(st.integers(0, 99)) == 0:
        # a large review: an unread field of up to (a little more than) the 6 MiB cap
        size = draw(st.integers(0, MAX_BODY_BYTES))
        doc["request"]["options"]["padding"] = "x" * size
    body = draw(encodings(doc))
    return doc, body, TOO_LARGE if len(body) > MAX_BODY_BYTES else WELL_FORMED


# -- malformed ------------------------------------------------------------------------------------

# Fields the brief decode reads for every review (webhook.review.ReviewBrief): a wrong type there
# is a 400 whatever the review holds. (path under request, declared type)
_BRIEF_FIELDS = [(("uid",), "str"), (("resource",), "obj"), (("resource", "group"), "str"),
                 (("resource", "version"), "str"), (("resource", "resource"), "str"), (("subResource",), "str"),
                 (("operation",), "str"), (("object",), "obj"), (("object", "status"), "obj"),
                 (("object", "status", "diskStatus"), "obj"), (("oldObject",), "obj"),
                 (("oldObject", "status"), "obj"), (("oldObject", "status", "diskStatus"), "obj")]
# Only the full decode (a first-recorded disk) reads these.
_FULL_FIELDS = [(("name",), "str"), (("namespace",), "str"), (("dryRun",), "bool"), (("object", "metadata"), "obj"),
                (("object", "metadata", "name"), "str"), (("object", "metadata", "uid"), "str"),
                (("object", "spec"), "obj"), (("object", "spec", "disks"), "obj"), (("oldObject", "metadata"), "obj"),
                (("oldObject", "spec"), "obj")]
_WRONG = {"str": st.integers() | st.booleans() | st.lists(st.text(max_size=3), max_size=2) | st.just({}),
          "obj": st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2) | st.booleans(),
          "bool": st.text(max_size=5) | st.integers(2, 9) | st.just([]) | st.just({})}


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    cur = doc["request"]
    for key in path[:-1]:
        if not isinstance(cur.get(key), dict):
            cur[key] = {}
        cur = cur[key]
    cur[path[-1]] = value


@st.composite
def wrong_type_reviews(draw: st.DrawFn):
    doc = draw(well_formed_documents(max_disks=3, max_extra=0))
    brief = draw(st.booleans())
    path, kind = draw(st.sampled_from(_BRIEF_FIELDS if brief else _FULL_FIELDS))
    if path == ("uid",):
        value = draw(st.integers() | st.none() | st.just("") | st.lists(st.integers(), max_size=1))
    else:
        value = draw(_WRONG[kind])
    _set(doc, path, value)
    return doc, json.dumps(doc).encode(), NOT_A_REVIEW if brief else WRONG_TYPE_IN_FULL_DECODE


@st.composite
def wrong_disk_field_reviews(draw: st.DrawFn):
    """A disk entry whose diskUUID (brief) or other declared field (full) has the wrong type."""
    doc = draw(well_formed_documents(max_disks=3, max_extra=0))
    req = doc["request"]
    if not isinstance(req.get("object"), dict):
        req["object"] = {"metadata": {"name": "n"}}
    node = req["object"]
    if not isinstance(node.get("status"), dict):
        node["status"] = {}
    if not isinstance(node["status"].get("diskStatus"), dict):
        node["status"]["diskStatus"] = {}
    disks = node["status"]["diskStatus"]
    name = draw(disk_names)
    field = draw(st.sampled_from(["diskUUID", "entry", "diskType", "diskName", "diskPath"]))
    if field == "entry":
        disks[name] = draw(_WRONG["obj"])
        return doc, json.dumps(doc).encode(), NOT_A_REVIEW
    disks[name] = {"diskUUID": _uuid(draw(st.integers(0, 2**128 - 1))), "diskType": "filesystem"}
    disks[name][field] = draw(_WRONG["str"])
    return doc, json.dumps(doc).encode(), NOT_A_REVIEW if field == "diskUUID" else WRONG_TYPE_IN_FULL_DECODE


@st.composite
def wrong_envelope_reviews(draw: st.DrawFn):
    doc = draw(well_formed_documents(max_disks=2, max_extra=0))
    how = draw(st.integers(0, 5))
    if how == 0:
        doc["kind"] = draw(st.sampled_from(["AdmissionResponse", "", "admissionreview"]) | st.none())
    elif how == 1:
        doc["apiVersion"] = draw(st.sampled_from(["admission.k8s.io/v1beta1", "v1", ""]) | st.none())
    elif how == 2:
        doc["request"] = draw(st.none() | st.just(_ABSENT))
        if doc["request"] is _ABSENT:
            del doc["request"]
    elif how == 3:
        doc["request"].pop("uid")
    elif how == 4:
        doc["request"]["uid"] = ""
    else:
        doc = draw(st.lists(any_json, max_size=3) | json_scalars)  # JSON, but not an object
    return doc, json.dumps(doc).encode(), NOT_A_REVIEW


@st.composite
def broken_bytes(draw: st.DrawFn):
    """Not JSON at all, or not UTF-8, or cut short."""
    doc = draw(well_formed_documents(max_disks=2, max_extra=0))
    body = json.dumps(doc, ensure_ascii=False).encode()
    how = draw(st.integers(0, 5))
    if how == 0:
        return None, draw(st.binary(max_size=200)), None  # the oracle decides below
    if how == 1:
        return None, body[: draw(st.integers(0, max(len(body) - 1, 0)))], NOT_A_REVIEW
    if how == 2:  # an invalid UTF-8 byte inside a string
        i = body.index(b'"uid": "') + len(b'"uid": "')
        return None, body[:i] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) + body[i:], NOT_A_REVIEW
    if how == 3:  # a lone surrogate escape, which no JSON encoder of kube-apiserver's writes
        i = body.index(b'"uid": "') + len(b'"uid": "')
        return None, body[:i] + draw(st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud800\\u0041"])) + body[i:], NOT_A_REVIEW
    if how == 4:  # a UTF-8 byte order mark or UTF-16, which kube-apiserver never sends
        return None, draw(st.sampled_from([b"\xef\xbb\xbf" + body, json.dumps(doc).encode("utf-16")])), NOT_A_REVIEW
    # trailing garbage after the document
    return None, body + draw(st.sampled_from([b"}", b"x", b"{}", b"\x00"])), NOT_A_REVIEW


def _binary_expectation(body: bytes):
    """Random bytes are almost never a review; the rare valid JSON that is one is fine either way."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return NOT_A_REVIEW
    if isinstance(doc, dict) and doc.get("kind") == "AdmissionReview":  # pragma: no cover - vanishingly rare
        return WRONG_TYPE_IN_FULL_DECODE
    return NOT_A_REVIEW


@st.composite
def malformed_reviews(draw: st.DrawFn):
    doc, body, expect = draw(st.one_of(wrong_type_reviews(), wrong_disk_field_reviews(), wrong_envelope_reviews(),
                                       broken_bytes()))
    if expect is None:
        expect = _binary_expectation(body)
    return doc, body, expect


@st.composite
def oversized_reviews(draw: st.DrawFn):
    doc = draw(well_formed_documents(max_disks=1, max_extra=0))
    doc["request"]["options"]["padding"] = "x" * (MAX_BODY_BYTES + draw(st.integers(1, 1 << 20)))
    return doc, json.dumps(doc).encode(), TOO_LARGE
