"""The emulator's pure parts: patches, selectors, schema pruning/validation, admission matching."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimguard.sim.admission import Attributes, build_review, rejection, rule_matches, selectors_match, verify_response, WebhookCallError
from bimguard.sim.patch import PatchError, apply_json_patch, apply_merge_patch
from bimguard.sim.resources import ResourceKey, longhorn_crds, resource_type_from_crd
from bimguard.sim.schema import prune, validate
from bimguard.sim.store import Requirement, labels_match, parse_label_selector

KEYS = st.sampled_from(["a", "b", "c", "d"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text("xyz", max_size=3))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
                       max_leaves=10)
OBJECTS = st.dictionaries(KEYS, JSONISH, max_size=4)


# ---------------------------------------------------------------------------- patches


@given(OBJECTS, OBJECTS)
def test_merge_patch_is_idempotent_and_pure(doc: dict, patch: dict) -> None:
    before = copy.deepcopy(doc)
    once = apply_merge_patch(doc, patch)
    assert apply_merge_patch(once, patch) == once
    assert doc == before
    for key, value in patch.items():
        if value is None:
            assert key not in once
        elif not isinstance(value, dict):
            assert once[key] == value


@given(OBJECTS, OBJECTS)
def test_json_patch_replace_root_keys_matches_merge_of_scalars(doc: dict, new: dict) -> None:
    ops = [{"op": "add", "path": f"/{k}", "value": v} for k, v in new.items()]
    assert apply_json_patch(doc, ops) == {**doc, **new}


def test_json_patch_operations_and_pointer_escapes() -> None:
    doc = {"a/b": {"~x": [1, 2]}, "l": [1, 2, 3]}
    out = apply_json_patch(doc, [
        {"op": "test", "path": "/a~1b/~0x/1", "value": 2},
        {"op": "add", "path": "/l/1", "value": 9},
        {"op": "add", "path": "/l/-", "value": 4},
        {"op": "remove", "path": "/l/0"},
        {"op": "move", "from": "/a~1b", "path": "/m"},
        {"op": "copy", "from": "/m/~0x", "path": "/n"},
        {"op": "replace", "path": "/n/0", "value": "r"},
    ])
    assert out == {"l": [9, 2, 3, 4], "m": {"~x": [1, 2]}, "n": ["r", 2]}
    assert doc == {"a/b": {"~x": [1, 2]}, "l": [1, 2, 3]}
    with pytest.raises(PatchError):
        apply_json_patch(doc, [{"op": "test", "path": "/l/0", "value": True}])  # 1 is not true
    with pytest.raises(PatchError):
        apply_json_patch(doc, [{"op": "replace", "path": "/missing", "value": 1}])
    with pytest.raises(PatchError):
        apply_json_patch(doc, [{"op": "remove", "path": "/l/7"}])
    with pytest.raises(PatchError) as e:
        apply_json_patch(doc, {"op": "add"})
    assert e.value.decode


# ---------------------------------------------------------------------------- selectors

LABELS = st.dictionaries(st.sampled_from(["zone", "tier", "app"]), st.sampled_from(["x", "y", "z"]), max_size=3)


@given(LABELS, st.sampled_from(["zone", "tier", "app"]), st.lists(st.sampled_from(["x", "y", "z"]), min_size=1, max_size=3))
def test_selector_string_forms_agree_with_their_meaning(labels: dict, key: str, values: list[str]) -> None:
    v = values[0]
    joined = ",".join(values)
    assert labels_match(parse_label_selector(f"{key}={v}"), labels) == (labels.get(key) == v)
    assert labels_match(parse_label_selector(f"{key}=={v}"), labels) == (labels.get(key) == v)
    assert labels_match(parse_label_selector(f"{key}!={v}"), labels) == (labels.get(key) != v)
    assert labels_match(parse_label_selector(f"{key} in ({joined})"), labels) == (labels.get(key) in values)
    assert labels_match(parse_label_selector(f"{key} notin ({joined})"), labels) == (labels.get(key) not in values)
    assert labels_match(parse_label_selector(key), labels) == (key in labels)
    assert labels_match(parse_label_selector(f"!{key}"), labels) == (key not in labels)
    both = parse_label_selector(f"{key} in ({joined}),!other")
    assert both == (Requirement(key, "in", tuple(values)), Requirement("other", "!exists"))


# ---------------------------------------------------------------------------- schema


def _node_schema() -> dict:
    crd = next(c for c in longhorn_crds() if c["metadata"]["name"] == "nodes.longhorn.io")
    rt = resource_type_from_crd(crd)
    assert rt.key == ResourceKey("longhorn.io", "v1beta2", "nodes") and rt.status_subresource
    assert rt.schema is not None
    return rt.schema


def test_pruning_follows_the_structural_schema() -> None:
    schema = _node_schema()
    obj: dict[str, Any] = {
        "apiVersion": "longhorn.io/v1beta2", "kind": "Node", "extra": 1,
        "metadata": {"name": "n", "labels": {"a": "b"}, "weird": True},
        "spec": {"disks": {"d": {"path": "/p", "nope": 1}}, "tags": ["t"], "zzz": {}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "bogus": 1}]},
    }
    pruned, dropped = prune(obj, schema)
    assert sorted(dropped) == ["extra", "metadata.weird", "spec.disks.d.nope", "spec.zzz", "status.conditions[0].bogus"]
    assert pruned["spec"] == {"disks": {"d": {"path": "/p"}}, "tags": ["t"]}
    assert pruned["metadata"] == {"name": "n", "labels": {"a": "b"}}
    preserve = {"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    assert prune({"spec": {"anything": {"deep": 1}}}, preserve) == ({"spec": {"anything": {"deep": 1}}}, [])


def test_validation_errors() -> None:
    schema = {"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
        "size": {"type": "integer", "format": "int64"},
        "mode": {"type": "string", "enum": ["a", "b"]},
        "port": {"x-kubernetes-int-or-string": True},
        "maybe": {"type": "string", "nullable": True},
        "items": {"type": "array", "items": {"type": "boolean"}},
        "map": {"type": "object", "additionalProperties": {"type": "number"}},
    }}}}
    assert validate({"spec": {"size": 3, "mode": "a", "port": "http", "maybe": None, "items": [True], "map": {"x": 1.5}}}, schema) == []
    assert validate({"spec": {"size": 3.0, "port": 80}}, schema) == []
    errors = {e.field: e for e in validate({"spec": {"size": "3", "mode": "c", "port": 1.5, "maybe": 1,
                                                      "items": [1], "map": {"x": "s"}}}, schema)}
    assert errors["spec.size"].reason == "FieldValueTypeInvalid"
    assert str(errors["spec.size"]) == 'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"'
    assert errors["spec.mode"].reason == "FieldValueNotSupported"
    assert str(errors["spec.mode"]) == 'spec.mode: Unsupported value: "c": supported values: "a", "b"'
    assert {"spec.port", "spec.maybe", "spec.items[0]", "spec.map.x"} <= set(errors)
    missing = validate({"spec": {}}, schema)
    assert [(e.field, e.reason, str(e)) for e in missing] == [("spec.size", "FieldValueRequired", "spec.size: Required value")]


# ---------------------------------------------------------------------------- admission matching


def _attrs(plural: str = "nodes", sub: str = "", op: str = "UPDATE", labels: dict | None = None) -> Attributes:
    crd = next(c for c in longhorn_crds() if c["metadata"]["name"] == f"{plural}.longhorn.io")
    obj = {"metadata": {"name": "n", "labels": labels or {}}}
    return Attributes(resource_type_from_crd(crd), op, "longhorn-system", "n", obj, obj, sub)


@pytest.mark.parametrize(("resources", "sub", "expected"), [
    (["nodes"], "", True), (["nodes"], "status", False), (["nodes/status"], "status", True), (["nodes/status"], "", False),
    (["*"], "", True), (["*"], "status", False), (["*/status"], "status", True), (["*/status"], "", False),
    (["nodes/*"], "status", True), (["nodes/*"], "", False), (["*/*"], "", True), (["*/*"], "status", True),
    (["replicas"], "", False),
])
def test_rule_resource_matching(resources: list[str], sub: str, expected: bool) -> None:
    rule = {"operations": ["UPDATE"], "apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"], "resources": resources, "scope": "*"}
    assert rule_matches(rule, _attrs(sub=sub)) is expected


def test_rule_operation_group_version_scope() -> None:
    base = {"operations": ["CREATE"], "apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"], "resources": ["nodes"], "scope": "*"}
    assert not rule_matches(base, _attrs())
    assert rule_matches({**base, "operations": ["*"]}, _attrs())
    assert not rule_matches({**base, "operations": ["*"], "apiGroups": [""]}, _attrs())
    assert not rule_matches({**base, "operations": ["*"], "apiVersions": ["v1beta1"]}, _attrs())
    assert not rule_matches({**base, "operations": ["*"], "scope": "Cluster"}, _attrs())
    assert rule_matches({**base, "operations": ["*"], "scope": "Namespaced"}, _attrs())


def test_selectors() -> None:
    hook = {"objectSelector": {"matchLabels": {"a": "1"}}, "namespaceSelector": {"matchExpressions": [
        {"key": "env", "operator": "NotIn", "values": ["prod"]}]}}
    assert selectors_match(hook, _attrs(labels={"a": "1"}), {"env": "dev"})
    assert not selectors_match(hook, _attrs(labels={"a": "2"}), {"env": "dev"})
    assert not selectors_match(hook, _attrs(labels={"a": "1"}), {"env": "prod"})
    assert selectors_match({"objectSelector": {}, "namespaceSelector": {}}, _attrs(), None)


def test_review_and_response_checks() -> None:
    review = build_review(_attrs(sub="status"), "u1")
    assert review["request"]["subResource"] == "status" and review["request"]["uid"] == "u1"
    good = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "u1", "allowed": True}}
    assert verify_response(good, "u1")["allowed"] is True
    for bad, text in [({**good, "kind": "Other"}, "Kind=AdmissionReview"),
                      ({**good, "response": {"uid": "u2", "allowed": True}}, 'expected response.uid="u1", got "u2"'),
                      ({**good, "response": None}, "webhook response was absent"),
                      ({**good, "response": {"uid": "u1", "allowed": True, "patch": "e30="}}, "patch but not patchType"),
                      ({**good, "response": {"uid": "u1", "allowed": True, "patch": "e30=", "patchType": "Merge"}}, "invalid patchType")]:
        with pytest.raises(WebhookCallError) as e:
            verify_response(bad, "u1")
        assert text in str(e.value)
    err = rejection("h", {"code": 200, "reason": "Nope"})
    assert err.status == 400 and err.message == 'admission webhook "h" denied the request: Nope'
    assert rejection("h", None).message == 'admission webhook "h" denied the request without explanation'


@settings(max_examples=50)
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4, unique=True))
def test_name_generated_objects_never_collide(names: list[str]) -> None:
    from bimguard.sim.store import Store

    store = Store(seed=3)
    store.create("v1/namespaces", {"metadata": {"name": "ns"}})
    made = [store.create("v1/configmaps", {"metadata": {"generateName": f"{n}-", "namespace": "ns"}})["metadata"]["name"] for n in names]
    assert len(set(made)) == len(made)


OPS = st.lists(st.tuples(st.sampled_from(["create", "update", "label", "delete", "finalize"]),
                         st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=25)


@settings(max_examples=60, deadline=None)
@given(OPS, st.sampled_from([None, "pick", "!pick"]))
def test_list_then_watch_from_its_resource_version_reconstructs_the_state(ops: list, selector: str | None) -> None:
    """The informer contract: list at RV r + watch events after r == a later list."""
    from bimguard.sim.store import ApiError, Store

    store = Store()
    store.create("v1/namespaces", {"metadata": {"name": "ns"}})
    key = "v1/configmaps"
    checkpoints = []
    for op, name, flag in ops:
        try:
            if op == "create":
                meta: dict[str, Any] = {"name": name, "namespace": "ns"}
                if flag:
                    meta["finalizers"] = ["f"]
                store.create(key, {"metadata": meta, "data": {"v": "0"}})
            elif op == "update":
                obj = store.get(key, "ns", name)
                obj["data"] = {"v": str(int(obj["data"]["v"]) + 1)}
                store.update(key, obj)
            elif op == "label":
                store.patch(key, "ns", name, {"metadata": {"labels": {"pick": "yes"} if flag else None}})
            elif op == "delete":
                store.delete(key, "ns", name)
            elif op == "finalize":
                store.patch(key, "ns", name, {"metadata": {"finalizers": None}})
        except ApiError:
            pass
        items, rv = store.list(key, "ns", selector)
        checkpoints.append((rv, {i["metadata"]["name"]: i for i in items}))
    final = {i["metadata"]["name"]: i for i in store.list(key, "ns", selector)[0]}
    for rv, state in checkpoints:
        w = store.watch(key, "ns", selector, resource_version=rv)
        state = dict(state)
        last = int(rv)
        while not w.queue.empty():
            type_, obj = w.queue.get_nowait()
            assert int(obj["metadata"]["resourceVersion"]) > last  # ordered, nothing replayed twice
            last = int(obj["metadata"]["resourceVersion"])
            if type_ == "DELETED":
                assert obj["metadata"]["name"] in state
                del state[obj["metadata"]["name"]]
            else:
                assert (type_ == "ADDED") == (obj["metadata"]["name"] not in state)
                state[obj["metadata"]["name"]] = obj
        store.stop_watch(w)
        assert state == final


def test_structural_defaulting() -> None:
    from bimguard.sim.schema import apply_defaults

    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "default": {}, "properties": {
            "mode": {"type": "string", "default": "auto"},
            "limits": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "max": {"type": "integer", "default": 3}}}},
            "list": {"type": "array", "items": {"type": "object", "properties": {"on": {"type": "boolean", "default": True}}}},
            "maybe": {"type": "string", "nullable": True, "default": "d"},
        }}}}
    assert apply_defaults({"metadata": {"name": "x"}}, schema) == {"metadata": {"name": "x"}, "spec": {"mode": "auto", "maybe": "d"}}
    out = apply_defaults({"spec": {"mode": None, "limits": {"a": {}}, "list": [{}, {"on": False}], "maybe": None}}, schema)
    assert out == {"spec": {"mode": "auto", "limits": {"a": {"max": 3}}, "list": [{"on": True}, {"on": False}], "maybe": None}}
