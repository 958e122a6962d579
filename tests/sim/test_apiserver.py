"""The emulated API server over real HTTP with kubernetes_asyncio as the client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from bimguard.sim.apiserver import ApiServer
from bimguard.sim.store import ApiError

NS = "longhorn-system"
LH = ("longhorn.io", "v1beta2")
MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"


def node(name: str, **spec: Any) -> dict:
    return {
        "apiVersion": "longhorn.io/v1beta2",
        "kind": "Node",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"allowScheduling": True, "disks": {}, **spec},
    }


def status_of(e: ApiException) -> dict:
    return json.loads(e.body)


@pytest.fixture
def co(kube_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_client)


@pytest.fixture
def core(kube_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_client)


# ---------------------------------------------------------------------------- discovery


async def test_discovery_documents(kube_client: client.ApiClient) -> None:
    version = await client.VersionApi(kube_client).get_code()
    assert version.major == "1" and version.git_version.startswith("v1.")
    core_versions = await client.CoreApi(kube_client).get_api_versions()
    assert core_versions.versions == ["v1"]
    groups = await client.ApisApi(kube_client).get_api_versions()
    names = {g.name: g for g in groups.groups}
    assert {"longhorn.io", "coordination.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io"} <= set(names)
    assert names["longhorn.io"].preferred_version.group_version == "longhorn.io/v1beta2"
    # only the storage version of a CRD is served
    assert [v.version for v in names["longhorn.io"].versions] == ["v1beta2"]
    resources = await client.CoreV1Api(kube_client).get_api_resources()
    by_name = {r.name: r for r in resources.resources}
    assert by_name["pods"].namespaced and by_name["pods/status"].verbs == ["get", "patch", "update"]
    assert not by_name["namespaces"].namespaced
    lh = await client.CustomObjectsApi(kube_client).get_api_resources("longhorn.io", "v1beta2")
    lh_names = {r.name for r in lh.resources}
    assert {"nodes", "nodes/status", "replicas", "backingimages", "backingimagemanagers",
            "backingimagedatasources", "settings", "orphans"} <= lh_names


# ---------------------------------------------------------------------------- CRUD


async def test_create_get_conflicts_and_generate_name(co: client.CustomObjectsApi) -> None:
    created = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("n1"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    with pytest.raises(ApiException) as e:
        await co.create_namespaced_custom_object(*LH, NS, "nodes", node("n1"))
    assert e.value.status == 409
    body = status_of(e.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'nodes.longhorn.io "n1" already exists'
    assert body["details"] == {"name": "n1", "group": "longhorn.io", "kind": "nodes"}

    gen = node("")
    gen["metadata"] = {"generateName": "worker-", "namespace": NS}
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", gen)
    assert made["metadata"]["name"].startswith("worker-") and len(made["metadata"]["name"]) == len("worker-") + 5

    got = await co.get_namespaced_custom_object(*LH, NS, "nodes", "n1")
    assert got == created
    with pytest.raises(ApiException) as e:
        await co.get_namespaced_custom_object(*LH, NS, "nodes", "nope")
    assert e.value.status == 404
    assert status_of(e.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'nodes.longhorn.io "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "group": "longhorn.io", "kind": "nodes"}, "code": 404,
    }


async def test_create_in_missing_namespace_is_404(co: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as e:
        await co.create_namespaced_custom_object(*LH, "ghost", "nodes", {**node("n1"), "metadata": {"name": "n1"}})
    assert e.value.status == 404 and status_of(e.value)["message"] == 'namespaces "ghost" not found'


async def test_update_with_stale_resource_version_conflicts(co: client.CustomObjectsApi) -> None:
    first = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("n1"))
    first["spec"]["allowScheduling"] = False
    second = await co.replace_namespaced_custom_object(*LH, NS, "nodes", "n1", first)
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert second["metadata"]["generation"] == 2
    first["spec"]["allowScheduling"] = True  # still carries the old resourceVersion
    with pytest.raises(ApiException) as e:
        await co.replace_namespaced_custom_object(*LH, NS, "nodes", "n1", first)
    assert e.value.status == 409
    body = status_of(e.value)
    assert body["reason"] == "Conflict"
    assert body["message"] == ('Operation cannot be fulfilled on nodes.longhorn.io "n1": the object has been modified; '
                               "please apply your changes to the latest version and try again")
    # custom resources need a resourceVersion on PUT (AllowUnconditionalUpdate is false)
    del second["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as e:
        await co.replace_namespaced_custom_object(*LH, NS, "nodes", "n1", second)
    assert e.value.status == 422


async def test_unchanged_update_keeps_resource_version(co: client.CustomObjectsApi) -> None:
    first = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("n1"))
    again = await co.replace_namespaced_custom_object(*LH, NS, "nodes", "n1", first)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


async def test_status_subresource_strategy_and_generation(co: client.CustomObjectsApi) -> None:
    created = await co.create_namespaced_custom_object(*LH, NS, "nodes", {**node("n1"), "status": {"region": "r"}})
    assert "status" not in created  # create cannot set status when status is a subresource
    # a status write keeps only .status; spec and labels in the request are ignored
    body = {**created, "status": {"region": "eu"}, "spec": {"allowScheduling": False, "disks": {}},
            "metadata": {**created["metadata"], "labels": {"x": "y"}}}
    after = await co.replace_namespaced_custom_object_status(*LH, NS, "nodes", "n1", body)
    assert after["status"] == {"region": "eu"}
    assert after["spec"]["allowScheduling"] is True and "labels" not in after["metadata"]
    assert after["metadata"]["generation"] == 1  # status does not bump generation
    # a main-resource write ignores .status
    main = {**after, "status": {"region": "us"}, "spec": {**after["spec"], "allowScheduling": False}}
    final = await co.replace_namespaced_custom_object(*LH, NS, "nodes", "n1", main)
    assert final["status"] == {"region": "eu"} and final["spec"]["allowScheduling"] is False
    assert final["metadata"]["generation"] == 2


async def test_pods_status_subresource(core: client.CoreV1Api) -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="p", labels={"app": "x"}),
                       spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")], node_name="w1"))
    made = await core.create_namespaced_pod("default", pod)
    assert made.status.phase == "Pending"
    made.status.phase = "Running"
    ran = await core.replace_namespaced_pod_status("p", "default", made)
    assert ran.status.phase == "Running"
    listed = await core.list_namespaced_pod("default", field_selector="spec.nodeName=w1")
    assert [p.metadata.name for p in listed.items] == ["p"]
    assert (await core.list_namespaced_pod("default", field_selector="spec.nodeName=w2")).items == []
    await core.delete_namespaced_pod("p", "default")
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_pod("p", "default")
    assert e.value.status == 404


async def test_secret_string_data_and_configmaps(core: client.CoreV1Api) -> None:
    secret = await core.create_namespaced_secret("default", client.V1Secret(
        metadata=client.V1ObjectMeta(name="s"), string_data={"tls.crt": "PEM"}))
    assert secret.data == {"tls.crt": "UEVN"} and secret.type == "Opaque" and secret.string_data is None
    cm = await core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"a": "b"}))
    assert cm.data == {"a": "b"}


async def test_leases(kube_client: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(kube_client)
    lease = await coord.create_namespaced_lease(NS, client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"), spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15)))
    lease.spec.holder_identity = "b"
    updated = await coord.replace_namespaced_lease("leader", NS, lease)
    assert updated.spec.holder_identity == "b"


# ---------------------------------------------------------------------------- finalizers


async def test_delete_with_finalizers_waits_for_their_removal(co: client.CustomObjectsApi) -> None:
    obj = node("n1")
    obj["metadata"]["finalizers"] = ["longhorn.io"]
    await co.create_namespaced_custom_object(*LH, NS, "nodes", obj)
    marked = await co.delete_namespaced_custom_object(*LH, NS, "nodes", "n1")
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["finalizers"] == ["longhorn.io"]
    assert marked["metadata"]["generation"] == 2
    current = await co.get_namespaced_custom_object(*LH, NS, "nodes", "n1")
    # no new finalizers while deleting
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object(*LH, NS, "nodes", "n1", {"metadata": {"finalizers": ["longhorn.io", "other"]}},
                                                _content_type=MERGE)
    assert e.value.status == 422 and "no new finalizers" in status_of(e.value)["message"]
    current["metadata"]["finalizers"] = []
    await co.replace_namespaced_custom_object(*LH, NS, "nodes", "n1", current)
    with pytest.raises(ApiException) as e:
        await co.get_namespaced_custom_object(*LH, NS, "nodes", "n1")
    assert e.value.status == 404


async def test_delete_without_finalizers_returns_status_for_custom_resources(co: client.CustomObjectsApi) -> None:
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("n1"))
    result = await co.delete_namespaced_custom_object(*LH, NS, "nodes", "n1")
    assert result["kind"] == "Status" and result["status"] == "Success"
    assert result["details"] == {"name": "n1", "group": "longhorn.io", "kind": "nodes", "uid": made["metadata"]["uid"]}


# ---------------------------------------------------------------------------- list


async def test_label_selectors(co: client.CustomObjectsApi) -> None:
    labels = {"a": {"zone": "x", "tier": "1"}, "b": {"zone": "y"}, "c": {"tier": "2"}, "d": {}}
    for name, lbl in labels.items():
        obj = node(name)
        obj["metadata"]["labels"] = lbl
        await co.create_namespaced_custom_object(*LH, NS, "nodes", obj)

    async def names(selector: str) -> list[str]:
        out = await co.list_namespaced_custom_object(*LH, NS, "nodes", label_selector=selector)
        return [i["metadata"]["name"] for i in out["items"]]

    assert await names("zone=x") == ["a"]
    assert await names("zone==y") == ["b"]
    assert await names("zone!=x") == ["b", "c", "d"]
    assert await names("zone in (x, y)") == ["a", "b"]
    assert await names("zone notin (x)") == ["b", "c", "d"]
    assert await names("tier") == ["a", "c"]
    assert await names("!tier") == ["b", "d"]
    assert await names("tier,zone in (x,y)") == ["a"]
    assert await names("") == ["a", "b", "c", "d"]
    out = await co.list_namespaced_custom_object(*LH, NS, "nodes", field_selector="metadata.name=c")
    assert [i["metadata"]["name"] for i in out["items"]] == ["c"]
    out = await co.list_namespaced_custom_object(*LH, NS, "nodes", field_selector="metadata.name!=c")
    assert len(out["items"]) == 3
    with pytest.raises(ApiException) as e:
        await co.list_namespaced_custom_object(*LH, NS, "nodes", field_selector="spec.foo=1")
    assert e.value.status == 400


async def test_list_pages_are_consistent_and_sorted(co: client.CustomObjectsApi, sim_api: ApiServer) -> None:
    for i in range(7):
        await co.create_namespaced_custom_object(*LH, NS, "nodes", node(f"n{i}"))
    page = await co.list_namespaced_custom_object(*LH, NS, "nodes", limit=3)
    assert [i["metadata"]["name"] for i in page["items"]] == ["n0", "n1", "n2"]
    assert page["metadata"]["remainingItemCount"] == 4
    list_rv = page["metadata"]["resourceVersion"]
    # writes between pages do not show up in the continuation (etcd serves it at the first page's RV)
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("n10"))
    await co.delete_namespaced_custom_object(*LH, NS, "nodes", "n5")
    seen = [i["metadata"]["name"] for i in page["items"]]
    token = page["metadata"]["continue"]
    while token:
        page = await co.list_namespaced_custom_object(*LH, NS, "nodes", limit=3, _continue=token)
        assert page["metadata"]["resourceVersion"] == list_rv
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert seen == [f"n{i}" for i in range(7)]
    # a continue token from before a compaction has expired
    page = await co.list_namespaced_custom_object(*LH, NS, "nodes", limit=2)
    sim_api.faults.compact()
    with pytest.raises(ApiException) as e:
        await co.list_namespaced_custom_object(*LH, NS, "nodes", limit=2, _continue=page["metadata"]["continue"])
    assert e.value.status == 410 and status_of(e.value)["reason"] == "Expired"


async def test_cluster_wide_list_and_global_resource_version(co: client.CustomObjectsApi, core: client.CoreV1Api) -> None:
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="other")))
    a = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))
    b = await co.create_namespaced_custom_object(*LH, "other", "nodes", {**node("b"), "metadata": {"name": "b"}})
    assert int(b["metadata"]["resourceVersion"]) == int(a["metadata"]["resourceVersion"]) + 1
    everything = await co.list_cluster_custom_object(*LH, "nodes")
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everything["items"]] == [(NS, "a"), ("other", "b")]
    assert everything["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"]
    ns = await core.read_namespace("other")
    assert ns.metadata.labels["kubernetes.io/metadata.name"] == "other" and ns.status.phase == "Active"


# ---------------------------------------------------------------------------- patch


async def test_json_patch_including_test_op(co: client.CustomObjectsApi) -> None:
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("n1", disks={"d": {"path": "/a", "allowScheduling": True}}))
    patched = await co.patch_namespaced_custom_object(*LH, NS, "nodes", "n1", [
        {"op": "test", "path": "/spec/disks/d/path", "value": "/a"},
        {"op": "replace", "path": "/spec/disks/d/path", "value": "/b"},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
    ])
    assert patched["spec"]["disks"]["d"]["path"] == "/b" and patched["metadata"]["labels"] == {"k": "v"}
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object(*LH, NS, "nodes", "n1", [
            {"op": "test", "path": "/spec/disks/d/path", "value": "/a"},
            {"op": "replace", "path": "/spec/disks/d/path", "value": "/c"},
        ])
    assert e.value.status == 422
    body = status_of(e.value)
    assert body["reason"] == "Invalid"
    assert body["message"] == "the server rejected our request due to an error in our request"
    assert "causes" not in body.get("details", {})  # kube-apiserver drops the library's error text
    unchanged = await co.get_namespaced_custom_object(*LH, NS, "nodes", "n1")
    assert unchanged["spec"]["disks"]["d"]["path"] == "/b"
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object(*LH, NS, "nodes", "n1", [{"op": "explode", "path": "/x"}])
    assert e.value.status == 400


async def test_merge_patch_and_patch_content_types(co: client.CustomObjectsApi, kube_client: client.ApiClient) -> None:
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("n1", disks={"d": {"path": "/a"}}, tags=["t"]))
    patched = await co.patch_namespaced_custom_object(
        *LH, NS, "nodes", "n1", {"spec": {"tags": None, "disks": {"e": {"path": "/e"}}}}, _content_type=MERGE)
    assert "tags" not in patched["spec"] and set(patched["spec"]["disks"]) == {"d", "e"}
    # status patches go through the status subresource only
    st = await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "x"}, "spec": {"tags": ["z"]}},
                                                        _content_type=MERGE)
    assert st["status"] == {"region": "x"} and "tags" not in st["spec"]
    main = await co.patch_namespaced_custom_object(*LH, NS, "nodes", "n1", {"status": {"region": "y"}}, _content_type=MERGE)
    assert main["status"] == {"region": "x"}
    # strategic merge patch and server-side apply are not available for custom resources
    for ctype in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
        with pytest.raises(ApiException) as e:
            await co.patch_namespaced_custom_object(*LH, NS, "nodes", "n1", {"spec": {}}, _content_type=ctype)
        assert e.value.status == 415 and status_of(e.value)["reason"] == "UnsupportedMediaType"
    # a merge patch pinning a stale resourceVersion conflicts
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object(*LH, NS, "nodes", "n1", {"metadata": {"resourceVersion": "1"}, "spec": {"tags": []}},
                                                _content_type=MERGE)
    assert e.value.status == 409
    # built-ins accept a (merge-approximated) strategic merge patch
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"a": "1"}))
    cm = await core.patch_namespaced_config_map("c", "default", {"data": {"b": "2"}})
    assert cm.data == {"a": "1", "b": "2"}


# ---------------------------------------------------------------------------- decoding and validation


async def _raw(sim_api: ApiServer, method: str, path: str, body: Any, ctype: str = "application/json") -> tuple[int, dict, list[str]]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, sim_api.url + path, data=json.dumps(body), headers={"Content-Type": ctype}) as r:
            return r.status, await r.json(), r.headers.getall("Warning", [])


async def test_unknown_fields_are_pruned_with_warnings_or_rejected_when_strict(sim_api: ApiServer) -> None:
    path = f"/apis/longhorn.io/v1beta2/namespaces/{NS}/nodes"
    obj = node("n1", foo=1)
    obj["metadata"]["bogus"] = True
    obj["spec"]["disks"] = {"d": {"path": "/a", "colour": "red"}}
    status, body, warnings = await _raw(sim_api, "POST", path, obj)
    assert status == 201
    assert "foo" not in body["spec"] and body["spec"]["disks"]["d"] == {"path": "/a"}
    assert "bogus" not in body["metadata"]
    assert sorted(warnings) == sorted(['299 - "unknown field \\"metadata.bogus\\""', '299 - "unknown field \\"spec.foo\\""',
                                       '299 - "unknown field \\"spec.disks.d.colour\\""'])
    obj["metadata"] = {"name": "n2", "namespace": NS}
    status, body, _ = await _raw(sim_api, "POST", path + "?fieldValidation=Strict", obj)
    assert status == 400 and body["reason"] == "BadRequest"
    assert body["message"] == 'strict decoding error: unknown field "spec.disks.d.colour", unknown field "spec.foo"'
    # the same through kubernetes_asyncio
    status, _, warnings = await _raw(sim_api, "POST", path + "?fieldValidation=Ignore", obj)
    assert status == 201 and warnings == []


async def test_schema_validation_is_422_with_causes(co: client.CustomObjectsApi) -> None:
    bad = node("n1", allowScheduling="yes", disks={"d": {"path": "/a", "diskType": "tape", "storageReserved": "lots"}})
    with pytest.raises(ApiException) as e:
        await co.create_namespaced_custom_object(*LH, NS, "nodes", bad)
    assert e.value.status == 422
    body = status_of(e.value)
    assert body["reason"] == "Invalid" and body["details"]["kind"] == "Node" and body["details"]["group"] == "longhorn.io"
    causes = {c["field"]: c for c in body["details"]["causes"]}
    assert causes["spec.allowScheduling"]["reason"] == "FieldValueTypeInvalid"
    assert causes["spec.disks.d.storageReserved"]["reason"] == "FieldValueTypeInvalid"
    assert causes["spec.disks.d.diskType"]["reason"] == "FieldValueNotSupported"
    assert body["message"].startswith('Node.longhorn.io "n1" is invalid: [')
    # whole numbers printed as floats (support bundles do that) are still integers
    ok = node("n2", disks={"d": {"path": "/a", "storageReserved": 1.073741824e10}})
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", ok)
    assert made["spec"]["disks"]["d"]["storageReserved"] == 1.073741824e10


async def test_webhook_configuration_validation_and_defaults(kube_client: client.ApiClient) -> None:
    adm = client.AdmissionregistrationV1Api(kube_client)
    hook = {"name": "x.example.com", "clientConfig": {"service": {"namespace": "default", "name": "svc", "path": "/m"}},
            "rules": [{"operations": ["UPDATE"], "apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"], "resources": ["nodes/status"]}],
            "admissionReviewVersions": ["v1"], "sideEffects": "None"}
    made = await adm.create_mutating_webhook_configuration(
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "m"}, "webhooks": [hook]})
    w = made.webhooks[0]
    assert (w.failure_policy, w.match_policy, w.timeout_seconds, w.client_config.service.port, w.rules[0].scope) == ("Fail", "Equivalent", 10, 443, "*")
    with pytest.raises(ApiException) as e:
        await adm.create_mutating_webhook_configuration(
            {"metadata": {"name": "m2"}, "webhooks": [{**hook, "sideEffects": "Maybe", "failurePolicy": "Sometimes"}]})
    assert e.value.status == 422
    fields = {c["field"] for c in status_of(e.value)["details"]["causes"]}
    assert fields == {"webhooks[0].sideEffects", "webhooks[0].failurePolicy"}


# ---------------------------------------------------------------------------- CRDs at runtime


CLAIM_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "prefixclaims.bimguard.io"},
    "spec": {
        "group": "bimguard.io",
        "scope": "Cluster",
        "names": {"plural": "prefixclaims", "singular": "prefixclaim", "kind": "PrefixClaim", "listKind": "PrefixClaimList"},
        "conversion": {"strategy": "None"},
        "versions": [
            {"name": "v1alpha1", "served": True, "storage": False,
             "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
            {"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
             "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                 "spec": {"type": "object", "required": ["uuid"], "properties": {"uuid": {"type": "string"}, "node": {"type": "string"},
                                                                                  "state": {"type": "string", "default": "Claimed"}}},
                 "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}},
        ],
    },
}


async def test_crd_created_at_runtime_is_served(kube_client: client.ApiClient, co: client.CustomObjectsApi) -> None:
    ext = client.ApiextensionsV1Api(kube_client)
    await ext.create_custom_resource_definition(CLAIM_CRD)
    crd = await ext.read_custom_resource_definition("prefixclaims.bimguard.io")
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions == {"NamesAccepted": "True", "Established": "True"} and crd.status.stored_versions == ["v1"]
    made = await co.create_cluster_custom_object("bimguard.io", "v1", "prefixclaims",
                                                 {"apiVersion": "bimguard.io/v1", "kind": "PrefixClaim", "metadata": {"name": "abcd"},
                                                  "spec": {"uuid": "abcd-1", "extra": 1}})
    assert made["spec"] == {"uuid": "abcd-1", "state": "Claimed"}  # pruned and defaulted
    with pytest.raises(ApiException) as e:
        await co.create_cluster_custom_object("bimguard.io", "v1", "prefixclaims",
                                              {"apiVersion": "bimguard.io/v1", "kind": "PrefixClaim",
                                               "metadata": {"name": "efgh"}, "spec": {"node": "n"}})
    assert e.value.status == 422 and status_of(e.value)["details"]["causes"][0]["field"] == "spec.uuid"
    with pytest.raises(ApiException) as e:  # only the storage version is served
        await co.list_cluster_custom_object("bimguard.io", "v1alpha1", "prefixclaims")
    assert e.value.status == 404
    await ext.delete_custom_resource_definition("prefixclaims.bimguard.io")
    with pytest.raises(ApiException) as e:
        await co.list_cluster_custom_object("bimguard.io", "v1", "prefixclaims")
    assert e.value.status == 404


# ---------------------------------------------------------------------------- watch


async def _events(gen: Any, n: int, timeout: float = 5.0) -> list[dict]:
    out = []

    async def take() -> None:
        async for ev in gen:
            out.append(ev)
            if len(out) == n:
                return

    await asyncio.wait_for(take(), timeout)
    return out


async def test_watch_from_resource_version_and_bookmarks(co: client.CustomObjectsApi) -> None:
    a = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))
    rv = a["metadata"]["resourceVersion"]
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("b"))
    await co.patch_namespaced_custom_object(*LH, NS, "nodes", "a", {"spec": {"allowScheduling": False}}, _content_type=MERGE)
    await co.delete_namespaced_custom_object(*LH, NS, "nodes", "b")
    w = watch.Watch()
    stream = w.stream(co.list_namespaced_custom_object, *LH, NS, "nodes", resource_version=rv,
                      allow_watch_bookmarks=True, timeout_seconds=5)
    events = await _events(stream, 4)
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events[:3]] == [
        ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events[:3]]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert events[3]["type"] == "BOOKMARK"
    assert int(events[3]["object"]["metadata"]["resourceVersion"]) >= rvs[-1]
    await w.close()


async def test_watch_without_resource_version_starts_with_current_objects(co: client.CustomObjectsApi) -> None:
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))
    w = watch.Watch()
    stream = w.stream(co.list_namespaced_custom_object, *LH, NS, "nodes", timeout_seconds=5)
    first = await _events(stream, 1)
    assert first[0]["type"] == "ADDED" and first[0]["object"]["metadata"]["name"] == "a"
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("b"))
    second = await _events(stream, 1)
    assert second[0]["type"] == "ADDED" and second[0]["object"]["metadata"]["name"] == "b"
    await w.close()


async def test_watch_label_selector_transitions(co: client.CustomObjectsApi) -> None:
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))
    w = watch.Watch()
    stream = w.stream(co.list_namespaced_custom_object, *LH, NS, "nodes", label_selector="pick=yes",
                      resource_version=made["metadata"]["resourceVersion"], timeout_seconds=5)
    await co.patch_namespaced_custom_object(*LH, NS, "nodes", "a", {"metadata": {"labels": {"pick": "yes"}}}, _content_type=MERGE)
    await co.patch_namespaced_custom_object(*LH, NS, "nodes", "a", {"metadata": {"labels": {"pick": "no"}}}, _content_type=MERGE)
    events = await _events(stream, 2)
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]
    await w.close()


async def test_watch_from_compacted_version_gets_410(co: client.CustomObjectsApi, sim_api: ApiServer) -> None:
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("b"))
    sim_api.faults.compact()
    w = watch.Watch()
    with pytest.raises(ApiException) as e:
        await _events(w.stream(co.list_namespaced_custom_object, *LH, NS, "nodes",
                               resource_version=made["metadata"]["resourceVersion"], timeout_seconds=5), 1)
    assert e.value.status == 410 and "Expired" in str(e.value.reason) and "too old resource version" in str(e.value.reason)
    await w.close()
    # the raw stream: HTTP 200, one ERROR event carrying a Status 410
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim_api.url}/apis/longhorn.io/v1beta2/namespaces/{NS}/nodes",
                         params={"watch": "1", "resourceVersion": made["metadata"]["resourceVersion"]}) as r:
            assert r.status == 200
            event = json.loads(await r.content.readline())
    assert event["type"] == "ERROR"
    assert {k: event["object"][k] for k in ("kind", "status", "reason", "code")} == {
        "kind": "Status", "status": "Failure", "reason": "Expired", "code": 410}


async def test_send_initial_events_ends_with_marked_bookmark(sim_api: ApiServer, co: client.CustomObjectsApi) -> None:
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim_api.url}/apis/longhorn.io/v1beta2/namespaces/{NS}/nodes",
                         params={"watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
                                 "resourceVersionMatch": "NotOlderThan", "timeoutSeconds": "2"}) as r:
            first = json.loads(await r.content.readline())
            second = json.loads(await r.content.readline())
    assert first["type"] == "ADDED"
    assert second["type"] == "BOOKMARK"
    assert second["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_dropped_watch_ends_the_stream(co: client.CustomObjectsApi, sim_api: ApiServer) -> None:
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim_api.url}/apis/longhorn.io/v1beta2/namespaces/{NS}/nodes",
                         params={"watch": "1", "resourceVersion": made["metadata"]["resourceVersion"]}) as r:
            await asyncio.sleep(0.1)
            assert sim_api.faults.drop_watches() == 1
            assert await asyncio.wait_for(r.content.read(), 2) == b""


# ---------------------------------------------------------------------------- faults


async def test_error_and_latency_faults_are_deterministic(co: client.CustomObjectsApi, sim_api: ApiServer) -> None:
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))

    async def run() -> list[int]:
        sim_api.faults.clear()
        sim_api.faults.seed(7)
        sim_api.faults.error_rate(0.5, 500, verbs=["get"], resource="longhorn.io/v1beta2/nodes")
        codes = []
        for _ in range(20):
            try:
                await co.get_namespaced_custom_object(*LH, NS, "nodes", "a")
                codes.append(200)
            except ApiException as e:
                codes.append(e.status)
        return codes

    first, second = await run(), await run()
    assert first == second and set(first) == {200, 500}
    sim_api.faults.clear()
    sim_api.faults.error_rate(1.0, 429, verbs="list", count=1)
    with pytest.raises(ApiException) as e:
        await co.list_namespaced_custom_object(*LH, NS, "nodes")
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "1"
    assert status_of(e.value)["reason"] == "TooManyRequests"
    await co.list_namespaced_custom_object(*LH, NS, "nodes")  # count exhausted
    sim_api.faults.latency(0.3, verbs=["get"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    await co.get_namespaced_custom_object(*LH, NS, "nodes", "a")
    assert loop.time() - start >= 0.3


# ---------------------------------------------------------------------------- in-process store


async def test_in_process_store_shares_semantics_with_http(sim_api: ApiServer, co: client.CustomObjectsApi) -> None:
    store = sim_api.store
    made = store.create("longhorn.io/v1beta2/nodes", node("a"))
    over_http = await co.get_namespaced_custom_object(*LH, NS, "nodes", "a")
    assert over_http == made
    made["spec"]["allowScheduling"] = False
    store.update("longhorn.io/v1beta2/nodes", made)
    with pytest.raises(ApiError) as e:
        store.update("longhorn.io/v1beta2/nodes", made)  # stale RV now
    assert e.value.status == 409 and e.value.body["reason"] == "Conflict"
    items, rv = store.list("longhorn.io/v1beta2/nodes", NS, "x notin (y)")
    assert [i["metadata"]["name"] for i in items] == ["a"] and rv == str(store.resource_version)
    items[0]["spec"]["allowScheduling"] = True  # callers get copies
    assert store.get("longhorn.io/v1beta2/nodes", NS, "a")["spec"]["allowScheduling"] is False
    gone = store.delete("longhorn.io/v1beta2/nodes", NS, "a")
    assert gone["status"] == "Success"


async def test_watch_resumes_after_dropped_stream_without_gaps(co: client.CustomObjectsApi, sim_api: ApiServer) -> None:
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", node("a"))
    w = watch.Watch()
    # no timeout_seconds: kubernetes_asyncio reconnects from the last seen resourceVersion
    stream = w.stream(co.list_namespaced_custom_object, *LH, NS, "nodes", resource_version=made["metadata"]["resourceVersion"])
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("b"))
    (first,) = await _events(stream, 1)
    assert first["object"]["metadata"]["name"] == "b"
    assert sim_api.faults.drop_watches() == 1
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("c"))
    obj = node("d")
    obj["metadata"]["finalizers"] = ["f"]
    await co.create_namespaced_custom_object(*LH, NS, "nodes", obj)
    await co.delete_namespaced_custom_object(*LH, NS, "nodes", "d")
    await co.patch_namespaced_custom_object(*LH, NS, "nodes", "d", {"metadata": {"finalizers": None}}, _content_type=MERGE)
    events = await _events(stream, 4)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "c"), ("ADDED", "d"), ("MODIFIED", "d"), ("DELETED", "d")]
    assert events[1]["object"]["metadata"].get("deletionTimestamp") is None
    assert events[2]["object"]["metadata"]["deletionTimestamp"]
    await w.close()


async def test_namespace_deletion_and_deletecollection(co: client.CustomObjectsApi, core: client.CoreV1Api) -> None:
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="scratch")))
    for name in ("x", "y"):
        await co.create_namespaced_custom_object(*LH, "scratch", "nodes", {**node(name), "metadata": {"name": name, "labels": {"k": name}}})
    await co.create_namespaced_custom_object(*LH, NS, "nodes", node("keep"))
    gone = await co.delete_collection_namespaced_custom_object(*LH, "scratch", "nodes", label_selector="k=x")
    assert [i["metadata"]["name"] for i in gone["items"]] == ["x"]
    await core.delete_namespace("scratch")
    everything = await co.list_cluster_custom_object(*LH, "nodes")
    assert [i["metadata"]["name"] for i in everything["items"]] == ["keep"]
    with pytest.raises(ApiException) as e:
        await core.read_namespace("scratch")
    assert e.value.status == 404


async def test_partial_object_metadata_and_table_negotiation(sim_api: ApiServer, co: client.CustomObjectsApi) -> None:
    await co.create_namespaced_custom_object(*LH, NS, "nodes", {**node("a"), "metadata": {"name": "a", "labels": {"l": "1"}}})
    url = f"{sim_api.url}/apis/longhorn.io/v1beta2/namespaces/{NS}/nodes"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"}) as r:
            body = await r.json()
        assert body["kind"] == "PartialObjectMetadataList"
        assert body["items"] == [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                  "metadata": (await co.get_namespaced_custom_object(*LH, NS, "nodes", "a"))["metadata"]}]
        async with s.get(url, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}) as r:
            table = await r.json()
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Ready", "AllowScheduling", "Schedulable", "Age"]
    assert table["rows"][0]["cells"][:3] == ["a", None, True]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


async def test_label_and_annotation_validation(co: client.CustomObjectsApi) -> None:
    bad = node("n1")
    bad["metadata"]["labels"] = {"ok": "fine", "longhorn.io/disk": "a b", "-bad": "x", "v": "x" * 64}
    bad["metadata"]["annotations"] = {"Not_A/Prefix/x": "1"}
    with pytest.raises(ApiException) as e:
        await co.create_namespaced_custom_object(*LH, NS, "nodes", bad)
    assert e.value.status == 422
    causes = status_of(e.value)["details"]["causes"]
    assert {c["field"] for c in causes} == {"metadata.labels", "metadata.annotations"}
    assert sum(1 for c in causes if c["field"] == "metadata.labels") == 3
    assert any('Invalid value: "a b": a valid label must be an empty string' in c["message"] for c in causes)
    good = node("n2")
    good["metadata"]["labels"] = {"longhorn.io/node": "worker-1", "empty": "", "k8s.io/x_y.z": "A-1.b_2"}
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", good)
    assert made["metadata"]["labels"]["empty"] == ""


async def test_request_bodies_need_matching_type_meta(co: client.CustomObjectsApi, core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        await co.create_namespaced_custom_object(*LH, NS, "nodes", {"metadata": {"name": "n1"}, "spec": {}})
    assert e.value.status == 400 and status_of(e.value)["message"].startswith("Object 'Kind' is missing in '{")
    with pytest.raises(ApiException) as e:
        await co.create_namespaced_custom_object(*LH, NS, "nodes", {**node("n1"), "apiVersion": "longhorn.io/v1beta1"})
    assert e.value.status == 400
    assert status_of(e.value)["message"] == ("the API version in the data (longhorn.io/v1beta1) does not match "
                                             "the expected API version (longhorn.io/v1beta2)")
    with pytest.raises(ApiException) as e:
        await co.create_namespaced_custom_object(*LH, NS, "nodes", {**node("n1"), "kind": "Replica"})
    assert e.value.status == 400
    # built-ins default apiVersion/kind from the URL
    made = await core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"a": "b"}})
    assert made.kind == "ConfigMap" and made.api_version == "v1"
