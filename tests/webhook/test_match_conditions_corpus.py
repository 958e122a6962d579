"""matchConditions only filter; the webhook's trigger decides. Both must agree on every review.

One corpus of Longhorn Node status reviews -- routine writes, first-records, re-records, block
disks, missing and null maps, a null oldObject, disk names with `/` and `~` -- goes to
  - the CEL expression of webhook/scope.py, evaluated by two real CEL implementations from PyPI,
    cel-python and cel-expr-python (cel-cpp's wrapper, where installed), which must agree and
    evaluate to a bool, never fail, on every review (the emulator's evaluation, with whichever
    it uses, too), and
  - the webhook's own handler (webhook/admission.py `Admission.handle`: the brief decode,
    `no_new_uuid`, the full decode and bimguard.decision `first_recorded`), which reaches its
    decision step exactly when a disk is first-recorded (here it stops there: "index not ready");
and the two must say the same: send (the webhook would decide) or skip (it would answer
"unchanged"). A second, generated corpus (hypothesis) covers combinations by chance.

Shapes the webhook cannot decode (a null disk entry: Longhorn's `map[string]*DiskStatus` allows
one) are answered 400 and so never decided; the expression skips them too. Objects Longhorn's Go
types cannot produce (a number for a string field, a null DiskSpec) are not in the corpus.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import celpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimguard.sim import admission as sim
from bimguard.sim.admission import evaluate_match_conditions
from tests import cel_cpp
from tests.builders import disk_entry, node
from webhook import scope
from webhook.admission import Admission
from webhook.index import ClusterIndex
from webhook.metrics import Metrics
from webhook.review import BadReview

U1 = "0a1b2c3d-1111-4111-8111-111111111111"
U2 = "4e5f6a7b-2222-4222-8222-222222222222"
U3 = "8c9d0e1f-3333-4333-8333-333333333333"
UPPER = "ABCDEF01-4444-4444-8444-444444444444"

_ENV = celpy.Environment()
_PROGRAM = _ENV.program(_ENV.compile(scope.MATCH_CONDITION_EXPRESSION))
_CPP = None
if cel_cpp.REQUIRED:  # cel-cpp, the C++ implementation: in the `test` extra wherever it has a wheel
    from cel_expr_python import cel as celcpp

    _CPP_ENV = celcpp.NewEnv(variables={v: celcpp.Type.DYN for v in ("object", "oldObject", "request")})
    _CPP = _CPP_ENV.compile(scope.MATCH_CONDITION_EXPRESSION)


# ------------------------------------------------------------------------------ the two sides

def cel_sends(obj: dict[str, Any] | None, old: dict[str, Any] | None, request: dict[str, Any]) -> bool:
    """The expression's answer, the same from cel-python and (when installed) cel-cpp; never an
    evaluation error."""
    result = _PROGRAM.evaluate({"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                                "request": celpy.json_to_cel(request)})
    assert isinstance(result, celpy.celtypes.BoolType), f"cel-python: not a bool: {result!r}"
    if _CPP is not None:
        value = _CPP.eval(data={"object": obj, "oldObject": old, "request": request})
        assert value.type() == celcpp.Type.BOOL, f"cel-cpp: {value.type().name()} {value.value()!r}"
        assert value.value() is bool(result), "cel-python and cel-cpp disagree"
    return bool(result)


def review(obj: dict[str, Any] | None, old: dict[str, Any] | None, operation: str = "UPDATE") -> dict[str, Any]:
    name = ((obj or old or {}).get("metadata") or {}).get("name", "worker-1")
    request = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "longhorn.io", "version": "v1beta2", "kind": "Node"},
        "resource": {"group": "longhorn.io", "version": "v1beta2", "resource": "nodes"},
        "subResource": "status",
        "requestKind": {"group": "longhorn.io", "version": "v1beta2", "kind": "Node"},
        "requestResource": {"group": "longhorn.io", "version": "v1beta2", "resource": "nodes"},
        "requestSubResource": "status",
        "name": name, "namespace": "longhorn-system", "operation": operation,
        "userInfo": {"username": "system:serviceaccount:longhorn-system:longhorn-service-account"},
        "object": obj, "oldObject": old, "dryRun": False,
        "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def webhook_decides(body: dict[str, Any]) -> bool:
    """True when the real handler gets past its trigger to the decision step."""
    metrics = Metrics()
    admission = Admission(ClusterIndex(), None, metrics, ready=lambda: "corpus: the trigger only")  # type: ignore[arg-type]
    try:
        asyncio.run(admission.handle(json.dumps(body).encode()))
    except BadReview:
        return False  # answered 400: never decided
    decided = metrics.registry.get_sample_value("bimguard_admission_skipped_total", {"reason": "index_not_ready"}) or 0
    unchanged = metrics.reviews.outcomes["unchanged"]
    assert decided + unchanged == 1, (decided, unchanged)
    return decided == 1


def check(obj: dict[str, Any] | None, old: dict[str, Any] | None, operation: str = "UPDATE") -> bool:
    body = review(obj, old, operation)
    request = {k: v for k, v in body["request"].items() if k not in ("object", "oldObject")}
    sends = cel_sends(obj, old, request)
    decides = webhook_decides(body)
    assert sends == decides, f"CEL sends={sends}, webhook decides={decides}"
    # The emulator's matchConditions evaluation (bimguard/sim/admission.py) says the same.
    matches, false_name, errors = evaluate_match_conditions([c.as_dict() for c in scope.MATCH_CONDITIONS],
                                                            obj, old, request)
    assert errors == [] and matches == sends and (false_name == "") == sends, (sim.CEL.name, errors)
    return sends


# ------------------------------------------------------------------------------ the corpus

def lh(disks: dict[str, dict[str, Any]], name: str = "worker-1") -> dict[str, Any]:
    return node(name, disks)


def fs(uuid: str, path: str = "/var/lib/longhorn", **kw: Any) -> dict[str, Any]:
    return disk_entry(uuid, path, **kw)


def with_status(n: dict[str, Any], disk: str, **fields: Any) -> dict[str, Any]:
    n = copy.deepcopy(n)
    n["status"]["diskStatus"][disk].update(fields)
    return n


def drop(n: dict[str, Any], *path: str) -> dict[str, Any]:
    n = copy.deepcopy(n)
    target = n
    for p in path[:-1]:
        target = target[p]
    del target[path[-1]]
    return n


def put(n: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    n = copy.deepcopy(n)
    target = n
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return n


BASE = lh({"disk-1": fs(U1)})
TWO = lh({"disk-1": fs(U1), "disk-2": fs(U2, "/mnt/d2")})
NEW_EMPTY = lh({"disk-1": fs(U1), "disk-2": fs("", "/mnt/d2", ready=False)})


def routine_touch(n: dict[str, Any]) -> dict[str, Any]:
    """What longhorn-manager's monitor writes every poll: conditions and storage figures move."""
    n = copy.deepcopy(n)
    for e in n["status"]["diskStatus"].values():
        if isinstance(e, dict):
            e["storageAvailable"] = e.get("storageAvailable", 0) - 4096
            for c in e.get("conditions") or []:
                c["lastProbeTime"] = "2025-03-02T10:00:00Z"
    n["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "", "message": ""}]
    return n


def spec_type(n: dict[str, Any], disk: str, value: Any) -> dict[str, Any]:
    return put(n, value, "spec", "disks", disk, "diskType")


CORPUS: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None, bool]] = [
    # -- routine writes: nothing first-recorded
    ("routine: conditions and storage move", routine_touch(TWO), TWO, False),
    ("routine: identical", BASE, BASE, False),
    ("routine: a disk without UUID stays without", routine_touch(NEW_EMPTY), NEW_EMPTY, False),
    ("routine: node without disks", lh({}), lh({}), False),
    ("routine: scheduling changes only",
     put(TWO, {"r-1": 1}, "status", "diskStatus", "disk-2", "scheduledReplica"), TWO, False),
    # -- first-records
    ("first-record: a new entry with its UUID (Longhorn v1.7.2)", TWO, BASE, True),
    ("first-record: the entry had an empty UUID (NotReady first)", TWO, NEW_EMPTY, True),
    ("first-record: the old entry's UUID was null", TWO, with_status(NEW_EMPTY, "disk-2", diskUUID=None), True),
    ("first-record: the old entry had no diskUUID key",
     TWO, drop(NEW_EMPTY, "status", "diskStatus", "disk-2", "diskUUID"), True),
    ("first-record: the first disk of a node", BASE, lh({}), True),
    ("first-record: upper-case UUID", lh({"disk-1": fs(U1), "disk-2": fs(UPPER)}), BASE, True),
    ("first-record: alongside routine disks", lh({"disk-1": fs(U1), "disk-2": fs(U2), "disk-3": fs(U3)}), TWO, True),
    ("first-record: two disks in one write", lh({"disk-1": fs(U1), "disk-2": fs(U2), "disk-3": fs(U3)}), BASE, True),
    ("first-record: a disk renamed keeps its UUID under a new key", lh({"disk-9": fs(U1)}), BASE, True),
    ("first-record: UUID with one trailing newline (Python's $ accepts it)",
     lh({"disk-1": fs(U1), "disk-2": fs(U2 + "\n")}), BASE, True),
    # -- re-records and removals
    ("re-record: the UUID changed", with_status(BASE, "disk-1", diskUUID=U2), BASE, False),
    ("re-record: the same UUID in another case", with_status(BASE, "disk-1", diskUUID=U1.upper()), BASE, False),
    ("removal: the UUID emptied", with_status(BASE, "disk-1", diskUUID=""), BASE, False),
    ("removal: the entry dropped", lh({}), BASE, False),
    # -- block and other disk types
    ("block: a new block disk", lh({"disk-1": fs(U1), "blk": fs(U2, "/dev/sdb", dtype="block")}), BASE, False),
    ("block: status type empty, spec says block",
     spec_type(with_status(TWO, "disk-2", diskType=""), "disk-2", "block"), BASE, False),
    ("block: status type absent, spec says block",
     spec_type(drop(TWO, "status", "diskStatus", "disk-2", "diskType"), "disk-2", "block"), BASE, False),
    ("block: status type null, spec says block",
     spec_type(with_status(TWO, "disk-2", diskType=None), "disk-2", "block"), BASE, False),
    ("filesystem: status type empty, spec says filesystem", with_status(TWO, "disk-2", diskType=""), BASE, True),
    ("filesystem: status type empty, spec type empty (pre-v1.5)",
     spec_type(with_status(TWO, "disk-2", diskType=""), "disk-2", ""), BASE, True),
    ("filesystem: status type null, spec type null",
     spec_type(with_status(TWO, "disk-2", diskType=None), "disk-2", None), BASE, True),
    ("filesystem: status type empty, no spec entry",
     drop(with_status(TWO, "disk-2", diskType=""), "spec", "disks", "disk-2"), BASE, True),
    ("filesystem: status says filesystem, spec says block", spec_type(TWO, "disk-2", "block"), BASE, True),
    ("unknown type", with_status(TWO, "disk-2", diskType="xfs"), BASE, False),
    ("unknown type: Filesystem (case)", with_status(TWO, "disk-2", diskType="Filesystem"), BASE, False),
    ("unknown type in spec, empty in status",
     spec_type(with_status(TWO, "disk-2", diskType=""), "disk-2", "zfs"), BASE, False),
    ("block disk beside a routine filesystem disk", lh({"disk-1": fs(U1), "blk": fs(U2, "/dev/sdb", dtype="block")}),
     lh({"disk-1": fs(U1), "blk": fs("", "/dev/sdb", dtype="block")}), False),
    # -- UUIDs that are not Longhorn's
    ("not a UUID", with_status(TWO, "disk-2", diskUUID="not-a-uuid"), BASE, False),
    ("UUID with a leading space", with_status(TWO, "disk-2", diskUUID=" " + U2), BASE, False),
    ("UUID with two trailing newlines", with_status(TWO, "disk-2", diskUUID=U2 + "\n\n"), BASE, False),
    ("UUID without dashes", with_status(TWO, "disk-2", diskUUID=U2.replace("-", "")), BASE, False),
    ("UUID null in object", with_status(TWO, "disk-2", diskUUID=None), BASE, False),
    ("UUID key absent in object", drop(TWO, "status", "diskStatus", "disk-2", "diskUUID"), BASE, False),
    # -- missing and null maps
    ("object without status", drop(BASE, "status"), BASE, False),
    ("object status null", put(BASE, None, "status"), BASE, False),
    ("object without diskStatus", drop(BASE, "status", "diskStatus"), BASE, False),
    ("object diskStatus null", put(BASE, None, "status", "diskStatus"), BASE, False),
    ("object without spec", drop(TWO, "spec"), BASE, True),
    ("object spec.disks null", put(TWO, None, "spec", "disks"), BASE, True),
    ("object spec.disks null, status type empty",
     put(with_status(TWO, "disk-2", diskType=""), None, "spec", "disks"), BASE, True),
    ("oldObject without status", TWO, drop(BASE, "status"), True),
    ("oldObject status null", TWO, put(BASE, None, "status"), True),
    ("oldObject without diskStatus", TWO, drop(BASE, "status", "diskStatus"), True),
    ("oldObject diskStatus null", TWO, put(BASE, None, "status", "diskStatus"), True),
    ("a null disk entry (Go *DiskStatus): the webhook answers 400",
     put(BASE, None, "status", "diskStatus", "disk-2"), BASE, False),
    # -- null oldObject (CREATE; the webhook is registered for UPDATE only)
    ("null oldObject, disks with UUIDs", TWO, None, True),
    ("null oldObject, no UUIDs yet", lh({"disk-1": fs("")}), None, False),
    ("null oldObject, a block disk only", lh({"blk": fs(U2, "/dev/sdb", dtype="block")}), None, False),
    # -- disk names that need escaping in a JSON Pointer (RFC 6901) but not in CEL
    ("disk name with /", lh({"disk-1": fs(U1), "mnt/disk/2": fs(U2, "/mnt/disk/2")}), BASE, True),
    ("disk name with ~", lh({"disk-1": fs(U1), "disk~2": fs(U2)}), BASE, True),
    ("disk name with ~1 and ~0", lh({"disk-1": fs(U1), "a~1b~0c": fs(U2)}), BASE, True),
    ("disk name a/b~c: routine", lh({"a/b~c": fs(U1)}), lh({"a/b~c": fs(U1)}), False),
    ("disk name a/b~c: first-record after an empty UUID", lh({"a/b~c": fs(U1)}), lh({"a/b~c": fs("")}), True),
    ("old UUID under a/b, new disk a~1b (the pointer spelling of a/b)", lh({"a/b": fs(U1), "a~1b": fs(U2)}),
     lh({"a/b": fs(U1)}), True),
    ("disk names: dots, spaces, unicode", lh({"disk.1": fs(U1), "disk 2": fs(U2), "diskü": fs(U3)}),
     lh({"disk.1": fs(U1), "disk 2": fs(U2)}), True),
    ("empty disk name", lh({"": fs(U1)}), lh({}), True),
]


@pytest.mark.parametrize("label, obj, old, expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_cel_and_the_webhook_trigger_agree(label: str, obj: dict[str, Any] | None, old: dict[str, Any] | None,
                                           expected: bool) -> None:
    assert check(obj, old) is expected


def test_only_updates_are_sent_so_old_object_is_never_null_in_practice() -> None:
    # A null oldObject (the corpus has some) only happens on CREATE, and the rule registers
    # UPDATE alone; the webhook would not decide a CREATE even if one came (out of scope).
    assert scope.LONGHORN_NODE_STATUS.operations == ("UPDATE",)


def test_the_corpus_covers_both_answers() -> None:
    answers = [c[3] for c in CORPUS]
    assert answers.count(True) >= 20 and answers.count(False) >= 20


# ------------------------------------------------------------------------------ generated corpus

NAMES = st.sampled_from(["disk-1", "disk-2", "a/b", "a~b", "a~1b", "x/y~0z", "", "d.1"])
UUIDS = st.sampled_from(["", U1, U2, UPPER, U1 + "\n", "nope", None, "MISSING"])
TYPES = st.sampled_from(["filesystem", "block", "", None, "xfs", "MISSING"])


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    e = fs("", "/p")
    for key, value in (("diskUUID", draw(UUIDS)), ("diskType", draw(TYPES))):
        if value == "MISSING":
            del e[key]
        else:
            e[key] = value
    return e


@st.composite
def nodes(draw: st.DrawFn) -> dict[str, Any] | None:
    shape = draw(st.sampled_from(["node", "node", "node", "null", "no-status", "null-diskStatus"]))
    if shape == "null":
        return None
    n = lh({})
    n["status"]["diskStatus"] = {name: draw(entries()) for name in draw(st.lists(NAMES, max_size=4, unique=True))}
    spec: dict[str, Any] = {}
    for name in n["status"]["diskStatus"]:
        if draw(st.booleans()):
            t = draw(TYPES)
            spec[name] = {"path": "/p", "allowScheduling": True} | ({} if t == "MISSING" else {"diskType": t})
    n["spec"]["disks"] = spec if draw(st.booleans()) else None
    if shape == "no-status":
        del n["status"]
    elif shape == "null-diskStatus":
        n["status"]["diskStatus"] = None
    return n


@settings(max_examples=150, deadline=None)
@given(obj=nodes(), old=nodes())
def test_generated_reviews_agree(obj: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
    if obj is None:
        return  # DELETE-shaped: the rule never sends one (UPDATE only)
    check(obj, old)
