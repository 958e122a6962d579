"""Authorization emulation (bimguard/sim/authz.py): the deny list, kube-apiserver's 403 wording,
the request-attribute resolver, and the access reviews, through kubernetes_asyncio, raw HTTP
and the real kubectl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from bimguard.sim import authz
from bimguard.sim.apiserver import ApiServer
from tests.kubectl import Kubectl

SA = "system:serviceaccount:bimguard:bimguard"
SA_TOKEN = "sa-token"
LH = ("longhorn.io", "v1beta2")
MERGE = "application/merge-patch+json"


def pod(name: str = "p") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


def status_of(e: ApiException) -> dict:
    return json.loads(e.body)


@pytest.fixture
async def sa_client(sim_api: ApiServer, tmp_path: Path) -> Any:
    """A kubernetes_asyncio client authenticating as the bimguard service account."""
    sim_api.add_user(SA_TOKEN, SA)
    configuration = client.Configuration(host=sim_api.url)
    configuration.api_key = {"BearerToken": SA_TOKEN}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    async with client.ApiClient(configuration) as c:
        yield c


@pytest.fixture
def kubectl(sim_kubeconfig: Path, tmp_path: Path) -> Kubectl:
    return Kubectl(sim_kubeconfig, tmp_path)


def ns(api: ApiServer, name: str, labels: dict[str, str] | None = None) -> None:
    api.store.create("v1/namespaces", {"metadata": {"name": name, **({"labels": labels} if labels else {})}})


# ---------------------------------------------------------------------------- pure: request attributes

USER = {"username": "u", "groups": ["system:authenticated"]}


@pytest.mark.parametrize("method,path,query,expected", [
    ("GET", "/api/v1/namespaces/x/pods", {}, ("list", "", "pods", "", "x", "")),
    ("GET", "/api/v1/namespaces/x/pods", {"watch": "true"}, ("watch", "", "pods", "", "x", "")),
    ("GET", "/api/v1/namespaces/x/pods", {"watch": "1"}, ("watch", "", "pods", "", "x", "")),
    ("GET", "/api/v1/namespaces/x/pods", {"watch": "false"}, ("list", "", "pods", "", "x", "")),
    ("GET", "/api/v1/namespaces/x/pods", {"watch": "0"}, ("list", "", "pods", "", "x", "")),
    ("GET", "/api/v1/namespaces/x/pods", {"fieldSelector": "metadata.name=p"}, ("list", "", "pods", "", "x", "p")),
    ("GET", "/api/v1/namespaces/x/pods", {"watch": "1", "fieldSelector": "metadata.name==p,spec.nodeName=n"},
     ("watch", "", "pods", "", "x", "p")),
    ("GET", "/api/v1/namespaces/x/pods", {"fieldSelector": "metadata.name!=p"}, ("list", "", "pods", "", "x", "")),
    ("GET", "/api/v1/namespaces/x/pods/p", {}, ("get", "", "pods", "", "x", "p")),
    ("HEAD", "/api/v1/namespaces/x/pods/p", {}, ("get", "", "pods", "", "x", "p")),
    ("GET", "/api/v1/namespaces/x/pods/p", {"watch": "true"}, ("get", "", "pods", "", "x", "p")),
    ("POST", "/api/v1/namespaces/x/pods", {}, ("create", "", "pods", "", "x", "")),
    ("PUT", "/api/v1/namespaces/x/pods/p", {}, ("update", "", "pods", "", "x", "p")),
    ("PATCH", "/api/v1/namespaces/x/pods/p/status", {}, ("patch", "", "pods", "status", "x", "p")),
    ("DELETE", "/api/v1/namespaces/x/pods/p", {}, ("delete", "", "pods", "", "x", "p")),
    ("DELETE", "/api/v1/namespaces/x/pods", {}, ("deletecollection", "", "pods", "", "x", "")),
    ("PATCH", "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/nodes/n1/status", {},
     ("patch", "longhorn.io", "nodes", "status", "longhorn-system", "n1")),
    ("GET", "/apis/longhorn.io/v1beta2/replicas", {}, ("list", "longhorn.io", "replicas", "", "", "")),
    # a Namespace is "in" itself; status and finalize are its subresources, not resources in it
    ("GET", "/api/v1/namespaces/foo", {}, ("get", "", "namespaces", "", "foo", "foo")),
    ("PUT", "/api/v1/namespaces/foo/status", {}, ("update", "", "namespaces", "status", "foo", "foo")),
    ("PUT", "/api/v1/namespaces/foo/finalize", {}, ("update", "", "namespaces", "finalize", "foo", "foo")),
    ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "", "")),
    ("GET", "/api/v1/watch/namespaces/x/pods", {}, ("watch", "", "pods", "", "x", "")),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {},
     ("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", "")),
])
def test_request_attributes(method: str, path: str, query: dict, expected: tuple) -> None:
    a = authz.request_attributes(method, path, query, USER)
    assert a.resource_request
    assert (a.verb, a.group, a.resource, a.subresource, a.namespace, a.name) == expected


@pytest.mark.parametrize("path", ["/version", "/api", "/api/v1", "/apis", "/apis/longhorn.io",
                                  "/apis/longhorn.io/v1beta2", "/openapi/v3", "/healthz"])
def test_non_resource_paths(path: str) -> None:
    a = authz.request_attributes("GET", path, {}, USER)
    assert not a.resource_request and a.verb == "get" and a.path == path


def test_forbidden_message_shapes() -> None:
    user = {"username": SA, "groups": []}
    a = authz.request_attributes("POST", "/api/v1/namespaces/bimguard/pods", {}, user)
    e = authz.forbidden(a)
    assert (e.status, e.reason) == (403, "Forbidden")
    assert e.message == (f'pods is forbidden: User "{SA}" cannot create resource "pods" in API group "" '
                         'in the namespace "bimguard"')
    assert e.body["details"] == {"kind": "pods"}
    a = authz.request_attributes("PATCH", "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/nodes/n1/status", {}, user)
    e = authz.forbidden(a)
    assert e.message == (f'nodes.longhorn.io "n1" is forbidden: User "{SA}" cannot patch resource "nodes/status" '
                         'in API group "longhorn.io" in the namespace "longhorn-system"')
    assert e.body["details"] == {"name": "n1", "group": "longhorn.io", "kind": "nodes"}
    a = authz.request_attributes("GET", "/apis/longhorn.io/v1beta2/nodes", {}, user)
    assert authz.forbidden(a, "RBAC: clusterrole.rbac.authorization.k8s.io \"x\" not found").message == (
        f'nodes.longhorn.io is forbidden: User "{SA}" cannot list resource "nodes" in API group "longhorn.io" '
        'at the cluster scope: RBAC: clusterrole.rbac.authorization.k8s.io "x" not found')
    a = authz.request_attributes("GET", "/metrics", {}, user)
    assert authz.forbidden(a).message == f'forbidden: User "{SA}" cannot get path "/metrics"'
    # responsewriters' sanitizer: nothing that looks like HTML
    a = authz.request_attributes("GET", "/api/v1/namespaces/x/pods", {}, {"username": "<b>&"})
    assert 'User "&lt;b&gt;&amp;" cannot list' in authz.forbidden(a).message


def test_denial_matching() -> None:
    z = authz.Authorizer()
    d = z.deny("create", "pods", namespace="x", user=SA)
    sa = {"username": SA, "groups": ["system:serviceaccounts"]}
    other = {"username": "jane", "groups": []}

    def allowed(method: str, path: str, user: dict, query: dict | None = None) -> bool:
        return z.authorize(authz.request_attributes(method, path, query or {}, user))[0]

    assert not allowed("POST", "/api/v1/namespaces/x/pods", sa)
    assert allowed("POST", "/api/v1/namespaces/y/pods", sa)
    assert allowed("POST", "/api/v1/namespaces/x/pods", other)
    assert allowed("GET", "/api/v1/namespaces/x/pods", sa)
    assert allowed("POST", "/api/v1/namespaces/x/configmaps", sa)
    assert allowed("POST", "/apis/other.io/v1/namespaces/x/pods", sa)  # another group
    z.allow(d)
    assert allowed("POST", "/api/v1/namespaces/x/pods", sa)
    # a namespaced denial also refuses the cluster-wide request (it would need every namespace)
    z.deny("list", "pods", namespace="x")
    assert not allowed("GET", "/api/v1/pods", other) and not allowed("GET", "/api/v1/namespaces/x/pods", other)
    assert allowed("GET", "/api/v1/namespaces/y/pods", other)
    z.allow()
    # subresources: "" = the resource itself, "x" = that subresource, "*" = all of them
    z.deny("patch", "nodes/status", group="longhorn.io")
    assert not allowed("PATCH", "/apis/longhorn.io/v1beta2/namespaces/l/nodes/n/status", other)
    assert allowed("PATCH", "/apis/longhorn.io/v1beta2/namespaces/l/nodes/n", other)
    z.allow()
    z.deny("update", "nodes", group="longhorn.io")
    assert not allowed("PUT", "/apis/longhorn.io/v1beta2/namespaces/l/nodes/n", other)
    assert allowed("PUT", "/apis/longhorn.io/v1beta2/namespaces/l/nodes/n/status", other)
    z.allow()
    z.deny("*", "*", group="*", subresource="*")
    assert not allowed("PUT", "/apis/longhorn.io/v1beta2/namespaces/l/nodes/n/status", other)
    assert not allowed("DELETE", "/api/v1/namespaces/x/pods", other)
    assert allowed("GET", "/version", other)  # non-resource requests are never denied
    # system:masters passes every authorizer
    assert allowed("DELETE", "/api/v1/namespaces/x/pods", {"username": "root", "groups": ["system:masters"]})
    with pytest.raises(ValueError):
        z.deny("frobnicate", "pods")
    with pytest.raises(ValueError):
        z.deny("get", "nodes/status", subresource="status")


# ---------------------------------------------------------------------------- over HTTP


async def test_denied_create_is_403_with_kube_apiserver_message(sim_api: ApiServer, sa_client: Any,
                                                                kube_client: client.ApiClient) -> None:
    ns(sim_api, "bimguard")
    sim_api.deny("create", "pods", namespace="bimguard", user=SA)
    with pytest.raises(ApiException) as e:
        await client.CoreV1Api(sa_client).create_namespaced_pod("bimguard", pod())
    assert e.value.status == 403
    assert status_of(e.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'pods is forbidden: User "{SA}" cannot create resource "pods" in API group "" '
                   'in the namespace "bimguard"',
        "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403}
    assert sim_api.authorizer.refused == [(SA, "create", "pods", "bimguard")]
    assert "p" not in [p["metadata"]["name"] for p in sim_api.store.list("v1/pods", "bimguard")[0]]
    # another user, another verb, another namespace: allowed
    await client.CoreV1Api(kube_client).create_namespaced_pod("bimguard", pod())
    await client.CoreV1Api(sa_client).read_namespaced_pod("p", "bimguard")
    await client.CoreV1Api(sa_client).create_namespaced_pod("default", pod())
    # dry run is authorized like the real request
    with pytest.raises(ApiException) as e:
        await client.CoreV1Api(sa_client).create_namespaced_pod("bimguard", pod("q"), dry_run="All")
    assert e.value.status == 403


async def test_subresource_and_named_messages(sim_api: ApiServer, sa_client: Any) -> None:
    sim_api.store.create("longhorn.io/v1beta2/nodes", {"metadata": {"name": "n1", "namespace": "longhorn-system"},
                                                       "spec": {"disks": {}}})
    co = client.CustomObjectsApi(sa_client)
    sim_api.deny("patch", "nodes/status", group="longhorn.io", namespace="longhorn-system")
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object_status(*LH, "longhorn-system", "nodes", "n1", {"status": {}},
                                                       _content_type=MERGE)
    assert status_of(e.value)["message"] == (
        f'nodes.longhorn.io "n1" is forbidden: User "{SA}" cannot patch resource "nodes/status" in API group '
        '"longhorn.io" in the namespace "longhorn-system"')
    assert status_of(e.value)["details"] == {"name": "n1", "group": "longhorn.io", "kind": "nodes"}
    # the main resource is another permission
    await co.patch_namespaced_custom_object(*LH, "longhorn-system", "nodes", "n1", {"metadata": {"labels": {"a": "b"}}},
                                          _content_type=MERGE)
    # the authorizer runs before the 404 of a missing object
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object_status(*LH, "longhorn-system", "nodes", "missing", {"status": {}},
                                                       _content_type=MERGE)
    assert e.value.status == 403
    # cluster-wide list, watch (not list), and a namespace (which lives "in" itself)
    sim_api.deny("list", "replicas", group="longhorn.io", namespace="longhorn-system")
    with pytest.raises(ApiException) as e:
        await co.list_cluster_custom_object(*LH, "replicas")
    assert status_of(e.value)["message"] == (
        f'replicas.longhorn.io is forbidden: User "{SA}" cannot list resource "replicas" in API group "longhorn.io" '
        "at the cluster scope")
    sim_api.deny("watch", "settings", group="longhorn.io")
    await co.list_namespaced_custom_object(*LH, "longhorn-system", "settings")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SA_TOKEN}"}) as s, \
            s.get(f"{sim_api.url}/apis/longhorn.io/v1beta2/namespaces/longhorn-system/settings",
                  params={"watch": "1", "fieldSelector": "metadata.name=s1"}) as r:
        body = await r.json()
        assert r.status == 403 and body["message"] == (
            f'settings.longhorn.io "s1" is forbidden: User "{SA}" cannot watch resource "settings" in API group '
            '"longhorn.io" in the namespace "longhorn-system"')
    sim_api.deny("get", "namespaces", user=SA)
    with pytest.raises(ApiException) as e:
        await client.CoreV1Api(sa_client).read_namespace("default")
    assert status_of(e.value)["message"] == (
        f'namespaces "default" is forbidden: User "{SA}" cannot get resource "namespaces" in API group "" '
        'in the namespace "default"')
    sim_api.allow()
    await client.CoreV1Api(sa_client).read_namespace("default")


async def test_masters_and_impersonation(sim_api: ApiServer) -> None:
    sim_api.add_user("root", "root-user", ["system:masters"])
    sim_api.deny("list", "pods")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim_api.url}/api/v1/namespaces/default/pods", headers={"Authorization": "Bearer root"}) as r:
            assert r.status == 200
        async with s.get(f"{sim_api.url}/api/v1/namespaces/default/pods") as r:
            assert r.status == 403 and (await r.json())["message"].startswith(
                'pods is forbidden: User "kubernetes-admin" cannot list resource "pods"')
        # an impersonated request is authorized as the impersonated user
        sim_api.allow()
        sim_api.deny("list", "pods", user="jane")
        async with s.get(f"{sim_api.url}/api/v1/namespaces/default/pods", headers={"Impersonate-User": "jane"}) as r:
            assert r.status == 403 and 'User "jane"' in (await r.json())["message"]
        async with s.get(f"{sim_api.url}/api/v1/namespaces/default/pods") as r:
            assert r.status == 200


# ---------------------------------------------------------------------------- access reviews


async def test_self_subject_access_review(sim_api: ApiServer, sa_client: Any, kube_client: client.ApiClient) -> None:
    ns(sim_api, "bimguard")
    sim_api.deny("create", "pods", namespace="bimguard", user=SA)
    sim_api.deny("patch", "nodes/status", group="longhorn.io", reason="no status writes for you")

    async def ask(c: client.ApiClient, **attrs: str) -> client.V1SubjectAccessReviewStatus:
        body = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(**attrs)))
        result, code, _ = await client.AuthorizationV1Api(c).create_self_subject_access_review_with_http_info(body)
        assert code == 201 and result.kind == "SelfSubjectAccessReview"
        return result.status

    assert (await ask(sa_client, verb="create", resource="pods", namespace="bimguard")).allowed is False
    assert (await ask(sa_client, verb="create", resource="pods", namespace="default")).allowed is True
    assert (await ask(sa_client, verb="create", resource="pods")).allowed is False  # all namespaces
    assert (await ask(sa_client, verb="get", resource="pods", namespace="bimguard")).allowed is True
    assert (await ask(kube_client, verb="create", resource="pods", namespace="bimguard")).allowed is True
    st = await ask(kube_client, verb="patch", resource="nodes", subresource="status", group="longhorn.io",
                   namespace="longhorn-system", name="n1")
    assert st.allowed is False and st.denied is None and st.reason == "no status writes for you"
    assert (await ask(kube_client, verb="patch", resource="nodes", group="longhorn.io")).allowed is True
    # non-resource attributes are always allowed
    body = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
        non_resource_attributes=client.V1NonResourceAttributes(path="/healthz", verb="get")))
    assert (await client.AuthorizationV1Api(sa_client).create_self_subject_access_review(body)).status.allowed is True


async def test_access_review_raw_answers_and_errors(sim_api: ApiServer) -> None:
    sim_api.deny("delete", "pods", user="jane")
    url = f"{sim_api.url}/apis/authorization.k8s.io/v1"
    async with aiohttp.ClientSession() as s:
        ssar = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": "delete", "resource": "pods", "namespace": "default"}}}
        async with s.post(f"{url}/selfsubjectaccessreviews", json=ssar, headers={"Impersonate-User": "jane"}) as r:
            assert r.status == 201
            assert await r.json() == {**ssar, "metadata": {"creationTimestamp": None}, "status": {"allowed": False}}
        async with s.post(f"{url}/selfsubjectaccessreviews", json={**ssar, "spec": {}}) as r:
            assert r.status == 422 and (await r.json())["message"] == (
                'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: Invalid value: '
                '"null": exactly one of nonResourceAttributes or resourceAttributes must be specified')
        both = {**ssar, "spec": {**ssar["spec"], "nonResourceAttributes": {"path": "/x", "verb": "get"}}}
        async with s.post(f"{url}/selfsubjectaccessreviews", json=both) as r:
            assert r.status == 422 and (await r.json())["message"] == (
                'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.nonResourceAttributes: Invalid value: '
                'authorization.NonResourceAttributes{Path:"/x", Verb:"get"}: cannot be specified in combination with '
                "resourceAttributes")
        async with s.get(f"{url}/selfsubjectaccessreviews") as r:
            assert r.status == 405 and (await r.json())["reason"] == "MethodNotAllowed"
        # SubjectAccessReview: for spec.user / spec.groups
        sar = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": "jane", "resourceAttributes": {"verb": "delete", "resource": "pods", "namespace": "x"}}}
        async with s.post(f"{url}/subjectaccessreviews", json=sar) as r:
            assert r.status == 201 and (await r.json())["status"] == {"allowed": False}
        async with s.post(f"{url}/subjectaccessreviews", json={**sar, "spec": {**sar["spec"], "user": "joe"}}) as r:
            assert (await r.json())["status"] == {"allowed": True}
        no_user = {**sar, "spec": {"resourceAttributes": sar["spec"]["resourceAttributes"]}}
        async with s.post(f"{url}/subjectaccessreviews", json=no_user) as r:
            assert r.status == 422 and (await r.json())["message"].endswith(
                'spec.user: Invalid value: "": at least one of user or group must be specified')
        # LocalSubjectAccessReview: the namespace must be the review's
        lsar = {**sar, "kind": "LocalSubjectAccessReview"}
        async with s.post(f"{url}/namespaces/x/localsubjectaccessreviews", json=lsar) as r:
            body = await r.json()
            assert r.status == 201 and body["status"] == {"allowed": False} and body["metadata"]["namespace"] == "x"
        async with s.post(f"{url}/namespaces/y/localsubjectaccessreviews", json=lsar) as r:
            assert r.status == 422 and (await r.json())["message"] == (
                'LocalSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes.namespace: '
                'Invalid value: "x": must match metadata.namespace')
        # access reviews are themselves authorized
        sim_api.deny("create", "selfsubjectaccessreviews", group="authorization.k8s.io")
        async with s.post(f"{url}/selfsubjectaccessreviews", json=ssar) as r:
            assert r.status == 403 and (await r.json())["message"] == (
                'selfsubjectaccessreviews.authorization.k8s.io is forbidden: User "kubernetes-admin" cannot create '
                'resource "selfsubjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope')
        # discovery lists the group
        async with s.get(f"{sim_api.url}/apis") as r:
            assert "authorization.k8s.io" in [g["name"] for g in (await r.json())["groups"]]
        async with s.get(url) as r:
            resources = {x["name"]: x for x in (await r.json())["resources"]}
            assert sorted(resources) == ["localsubjectaccessreviews", "selfsubjectaccessreviews", "subjectaccessreviews"]
            assert resources["selfsubjectaccessreviews"]["verbs"] == ["create"]
            assert resources["localsubjectaccessreviews"]["namespaced"] is True


# ---------------------------------------------------------------------------- kubectl


async def test_kubectl_auth_can_i(sim_api: ApiServer, kubectl: Kubectl) -> None:
    ns(sim_api, "x")
    sim_api.deny("create", "pods", namespace="x")
    sim_api.deny("patch", "nodes/status", group="longhorn.io", user="jane")
    assert await kubectl.run("auth", "can-i", "create", "pods", "-n", "x", check=False) == (1, "no\n", "")
    assert await kubectl.run("auth", "can-i", "create", "pods", "-n", "default", check=False) == (0, "yes\n", "")
    assert await kubectl.run("auth", "can-i", "create", "pods", "-A", check=False) == (1, "no\n", "")
    assert await kubectl.run("auth", "can-i", "get", "pods", "-n", "x", check=False) == (0, "yes\n", "")
    assert (await kubectl.run("auth", "can-i", "patch", "nodes.longhorn.io", "--subresource=status", "-n",
                              "longhorn-system", "--as=jane", check=False))[:2] == (1, "no\n")
    assert (await kubectl.run("auth", "can-i", "patch", "nodes.longhorn.io", "-n", "longhorn-system", "--as=jane",
                              check=False))[:2] == (0, "yes\n")
    assert (await kubectl.run("auth", "can-i", "get", "/healthz", check=False))[:2] == (0, "yes\n")


async def test_kubectl_shows_the_403(sim_api: ApiServer, kubectl: Kubectl) -> None:
    ns(sim_api, "x")
    sim_api.deny("create", "pods", namespace="x")
    sim_api.deny("list", "configmaps", namespace="x")
    kubectl.file("pod.yaml", json.dumps(pod("web")))
    code, _, err = await kubectl.run("create", "-f", "pod.yaml", "-n", "x", check=False)
    assert code == 1
    assert err == ('Error from server (Forbidden): error when creating "pod.yaml": pods is forbidden: '
                   'User "kubernetes-admin" cannot create resource "pods" in API group "" in the namespace "x"\n')
    code, _, err = await kubectl.run("get", "configmaps", "-n", "x", check=False)
    assert code == 1
    assert err == ('Error from server (Forbidden): configmaps is forbidden: User "kubernetes-admin" cannot list '
                   'resource "configmaps" in API group "" in the namespace "x"\n')
