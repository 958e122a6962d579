"""Self-managed certificates: X.509 content, the Secret race, rotation, caBundle injection.

Against the API emulator over real HTTP; the end-to-end test lets the emulator's admission
dispatcher (which verifies `caBundle` and `svc.ns.svc` like kube-apiserver) call real HTTPS
servers that serve from `SelfManagedCerts` while the CA rotates under them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import HealthCheck, given, settings, strategies as st
from kubernetes_asyncio import client

from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn.kube import api_client
from webhook.certs import (
    CA_PREVIOUS_CRT,
    Material,
    Policy,
    STEP_ANNOTATION,
    SelfManagedCerts,
    advance,
    ensure_ca_bundle,
    keep_ca_bundle,
    fresh,
    service_dns_names,
)

NS, SVC, SECRET, MWC_NAME = "longhorn-system", "bimguard", "bimguard-webhook-tls", "bimguard"
NAMES = service_dns_names(SVC, NS)
HOST = f"{SVC}.{NS}.svc"
SECRETS = "v1/secrets"
MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Short lives so that rotations happen within a test: renew a third before the end.
SHORT = Policy(ca_validity=timedelta(days=90), serving_validity=timedelta(days=30), overlap=timedelta(minutes=10))


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def api():
    server = ApiServer()
    await server.start()
    yield server
    await server.admission.close()
    await server.stop()


@pytest.fixture
async def kube(api):
    c = api_client(api.url)
    yield c
    await c.close()


def verify(cert: x509.Certificate, bundle: tuple[x509.Certificate, ...], name: str, at: datetime) -> None:
    """Chain and name check as a TLS client does it (cryptography's RFC 5280 verifier)."""
    verifier = PolicyBuilder().store(Store(list(bundle))).time(at).build_server_verifier(x509.DNSName(name))
    verifier.verify(cert, [])


def trusts(bundle: tuple[x509.Certificate, ...], cert: x509.Certificate) -> bool:
    for ca in bundle:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:
            continue
    return False


def stored(api: ApiServer) -> dict:
    return api.store.get(SECRETS, NS, SECRET)


def stored_material(api: ApiServer) -> Material:
    obj = stored(api)
    data = {k: base64.b64decode(v) for k, v in obj["data"].items()}
    return Material.from_secret(data, obj["metadata"].get("annotations"))


# --- pure: certificates and the rotation decision ---------------------------------------------

def test_generated_chain_names_and_key_types():
    m = fresh(T0, Policy(), NAMES)
    for name in NAMES:
        verify(m.serving_cert, m.bundle, name, T0)
    for wrong in ("bimguard.default.svc", "other.longhorn-system.svc", "longhorn-system.svc"):
        with pytest.raises(VerificationError):
            verify(m.serving_cert, m.bundle, wrong, T0)
    with pytest.raises(VerificationError):
        verify(m.serving_cert, fresh(T0, Policy(), NAMES).bundle, HOST, T0)  # another CA

    san = m.serving_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "bimguard", "bimguard.longhorn-system", "bimguard.longhorn-system.svc",
        "bimguard.longhorn-system.svc.cluster.local"]
    assert not m.serving_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert m.serving_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert m.ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (m.ca.key, m.serving_key):
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert m.ca.cert.not_valid_after_utc == T0 + timedelta(days=3650)
    assert m.serving_cert.not_valid_after_utc == T0 + timedelta(days=365)
    assert m.serving_cert.not_valid_before_utc < T0  # backdated for clock skew
    with pytest.raises(VerificationError):  # and really expires
        verify(m.serving_cert, m.bundle, HOST, T0 + timedelta(days=366))


def test_a_fresh_secret_is_stable_and_round_trips():
    m = fresh(T0, Policy(), NAMES)
    assert advance(m, T0, Policy(), NAMES) is None
    assert advance(m, T0 + timedelta(days=240), Policy(), NAMES) is None  # 125 of 365 days left
    again = Material.from_secret(m.secret_data(), m.annotations())
    assert again.serving_cert == m.serving_cert and again.bundle == m.bundle


def test_serving_renewal_when_a_third_is_left_keeps_the_ca():
    m = fresh(T0, Policy(), NAMES)
    nxt, why = advance(m, T0 + timedelta(days=244), Policy(), NAMES)
    assert "serving certificate nears expiry" in why
    assert nxt.ca == m.ca and nxt.bundle == m.bundle and nxt.serving_cert != m.serving_cert
    verify(nxt.serving_cert, nxt.bundle, HOST, T0 + timedelta(days=244))


def test_renamed_service_or_broken_secret_is_reissued():
    m = fresh(T0, Policy(), NAMES)
    nxt, why = advance(m, T0, Policy(), service_dns_names("other", NS))
    assert why == ["serving certificate names differ"] and nxt.ca == m.ca
    nxt, why = advance(None, T0, Policy(), NAMES)
    assert why == ["no usable CA"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.integers(55 * 86400, 62 * 86400),  # the CA's renewal point is at day 60
       gaps=st.lists(st.one_of(st.integers(1, 25 * 60), st.integers(1, 20 * 86400)), min_size=3, max_size=30))
def test_rotation_never_leaves_a_served_certificate_untrusted(first, gaps):
    """Any poll schedule: whenever two Secret states can coexist (one replaced less than
    `overlap` before the other was written), each one's bundle trusts the other's certificate.
    Gaps up to 20 days also cover polls that stop for longer than a phase (CA expiry included).
    """
    policy = SHORT
    now, m = T0, fresh(T0, policy, NAMES)
    states: list[tuple[datetime, Material]] = [(now, m)]  # (written at, content)
    for gap in [first, *gaps]:
        now += timedelta(seconds=gap)
        step = advance(m, now, policy, NAMES)
        if step is None:
            continue
        m, _ = step
        assert advance(m, now, policy, NAMES) is None  # one answer per moment: replicas converge
        assert m.serving_cert.not_valid_after_utc <= m.ca.cert.not_valid_after_utc
        states.append((now, m))
    for i, (_, a) in enumerate(states):
        replaced_at = states[i + 1][0] if i + 1 < len(states) else now
        for written_at, b in states[i + 1:]:
            if written_at - replaced_at >= policy.overlap:
                break
            # (Once a certificate or every CA of a bundle has expired nothing can save it.)
            if a.serving_cert.not_valid_after_utc > written_at:
                assert trusts(b.bundle, a.serving_cert), "a replica still serving the old certificate is refused"
            if any(ca.not_valid_after_utc > written_at for ca in a.bundle):
                assert trusts(a.bundle, b.serving_cert), "a new certificate is served before the bundle trusts it"


def test_ca_rotation_phases():
    policy, m = SHORT, fresh(T0, SHORT, NAMES)
    old = m.ca.cert
    t = T0 + timedelta(days=61)  # 29 of 90 CA days left
    m1, why = advance(m, t, policy, NAMES)
    assert why[0] == "CA rotation: announce a new CA"
    new = m1.next_ca.cert
    assert m1.bundle == (old, new) and m1.serving_cert.verify_directly_issued_by(old) is None
    assert advance(m1, t + policy.overlap - timedelta(seconds=1), policy, NAMES) is None

    assert advance(m1, t + policy.overlap, policy, NAMES, next_ca_published=False) is None
    m2, why = advance(m1, t + policy.overlap, policy, NAMES)
    assert why == ["CA rotation: switch to the announced CA"]
    assert m2.ca.cert == new and m2.previous_ca == old and m2.bundle == (new, old)
    m2.serving_cert.verify_directly_issued_by(new)
    assert CA_PREVIOUS_CRT in m2.secret_data()

    assert advance(m2, t + 2 * policy.overlap - timedelta(seconds=1), policy, NAMES) is None
    m3, why = advance(m2, t + 2 * policy.overlap, policy, NAMES)
    assert why == ["CA rotation: drop the previous CA"]
    assert m3.bundle == (new,) and m3.serving_cert == m2.serving_cert
    assert advance(m3, t + 2 * policy.overlap, policy, NAMES) is None

    # Polls stopped until the old CA expired mid-rotation: the announced CA takes over at once.
    late = m1.ca.cert.not_valid_after_utc
    m5, why = advance(m1, late, policy, NAMES)
    assert why == ["CA expired: switch to the announced CA at once"]
    assert m5.ca == m1.next_ca and m5.bundle == (new,)
    m5.serving_cert.verify_directly_issued_by(new)

    # A lost timestamp mid-rotation restarts the overlap instead of dropping the old CA at once.
    lost = Material(m2.ca, m2.serving_cert, m2.serving_key, None, m2.previous_ca, None)
    m4, why = advance(lost, t + 3 * policy.overlap, policy, NAMES)
    assert why == ["CA rotation: timestamp missing"] and m4.previous_ca == old
    assert advance(m4, t + 3 * policy.overlap, policy, NAMES) is None
    lost_and_due = Material(m2.ca, m1.serving_cert, m1.serving_key, None, m2.previous_ca, None)
    m6, why = advance(lost_and_due, t + 3 * policy.overlap, policy, NAMES)
    assert why == ["CA rotation: timestamp missing", "serving certificate not issued by the CA"]
    assert advance(m6, t + 3 * policy.overlap, policy, NAMES) is None


# --- against the API emulator -------------------------------------------------------------------

async def test_concurrent_replicas_race_to_one_secret(api, kube):
    replicas = [SelfManagedCerts(kube, NS, SECRET, SVC) for _ in range(4)]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        writes = [(m, status) for m, path, status in api.requests
                  if "/secrets" in path and m in ("POST", "PUT", "PATCH")]
        assert writes.count(("POST", 201)) == 1, writes
        assert ("POST", 409) in writes, f"no replica lost the creation race: {writes}"
        assert not [w for w in writes if w[0] != "POST"], "a replica overwrote the winner's Secret"
        truth = stored_material(api)
        assert stored(api)["type"] == "kubernetes.io/tls"
        for r in replicas:
            assert r.certificate == truth.serving_cert
            assert r.ca_bundle_pem == truth.bundle_pem
        assert 364 * 86400 < replicas[0].cert_expiry_seconds() <= 365 * 86400
    finally:
        for r in replicas:
            await r.stop()


async def test_a_placeholder_secret_is_replaced_once(api, kube):
    # e.g. a chart that pre-creates an empty kubernetes.io/tls Secret
    api.store.create(SECRETS, {"metadata": {"name": SECRET, "namespace": NS}, "type": "kubernetes.io/tls",
                               "data": {"tls.crt": "", "tls.key": ""}})
    replicas = [SelfManagedCerts(kube, NS, SECRET, SVC) for _ in range(3)]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        truth = stored_material(api)
        assert all(r.certificate == truth.serving_cert for r in replicas)
        puts = [s for m, p, s in api.requests if m == "PUT" and "/secrets/" in p]
        assert puts.count(200) == 1, puts
    finally:
        for r in replicas:
            await r.stop()


def mwc(api: ApiServer, rule_resource: str = "configmaps", port: int = 443) -> None:
    hook = lambda name: {  # noqa: E731
        "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
        "timeoutSeconds": 5,
        "clientConfig": {"service": {"name": SVC, "namespace": NS, "path": "/mutate", "port": port}},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": [rule_resource]}],
    }
    api.store.create(MWC, {"metadata": {"name": MWC_NAME}, "webhooks": [hook("a.bimguard.io"), hook("b.bimguard.io")]})


def bundles(api: ApiServer) -> list[bytes | None]:
    obj = api.store.get(MWC, None, MWC_NAME)
    return [base64.b64decode(h["clientConfig"]["caBundle"]) if h["clientConfig"].get("caBundle") else None
            for h in obj["webhooks"]]


async def test_ca_bundle_injection_and_drift_repair(api, kube):
    mwc(api)
    source = SelfManagedCerts(kube, NS, SECRET, SVC)
    await source.start()
    try:
        pem = source.ca_bundle_pem
        assert await ensure_ca_bundle(kube, MWC_NAME, pem) is True
        assert bundles(api) == [pem, pem]
        rv = api.store.get(MWC, None, MWC_NAME)["metadata"]["resourceVersion"]
        assert await ensure_ca_bundle(kube, MWC_NAME, pem) is False
        assert api.store.get(MWC, None, MWC_NAME)["metadata"]["resourceVersion"] == rv  # no idle writes

        # `helm upgrade` re-renders the configuration without caBundle (or with a stale one)
        obj = api.store.get(MWC, None, MWC_NAME)
        del obj["webhooks"][0]["clientConfig"]["caBundle"]
        obj["webhooks"][1]["clientConfig"]["caBundle"] = base64.b64encode(b"stale").decode()
        api.store.update(MWC, obj)
        assert await ensure_ca_bundle(kube, MWC_NAME, pem) is True
        assert bundles(api) == [pem, pem]
        patches = [(m, s) for m, p, s in api.requests if m == "PATCH" and "mutatingwebhookconfigurations" in p]
        assert patches == [("PATCH", 200), ("PATCH", 200)]
        with pytest.raises(ValueError):
            await ensure_ca_bundle(kube, MWC_NAME, b"")
    finally:
        await source.stop()


async def test_ca_bundle_patch_is_conditional_on_the_resource_version(api, kube):
    """A writer that changes the configuration between our read and our patch is not overwritten
    blindly: the `test` fails and the patch is recomputed from the new version."""
    mwc(api)
    pem = fresh(T0, Policy(), NAMES).bundle_pem
    api.faults.latency(0.3, verbs="patch", resource=MWC)  # our PATCH is in flight for a while
    task = asyncio.create_task(ensure_ca_bundle(kube, MWC_NAME, pem))
    while not any(m == "GET" and "mutatingwebhookconfigurations" in p for m, p, _ in api.requests):
        await asyncio.sleep(0.005)
    other = api.store.get(MWC, None, MWC_NAME)
    other["webhooks"] = other["webhooks"][:1]  # e.g. a helm upgrade dropping a webhook, meanwhile
    api.store.update(MWC, other)
    assert await task is True
    raced = True
    assert raced and bundles(api) == [pem]
    statuses = [s for m, p, s in api.requests if m == "PATCH" and "mutatingwebhookconfigurations" in p]
    assert statuses == [422, 200], statuses


async def test_the_switch_waits_for_the_webhook_configuration_to_trust_the_new_ca(api, kube, caplog):
    mwc(api)
    clock = Clock()
    source = SelfManagedCerts(kube, NS, SECRET, SVC, policy=SHORT, clock=clock, mwc_name=MWC_NAME)
    await source.start()
    try:
        await ensure_ca_bundle(kube, MWC_NAME, source.ca_bundle_pem)
        clock.now = T0 + timedelta(days=61)
        await source.refresh()
        announced = stored_material(api)
        assert announced.next_ca is not None
        clock.now += 3 * SHORT.overlap  # long past the overlap, but no leader has published it
        assert await source.refresh() is False
        assert stored_material(api).next_ca == announced.next_ca
        assert "does not trust the new CA" in caplog.text
        await ensure_ca_bundle(kube, MWC_NAME, source.ca_bundle_pem)
        assert await source.refresh() is True
        switched = stored_material(api)
        assert switched.ca == announced.next_ca and switched.previous_ca == announced.ca.cert
        assert source.certificate == switched.serving_cert
    finally:
        await source.stop()


async def test_a_replacement_keeps_foreign_metadata_and_the_type(api, kube):
    source = SelfManagedCerts(kube, NS, SECRET, SVC, policy=SHORT, clock=Clock())
    await source.start()
    obj = stored(api)
    obj["metadata"]["labels"] = {"team": "storage"}
    obj["metadata"]["annotations"] = {"note": "kept"}
    api.store.update(SECRETS, obj)
    source.clock.now = T0 + timedelta(days=21)  # serving certificate due
    assert await source.refresh() is True
    await source.stop()
    meta = stored(api)["metadata"]
    assert meta["labels"] == {"team": "storage", "app.kubernetes.io/managed-by": "bimguard"}
    assert meta["annotations"] == {"note": "kept"}
    assert stored(api)["type"] == "kubernetes.io/tls"
    clock = Clock(T0 + timedelta(days=61))
    source = SelfManagedCerts(kube, NS, SECRET, SVC, policy=SHORT, clock=clock)
    await source.start()
    await source.stop()
    assert set(stored(api)["metadata"]["annotations"]) == {"note", STEP_ANNOTATION}


async def test_keep_ca_bundle_repairs_drift_until_cancelled(api, kube):
    mwc(api)
    source = SelfManagedCerts(kube, NS, SECRET, SVC)
    await source.start()
    task = asyncio.create_task(keep_ca_bundle(kube, MWC_NAME, source, interval=0.02))
    try:
        for _ in range(200):
            if bundles(api) == [source.ca_bundle_pem] * 2:
                break
            await asyncio.sleep(0.01)
        assert bundles(api) == [source.ca_bundle_pem] * 2
        obj = api.store.get(MWC, None, MWC_NAME)
        for hook in obj["webhooks"]:
            hook["clientConfig"].pop("caBundle")
        api.store.update(MWC, obj)  # helm upgrade
        api.store.delete(MWC, None, MWC_NAME)  # even a missing configuration does not kill the loop
        await asyncio.sleep(0.05)
        assert not task.done()
        mwc(api)
        for _ in range(200):
            if bundles(api) == [source.ca_bundle_pem] * 2:
                break
            await asyncio.sleep(0.01)
        assert bundles(api) == [source.ca_bundle_pem] * 2
    finally:
        task.cancel()
        await source.stop()


# --- end to end: the emulator's admission calls replicas while the CA rotates ----------------------

async def serve(ctx):
    calls: list[str] = []

    async def mutate(request: web.Request) -> web.Response:
        review = await request.json()
        calls.append(review["request"]["uid"])
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                  "response": {"uid": review["request"]["uid"], "allowed": True}})

    app = web.Application()
    app.router.add_post("/mutate", mutate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1], calls  # type: ignore[union-attr]


async def test_rotation_end_to_end_through_the_emulated_admission(api, kube):
    # The emulated API server checks validity against the real time, so the fake clock starts in
    # the past and its last step is still before now.
    policy = Policy(ca_validity=timedelta(days=90), serving_validity=timedelta(days=90), overlap=timedelta(minutes=10))
    start = datetime.now(timezone.utc) - timedelta(days=61) - 2 * policy.overlap - timedelta(minutes=1)
    clock = Clock(start)
    replicas = [SelfManagedCerts(kube, NS, SECRET, SVC, policy=policy, clock=clock) for _ in range(2)]
    await asyncio.gather(*(r.start() for r in replicas))
    servers = [await serve(r.ssl_context) for r in replicas]
    mwc(api)
    n = 0

    async def admitted_by(i: int) -> None:
        """Create an object through the API with replica i as the webhook; it must answer."""
        nonlocal n
        n += 1
        api.webhook_hosts[HOST] = ("127.0.0.1", servers[i][1])
        before = len(servers[i][2])
        api.admission.calls.clear()
        resp = await api_post_configmap(kube, f"cm-{n}")
        assert resp == 201
        assert len(servers[i][2]) == before + 2, api.admission.calls  # both webhooks reached replica i
        assert [o for _, o in api.admission.calls] == ["allowed", "allowed"]

    try:
        # No caBundle yet: the call fails verification and is ignored (failurePolicy Ignore).
        api.webhook_hosts[HOST] = ("127.0.0.1", servers[0][1])
        assert await api_post_configmap(kube, "before") == 201
        assert all("signed by unknown authority" in o for _, o in api.admission.calls), api.admission.calls

        leader = replicas[0]
        assert await ensure_ca_bundle(kube, MWC_NAME, leader.ca_bundle_pem)
        await admitted_by(0)
        await admitted_by(1)
        first_ca = stored_material(api).ca.cert

        seen_bundles = []
        # Walk through announce, switch, drop. At each step replica 0 writes, the leader and
        # replica 1 lag behind: calls must keep succeeding in every interleaving.
        for at in (timedelta(days=61), timedelta(days=61) + policy.overlap,
                   timedelta(days=61) + 2 * policy.overlap):
            clock.now = start + at
            assert await replicas[0].refresh() is True
            await admitted_by(0)  # new state served, MWC and replica 1 still on the old one
            await admitted_by(1)
            assert await ensure_ca_bundle(kube, MWC_NAME, leader.ca_bundle_pem)
            await admitted_by(1)
            await replicas[1].refresh()
            await admitted_by(1)
            await admitted_by(0)
            seen_bundles.append(bundles(api)[0].count(b"BEGIN CERTIFICATE"))
        final = stored_material(api)
        assert seen_bundles == [2, 2, 1]  # old and new CA in the bundle during the overlap
        assert final.ca.cert != first_ca and final.bundle == (final.ca.cert,)
        assert all(r.certificate == final.serving_cert for r in replicas)
    finally:
        for r in replicas:
            await r.stop()
        for runner, _, _ in servers:
            await runner.cleanup()


async def api_post_configmap(kube, name: str) -> int:
    await client.CoreV1Api(kube).create_namespaced_config_map(NS, {"metadata": {"name": name}, "data": {}})
    return 201


async def test_background_poll_follows_renewals_and_survives_api_errors(api, kube, caplog):
    clock = Clock()
    follower = SelfManagedCerts(kube, NS, SECRET, SVC, policy=SHORT, clock=clock, poll_interval=0.02)
    writer = SelfManagedCerts(kube, NS, SECRET, SVC, policy=SHORT, clock=clock, poll_interval=3600)
    await follower.start()
    await writer.start()
    try:
        api.faults.error_rate(1.0, 503, verbs="get", resource=SECRETS)
        await asyncio.sleep(0.1)
        assert "503" in caplog.text and not follower._task.done()
        first = follower.certificate
        api.faults.clear()
        clock.now = T0 + timedelta(days=21)
        # Both may renew; whichever writes first wins and the other adopts it.
        await writer.refresh()
        for _ in range(200):
            if follower.certificate == writer.certificate:
                break
            await asyncio.sleep(0.01)
        assert follower.certificate == writer.certificate == stored_material(api).serving_cert != first
    finally:
        await follower.stop()
        await writer.stop()


async def test_a_deleted_secret_is_recreated(api, kube):
    source = SelfManagedCerts(kube, NS, SECRET, SVC, poll_interval=3600)
    await source.start()
    try:
        first = source.certificate
        api.store.delete(SECRETS, NS, SECRET)
        assert await source.refresh() is True
        assert source.certificate != first and stored_material(api).serving_cert == source.certificate
    finally:
        await source.stop()


# --- key material never reaches logs or reprs ---------------------------------------------------

def secrets_of(m: Material) -> list[str]:
    """Distinctive fragments of every private key, as PEM body and as Secret base64."""
    out = []
    for key, value in m.secret_data().items():
        if key.endswith(".key"):
            body = "".join(value.decode().splitlines()[1:-1])
            out += [body[20:60], base64.b64encode(value).decode()[40:80]]
    return out


async def test_no_key_material_in_logs_or_reprs(api, kube, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)  # every logger, including kubernetes_asyncio's REST body dump
    clock = Clock()
    replicas = [SelfManagedCerts(kube, NS, SECRET, SVC, policy=SHORT, clock=clock) for _ in range(2)]
    await asyncio.gather(*(r.start() for r in replicas))
    materials = [stored_material(api)]
    for at in (timedelta(days=61), timedelta(days=61) + SHORT.overlap, timedelta(days=61) + 2 * SHORT.overlap):
        clock.now = T0 + at
        for r in replicas:
            await r.refresh()
        materials.append(stored_material(api))
    mwc(api)
    await ensure_ca_bundle(kube, MWC_NAME, replicas[0].ca_bundle_pem)
    obj = api.store.get(SECRETS, NS, SECRET)
    obj["data"]["ca.key"] = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n").decode()
    api.store.update(SECRETS, obj)
    await replicas[0].refresh()
    materials.append(stored_material(api))
    for r in replicas:
        await r.stop()

    texts = [rec.getMessage() + (rec.exc_text or "") for rec in caplog.records]
    texts += [repr(r) for r in replicas] + [repr(m) for m in materials] + [repr(m.ca) for m in materials]
    joined = "\n".join(texts)
    assert any(rec.name == "bimguard.webhook.certs" for rec in caplog.records) and "serial=" in joined
    assert "PRIVATE KEY" not in joined
    for m in materials:
        for fragment in secrets_of(m):
            assert fragment not in joined
    assert not re.search(r"\bca\.key['\"]?\s*:\s*['\"]\w{20,}", joined)

    # Control: the check does catch a leak. kubernetes_asyncio logs preloaded response bodies at
    # DEBUG, which is why certs.py reads Secrets with _preload_content=False.
    caplog.clear()
    await client.CoreV1Api(kube).read_namespaced_secret(SECRET, NS)
    leaked = "\n".join(rec.getMessage() for rec in caplog.records)
    assert any(fragment in leaked for fragment in secrets_of(materials[-1]))
