"""Mutating admission dispatch of the emulated API server against a real HTTPS webhook.

The webhook is an aiohttp server with a certificate for `hook.webhooks.svc` signed by a CA made
here with `cryptography`; the API server reaches it through `webhook_hosts`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from bimguard.sim.apiserver import ApiServer

NS = "longhorn-system"
LH = ("longhorn.io", "v1beta2")
SVC_HOST = "hook.webhooks.svc"
MERGE = "application/merge-patch+json"


# ---------------------------------------------------------------------------- certificates


@dataclass
class Pki:
    ca_pem: bytes
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate

    @classmethod
    def new(cls, name: str = "sim-test-ca") -> "Pki":
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(cert.public_bytes(serialization.Encoding.PEM), key, cert)

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca_pem).decode()

    def serving(self, dns_name: str, directory: Path) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
                .issuer_name(self.ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        cert_path, key_path = directory / f"{dns_name}.crt", directory / f"{dns_name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_path, key_path)
        return ctx


# ---------------------------------------------------------------------------- the webhook server

Behaviour = Callable[[dict], Awaitable[dict] | dict]


def allow(review: dict, patch: list[dict] | None = None, warnings: list[str] | None = None) -> dict:
    response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
    if patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


@dataclass
class Webhook:
    port: int = 0
    reviews: list[dict] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    runner: web.AppRunner | None = None

    async def start(self, ctx: ssl.SSLContext) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append({"path": request.path, "query": dict(request.query), **review})
        behaviour = self.behaviours.get(request.path, allow)
        result = behaviour(review)
        if asyncio.iscoroutine(result):
            result = await result
        return web.json_response(result)

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
def pki() -> Pki:
    return Pki.new()


@pytest.fixture
async def hook(pki: Pki, tmp_path: Path) -> AsyncIterator[Webhook]:
    w = Webhook()
    await w.start(pki.serving(SVC_HOST, tmp_path))
    yield w
    await w.stop()


@pytest.fixture
async def api(hook: Webhook) -> AsyncIterator[ApiServer]:
    server = ApiServer(webhook_hosts={SVC_HOST: ("127.0.0.1", hook.port)})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def co(api: ApiServer, tmp_path: Path) -> AsyncIterator[client.CustomObjectsApi]:
    from kubernetes_asyncio import config

    path = tmp_path / "kubeconfig"
    api.kubeconfig(path)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    async with client.ApiClient(configuration) as c:
        yield client.CustomObjectsApi(c)


def webhook_config(name: str, ca_bundle: str, *, path: str = "/mutate", resources: list[str] | None = None,
                   operations: list[str] | None = None, **extra: Any) -> dict:
    hook: dict[str, Any] = {
        "name": f"{name}.bimguard.io",
        "clientConfig": {"service": {"namespace": "webhooks", "name": "hook", "path": path, "port": 443}, "caBundle": ca_bundle},
        "rules": [{"operations": operations or ["UPDATE"], "apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"],
                   "resources": resources or ["nodes/status"], "scope": "Namespaced"}],
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        **extra,
    }
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name}, "webhooks": [hook]}


MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def make_node(api: ApiServer, name: str = "n1", labels: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if labels:
        meta["labels"] = labels
    return api.store.create("longhorn.io/v1beta2/nodes", {"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "metadata": meta,
                                                          "spec": {"allowScheduling": True, "disks": {}}})


def status_of(e: ApiException) -> dict:
    return json.loads(e.body)


# ---------------------------------------------------------------------------- tests


async def test_status_write_is_reviewed_and_patched(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("uuid", pki.ca_bundle))
    n = make_node(api)

    def record_uuid(review: dict) -> dict:
        return allow(review, [{"op": "add", "path": "/status/diskStatus", "value": {"d": {"diskUUID": "patched"}}},
                              {"op": "add", "path": "/metadata/labels", "value": {"from-webhook": "x"}}],
                     warnings=["uuid rewritten"])

    hook.behaviours["/mutate"] = record_uuid
    result, code, headers = await co.replace_namespaced_custom_object_status_with_http_info(
        *LH, NS, "nodes", "n1", {**n, "status": {"diskStatus": {"d": {"diskUUID": "original"}}}})
    assert code == 200
    assert result["status"]["diskStatus"]["d"]["diskUUID"] == "patched"
    # the status strategy runs after admission: labels patched on a /status write are dropped
    assert "labels" not in result["metadata"]
    assert headers.getall("Warning") == ['299 - "uuid rewritten"']
    (review,) = hook.reviews
    assert review["query"] == {"timeout": "10s"}
    req = review["request"]
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    assert req["kind"] == {"group": "longhorn.io", "version": "v1beta2", "kind": "Node"}
    assert req["resource"] == {"group": "longhorn.io", "version": "v1beta2", "resource": "nodes"}
    assert req["subResource"] == "status" and req["requestSubResource"] == "status"
    assert (req["name"], req["namespace"], req["operation"], req["dryRun"]) == ("n1", NS, "UPDATE", False)
    assert req["userInfo"]["username"] == "kubernetes-admin"
    assert req["options"]["kind"] == "UpdateOptions"
    assert req["object"]["status"]["diskStatus"]["d"]["diskUUID"] == "original"
    assert req["oldObject"] == n


async def test_stale_write_is_admitted_with_stored_old_object_then_conflicts(api: ApiServer, hook: Webhook, pki: Pki,
                                                                            co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("uuid", pki.ca_bundle))
    stale = make_node(api)
    current = api.store.update("longhorn.io/v1beta2/nodes", {**stale, "status": {"region": "new"}}, subresource="status")
    with pytest.raises(ApiException) as e:
        await co.replace_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {**stale, "status": {"region": "mine"}})
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    (review,) = hook.reviews  # admitted first, failed the precondition afterwards
    assert review["request"]["oldObject"] == current
    assert review["request"]["object"]["metadata"]["resourceVersion"] == stale["metadata"]["resourceVersion"]


async def test_rules_match_subresources_exactly(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("main", pki.ca_bundle, path="/main", resources=["nodes"]))
    api.store.create(MWC, webhook_config("star", pki.ca_bundle, path="/star", resources=["*/status"]))
    api.store.create(MWC, webhook_config("pods", pki.ca_bundle, path="/pods", resources=["pods/status"]))
    n = make_node(api)
    await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "x"}}, _content_type=MERGE)
    assert [r["path"] for r in hook.reviews] == ["/star"]
    await co.patch_namespaced_custom_object(*LH, NS, "nodes", "n1", {"spec": {"allowScheduling": False}}, _content_type=MERGE)
    assert [r["path"] for r in hook.reviews] == ["/star", "/main"]
    assert hook.reviews[1]["request"]["oldObject"]["spec"]["allowScheduling"] is True
    assert "subResource" not in hook.reviews[1]["request"]
    del n


async def test_configurations_run_in_name_order_and_see_earlier_patches(api: ApiServer, hook: Webhook, pki: Pki,
                                                                       co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("b-second", pki.ca_bundle, path="/second"))
    api.store.create(MWC, webhook_config("a-first", pki.ca_bundle, path="/first"))
    hook.behaviours["/first"] = lambda r: allow(r, [{"op": "add", "path": "/status/region", "value": "first"}])
    make_node(api)
    out = await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"zone": "z"}}, _content_type=MERGE)
    assert [r["path"] for r in hook.reviews] == ["/first", "/second"]
    assert hook.reviews[1]["request"]["object"]["status"]["region"] == "first"
    assert out["status"] == {"zone": "z", "region": "first"}


async def test_webhook_output_is_pruned_and_validated(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("m", pki.ca_bundle, resources=["nodes"], operations=["CREATE", "UPDATE"]))
    hook.behaviours["/mutate"] = lambda r: allow(r, [{"op": "add", "path": "/spec/unknownThing", "value": 1}])
    lh = {"apiVersion": "longhorn.io/v1beta2", "kind": "Node"}
    made = await co.create_namespaced_custom_object(*LH, NS, "nodes", {**lh, "metadata": {"name": "n2"}, "spec": {"disks": {}}})
    assert "unknownThing" not in made["spec"]
    req = hook.reviews[0]["request"]
    assert req["operation"] == "CREATE" and req["oldObject"] is None and "uid" not in req["object"]["metadata"]
    hook.behaviours["/mutate"] = lambda r: allow(r, [{"op": "add", "path": "/spec/allowScheduling", "value": "yes"}])
    with pytest.raises(ApiException) as e:
        await co.create_namespaced_custom_object(*LH, NS, "nodes", {**lh, "metadata": {"name": "n3"}, "spec": {"disks": {}}})
    assert e.value.status == 422


async def test_denied_request_carries_the_webhook_status(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("deny", pki.ca_bundle))
    hook.behaviours["/mutate"] = lambda r: {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                            "response": {"uid": r["request"]["uid"], "allowed": False,
                                                         "status": {"code": 403, "reason": "Forbidden", "message": "prefix taken"}}}
    make_node(api)
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert e.value.status == 403
    assert status_of(e.value)["message"] == 'admission webhook "deny.bimguard.io" denied the request: prefix taken'


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
async def test_uid_mismatch_is_a_webhook_error(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi, policy: str) -> None:
    api.store.create(MWC, webhook_config("uid", pki.ca_bundle, failurePolicy=policy))
    hook.behaviours["/mutate"] = lambda r: {**allow(r, [{"op": "add", "path": "/status/zone", "value": "z2"}]),
                                            "response": {"uid": "not-it", "allowed": True}}
    make_node(api)
    if policy == "Fail":
        with pytest.raises(ApiException) as e:
            await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
        assert e.value.status == 500
        body = status_of(e.value)
        assert body["reason"] == "InternalError"
        assert body["message"].startswith('Internal error occurred: failed calling webhook "uid.bimguard.io": '
                                          'received invalid webhook response: expected response.uid=')
    else:
        out = await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
        assert out["status"] == {"region": "r1"}


async def test_wrong_kind_in_response_is_a_webhook_error(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("kind", pki.ca_bundle))
    hook.behaviours["/mutate"] = lambda r: {**allow(r), "apiVersion": "admission.k8s.io/v1beta1"}
    make_node(api)
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert e.value.status == 500 and "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview" in status_of(e.value)["message"]


@pytest.mark.parametrize("case", ["wrong-ca", "wrong-hostname"])
async def test_tls_verification_failures(api: ApiServer, pki: Pki, tmp_path: Path, co: client.CustomObjectsApi, case: str) -> None:
    other = Pki.new("someone-else")
    if case == "wrong-ca":
        server_ctx, bundle = other.serving(SVC_HOST, tmp_path), pki.ca_bundle
    else:
        server_ctx, bundle = pki.serving("other.webhooks.svc", tmp_path), pki.ca_bundle
    bad = Webhook()
    await bad.start(server_ctx)
    try:
        api.webhook_hosts[SVC_HOST] = ("127.0.0.1", bad.port)
        api.store.create(MWC, webhook_config("tls", bundle))
        make_node(api)
        with pytest.raises(ApiException) as e:
            await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
        assert e.value.status == 500
        message = status_of(e.value)["message"]
        assert 'failed calling webhook "tls.bimguard.io"' in message
        assert f'Post "https://{SVC_HOST}:443/mutate?timeout=10s"' in message
        expected = "signed by unknown authority" if case == "wrong-ca" else f"not valid for {SVC_HOST}"
        assert expected in message
        assert bad.reviews == []  # the request never reached the impostor
        # with failurePolicy Ignore the write goes through unmutated
        cfg = api.store.get(MWC, None, "tls")
        cfg["webhooks"][0]["failurePolicy"] = "Ignore"
        api.store.update(MWC, cfg)
        out = await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
        assert out["status"] == {"region": "r1"}
    finally:
        await bad.stop()


async def test_timeout_honours_failure_policy(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    async def slow(review: dict) -> dict:
        await asyncio.sleep(2)
        return allow(review, [{"op": "add", "path": "/status/late", "value": True}])

    hook.behaviours["/slow"] = slow
    api.store.create(MWC, webhook_config("slow", pki.ca_bundle, path="/slow", timeoutSeconds=1))
    make_node(api)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert 0.9 <= loop.time() - start  # (no upper bound: a busy machine; the 500 says it timed out)
    assert e.value.status == 500 and "context deadline exceeded" in status_of(e.value)["message"]
    assert hook.reviews[0]["query"] == {"timeout": "1s"}
    cfg = api.store.get(MWC, None, "slow")
    cfg["webhooks"][0]["failurePolicy"] = "Ignore"
    api.store.update(MWC, cfg)
    out = await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert out["status"] == {"region": "r1"}


async def test_unreachable_webhook(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("gone", pki.ca_bundle))
    make_node(api)
    del api.webhook_hosts[SVC_HOST]  # the Service name no longer resolves
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert e.value.status == 500 and "no such host" in status_of(e.value)["message"]
    await hook.stop()
    api.webhook_hosts = {SVC_HOST: ("127.0.0.1", hook.port)}  # resolves, but nothing listens
    with pytest.raises(ApiException) as e:
        await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert e.value.status == 500 and "connection refused" in status_of(e.value)["message"]


async def test_dry_run_and_side_effects(api: ApiServer, hook: Webhook, pki: Pki) -> None:
    api.store.create(MWC, webhook_config("effects", pki.ca_bundle, sideEffects="Some"))
    n = make_node(api)
    url = f"{api.url}/apis/longhorn.io/v1beta2/namespaces/{NS}/nodes/n1/status?dryRun=All"
    async with aiohttp.ClientSession() as s:
        async with s.put(url, json={**n, "status": {"region": "r1"}}) as r:
            body = await r.json()
            assert r.status == 400 and body["message"] == 'admission webhook "effects.bimguard.io" does not support dry run'
        cfg = api.store.get(MWC, None, "effects")
        cfg["webhooks"][0]["sideEffects"] = "NoneOnDryRun"
        api.store.update(MWC, cfg)
        async with s.put(url, json={**n, "status": {"region": "r1"}}) as r:
            assert r.status == 200 and (await r.json())["status"] == {"region": "r1"}
    assert hook.reviews[-1]["request"]["dryRun"] is True
    assert "status" not in api.store.get("longhorn.io/v1beta2/nodes", NS, "n1")  # nothing persisted


async def test_object_and_namespace_selectors(api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("sel", pki.ca_bundle,
                                         objectSelector={"matchLabels": {"watched": "yes"}},
                                         namespaceSelector={"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                                                  "operator": "In", "values": [NS]}]}))
    make_node(api, "plain")
    make_node(api, "watched", {"watched": "yes"})
    await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "plain", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert hook.reviews == []
    await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "watched", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert len(hook.reviews) == 1
    api.store.create("v1/namespaces", {"metadata": {"name": "elsewhere"}})
    api.store.create("longhorn.io/v1beta2/nodes", {"metadata": {"name": "w2", "namespace": "elsewhere", "labels": {"watched": "yes"}},
                                                   "spec": {}})
    await co.patch_namespaced_custom_object_status(*LH, "elsewhere", "nodes", "w2", {"status": {"region": "r1"}}, _content_type=MERGE)
    assert len(hook.reviews) == 1


async def test_url_client_config_and_user_info(api: ApiServer, hook: Webhook, pki: Pki, tmp_path: Path) -> None:
    cfg = webhook_config("url", pki.ca_bundle)
    cfg["webhooks"][0]["clientConfig"] = {"url": f"https://{SVC_HOST}:8443/by-url", "caBundle": pki.ca_bundle}
    api.webhook_hosts[f"{SVC_HOST}:8443"] = ("127.0.0.1", hook.port)
    api.store.create(MWC, cfg)
    api.add_user("lm-token", "system:serviceaccount:longhorn-system:longhorn-service-account", uid="sa-uid",
                 extra={"authentication.kubernetes.io/pod-name": ["longhorn-manager-7xk2p"]})
    n = make_node(api)
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer lm-token"}) as s:
        async with s.put(f"{api.url}/apis/longhorn.io/v1beta2/namespaces/{NS}/nodes/n1/status", json={**n, "status": {"region": "r1"}}) as r:
            assert r.status == 200
    (review,) = hook.reviews
    assert review["path"] == "/by-url"
    assert review["request"]["userInfo"]["username"] == "system:serviceaccount:longhorn-system:longhorn-service-account"
    assert review["request"]["userInfo"] == {
        "username": "system:serviceaccount:longhorn-system:longhorn-service-account", "uid": "sa-uid",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:longhorn-system", "system:authenticated"],
        "extra": {"authentication.kubernetes.io/pod-name": ["longhorn-manager-7xk2p"]}}
    # kubectl --as / --as-group impersonation headers
    async with aiohttp.ClientSession(headers={"Impersonate-User": "jane", "Impersonate-Group": "ops"}) as s:
        async with s.patch(f"{api.url}/apis/longhorn.io/v1beta2/namespaces/{NS}/nodes/n1/status",
                           json={"status": {"region": "r2"}}, headers={"Content-Type": MERGE}) as r:
            assert r.status == 200
    assert hook.reviews[-1]["request"]["userInfo"] == {"username": "jane", "groups": ["ops", "system:authenticated"]}


async def test_in_process_writes_skip_admission(api: ApiServer, hook: Webhook, pki: Pki) -> None:
    api.store.create(MWC, webhook_config("skip", pki.ca_bundle))
    n = make_node(api)
    api.store.update("longhorn.io/v1beta2/nodes", {**n, "status": {"region": "r1"}}, subresource="status")
    assert hook.reviews == []
