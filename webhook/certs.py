"""Self-managed certificates for the admission webhook: a CA and a serving certificate in one Secret.

Layout of the Secret (type `kubernetes.io/tls`, so `kubectl`, cert-manager-aware tools and a
mounted volume all read it):
    tls.crt, tls.key      the serving certificate (ECDSA P-256) and its key
    ca.crt, ca.key        the CA that signed tls.crt, and its key (only this Secret holds it)
    ca-next.crt/.key      a CA announced for rotation, not yet signing (phase 1 below)
    ca-previous.crt       the CA that signed the serving certificate before the last switch
    annotation bimguard.io/ca-rotation-step-at   when the last rotation phase was written
The CA bundle for `caBundle` is ca.crt + ca-next.crt + ca-previous.crt, whichever are present.

Validity (choice, following Longhorn's own webhook, rancher/dynamiclistener: 10-year CA,
1-year serving certificate): the CA key never leaves the Secret, so a long CA life costs
little and keeps rotations of the trust anchor (the only step that needs the MWC to follow)
rare; the serving certificate, whose key is in every replica's memory, is short-lived and
reissued when less than a third of its life is left (~4 months ahead, many chances to succeed
before expiry). The CA is rotated when less than a third of its life is left (3.3 years ahead).
Serving certificates never outlive their CA. `Policy` makes all of this configurable (tests use
days and minutes). Keys are ECDSA P-256: fast to generate (a replica that loses the creation race has
wasted microseconds, not an RSA key search), small, and accepted by Go's crypto/tls.

Protocol (no leader needed for the Secret; every step is a compare-and-swap):
- Creation: every replica reads the Secret; if it is absent it generates a CA and serving
  certificate and *creates* the Secret. On `409 AlreadyExists` it re-reads and uses the
  winner's Secret unchanged: a fresh Secret of another replica is never overwritten.
- Every change afterwards is a PUT with the resourceVersion it was computed from. On `409
  Conflict` the replica re-reads and recomputes, usually finding the work done by the winner.
  `advance()` is the only place that decides what to write; it is pure.
- Serving renewal (CA unchanged): new tls.crt/tls.key signed by ca.key. Replicas reload within
  one poll interval; the old certificate is still valid, so nothing depends on their timing.
- CA rotation, three phases, each written once `Policy.overlap` has passed since the previous:
    1. announce: ca-next.crt/.key added. Bundle = {current, next}. Nobody serves from `next`
       yet, so the leader's caBundle update and the replicas' reloads can happen in any order.
    2. switch: next becomes ca.crt/ca.key, the old ca.crt moves to ca-previous.crt, and a new
       serving certificate is issued by the new CA. Bundle = {new, previous}: trusts both the
       certificates replicas serve until they reload and the new one. With `mwc_name` given,
       the switch also waits until every webhook's caBundle in that configuration contains
       the new CA (a missing configuration counts as yes: nobody calls us), so an absent
       leader delays the rotation instead of breaking the webhook.
    3. drop: ca-previous.crt removed once every replica has had `overlap` to load phase 2.
  Safety condition: `overlap` must exceed the replicas' Secret poll interval plus the leader's
  caBundle reconcile interval and the clock skew between replicas (defaults: 30 s poll, 30 s
  `keep_ca_bundle`, 10 min overlap). Then at every moment the caBundle in the
  MutatingWebhookConfiguration trusts every certificate any replica serves.
- Time-based, not acknowledged: replicas do not report which certificate they loaded, so phase 3
  relies on every live replica polling within `overlap`. A replica cut off from the API for
  longer keeps serving its old certificate, which the bundle stops trusting at phase 3: its
  calls then fail and are ignored (failurePolicy Ignore, the repair Job is the backstop) until
  it reads the Secret again.
- A Secret that cannot be parsed (hand-edited, or a placeholder without keys) is replaced with a
  fresh CA, again with the resourceVersion precondition.

The leader (chosen elsewhere) runs `keep_ca_bundle` (or calls `ensure_ca_bundle` with
`source.ca_bundle_pem` itself) periodically; that repairs drift, e.g. a `helm upgrade` that
resets `caBundle`.

Key material never reaches a log: log lines name certificates by serial, fingerprint and
expiry; reprs omit keys; Secret responses are read with `_preload_content=False` because
kubernetes_asyncio's REST client logs every preloaded response body at DEBUG level; API errors
are logged as status and reason only.

Public API:
    Policy(ca_validity, serving_validity, renew_fraction, overlap, backdate)
    service_dns_names(service, namespace, cluster_domain="cluster.local") -> tuple[str, ...]
    Issuer, Material, fresh(now, policy, dns_names) -> Material
    advance(material, now, policy, dns_names, *, next_ca_published=True) -> (Material, reasons) | None
    new_ca(now, validity, common_name) -> Issuer
    issue_serving(ca, dns_names, now, validity, backdate) -> (certificate, key)
    SelfManagedCerts(api_client, namespace, secret_name, service_name, *, policy=Policy(),
                     poll_interval=30.0, cluster_domain="cluster.local", clock=utcnow,
                     tmp_dir=None, mwc_name=None)
        a CertSource (webhook/tls.py): start(), stop(), ssl_context, certificate, not_after,
        ca_bundle_pem, cert_expiry_seconds(); plus refresh() -> bool (one poll, for tests and
        the controller) and material (the parsed Secret; its repr shows no keys)
    async ensure_ca_bundle(api_client, mwc_name, bundle_pem) -> bool   # True if it patched
    async keep_ca_bundle(api_client, mwc_name, source, interval=30.0)   # the leader's loop
    async patch_webhooks(api_client, mwc_name, changes, what) -> int    # resourceVersion-tested JSON Patch
    ApiFailure                 # .status, .reason of a failed API call (raised by the above)
`start()` raises when the API server cannot be reached: the pod then restarts rather than serve
nothing; after that, API failures are logged and the last certificate keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from webhook.tls import CertSource, InvalidCertificate, describe, parse_pair

log = logging.getLogger("bimguard.webhook.certs")

SECRET_TYPE = "kubernetes.io/tls"
TLS_CRT, TLS_KEY = "tls.crt", "tls.key"
CA_CRT, CA_KEY = "ca.crt", "ca.key"
CA_NEXT_CRT, CA_NEXT_KEY = "ca-next.crt", "ca-next.key"
CA_PREVIOUS_CRT = "ca-previous.crt"
STEP_ANNOTATION = "bimguard.io/ca-rotation-step-at"
MANAGED_BY = {"app.kubernetes.io/managed-by": "bimguard"}
CA_COMMON_NAME = "bimguard-webhook-ca"

_PEM = serialization.Encoding.PEM


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Policy:
    ca_validity: timedelta = timedelta(days=3650)
    serving_validity: timedelta = timedelta(days=365)
    renew_fraction: float = 1 / 3  # renew when less than this share of the validity is left
    overlap: timedelta = timedelta(minutes=10)  # > replicas' poll + leader's caBundle interval
    backdate: timedelta = timedelta(minutes=5)  # notBefore in the past: tolerate clock skew


def service_dns_names(service: str, namespace: str, cluster_domain: str = "cluster.local") -> tuple[str, ...]:
    """Every name a client may use for the Service; kube-apiserver uses `svc.ns.svc`."""
    return (service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.{cluster_domain}")


# --- certificates (pure) ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, eq=False)
class Issuer:
    """A CA certificate and its key (checked to match, so the certificate identifies it)."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes = field(repr=False)

    def __repr__(self) -> str:
        return f"Issuer({describe(self.cert)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Issuer) and other.cert == self.cert

    def __hash__(self) -> int:
        return hash(self.cert)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(now: datetime, validity: timedelta, common_name: str = CA_COMMON_NAME,
           backdate: timedelta = timedelta(minutes=5)) -> Issuer:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issuer(cert, key)


def issue_serving(ca: Issuer, dns_names: tuple[str, ...], now: datetime, validity: timedelta,
                  backdate: timedelta = timedelta(minutes=5)) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A serverAuth certificate for `dns_names` (the first is also the CN), never outliving `ca`."""
    key = _new_key()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + validity, ca.cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - backdate, ca.cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(_PEM)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _dns_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName))


def _remaining_share(cert: x509.Certificate, now: datetime) -> float:
    life = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    return (cert.not_valid_after_utc - now).total_seconds() / life if life > 0 else 0.0


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- the Secret's content (pure) ----------------------------------------------------------------

class InvalidMaterial(ValueError):
    """A Secret that does not hold a usable bimguard CA and serving certificate."""


@dataclass(frozen=True, slots=True, eq=False)
class Material:
    """What the Secret holds, parsed. Reprs show certificates only, never keys. Compared by
    identity: compare `bundle` or `serving_cert` instead."""

    ca: Issuer
    serving_cert: x509.Certificate
    serving_key: Any = field(repr=False)
    next_ca: Issuer | None = None
    previous_ca: x509.Certificate | None = None
    step_at: datetime | None = None

    def __repr__(self) -> str:
        parts = [f"ca={describe(self.ca.cert)}", f"serving={describe(self.serving_cert)}"]
        if self.next_ca is not None:
            parts.append(f"next={describe(self.next_ca.cert)}")
        if self.previous_ca is not None:
            parts.append(f"previous={describe(self.previous_ca)}")
        return f"Material({', '.join(parts)})"

    @property
    def bundle(self) -> tuple[x509.Certificate, ...]:
        out: list[x509.Certificate] = []
        for cert in (self.ca.cert, self.next_ca.cert if self.next_ca else None, self.previous_ca):
            if cert is not None and cert not in out:
                out.append(cert)
        return tuple(out)

    @property
    def bundle_pem(self) -> bytes:
        return b"".join(_cert_pem(c) for c in self.bundle)

    @property
    def serving_pem(self) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) as `load_cert_chain` wants them."""
        return _cert_pem(self.serving_cert), _key_pem(self.serving_key)

    def secret_data(self) -> dict[str, bytes]:
        cert_pem, key_pem = self.serving_pem
        data = {TLS_CRT: cert_pem, TLS_KEY: key_pem, CA_CRT: _cert_pem(self.ca.cert), CA_KEY: _key_pem(self.ca.key)}
        if self.next_ca is not None:
            data[CA_NEXT_CRT] = _cert_pem(self.next_ca.cert)
            data[CA_NEXT_KEY] = _key_pem(self.next_ca.key)
        if self.previous_ca is not None:
            data[CA_PREVIOUS_CRT] = _cert_pem(self.previous_ca)
        return data

    def annotations(self) -> dict[str, str]:
        return {STEP_ANNOTATION: self.step_at.isoformat()} if self.step_at is not None else {}

    @classmethod
    def from_secret(cls, data: dict[str, bytes], annotations: dict[str, str] | None = None) -> Material:
        """Parse decoded Secret data; InvalidMaterial if the required parts are missing or broken.

        Broken optional parts (next, previous CA) are dropped rather than failing the whole.
        """
        missing = [k for k in (TLS_CRT, TLS_KEY, CA_CRT, CA_KEY) if not data.get(k)]
        if missing:
            raise InvalidMaterial(f"missing {', '.join(missing)}")
        try:
            ca = _issuer(data[CA_CRT], data[CA_KEY])
            serving_cert = parse_pair(data[TLS_CRT], data[TLS_KEY])
            serving_key = serialization.load_pem_private_key(data[TLS_KEY], password=None)
        except (InvalidCertificate, ValueError, TypeError) as e:
            raise InvalidMaterial(str(e) if isinstance(e, InvalidCertificate) else "unparseable CA or key") from None
        next_ca = previous = step_at = None
        if data.get(CA_NEXT_CRT) and data.get(CA_NEXT_KEY):
            try:
                next_ca = _issuer(data[CA_NEXT_CRT], data[CA_NEXT_KEY])
            except (InvalidCertificate, ValueError, TypeError):
                log.warning("ignoring an unparseable %s", CA_NEXT_CRT)
        if data.get(CA_PREVIOUS_CRT):
            try:
                previous = x509.load_pem_x509_certificate(data[CA_PREVIOUS_CRT])
            except ValueError:
                log.warning("ignoring an unparseable %s", CA_PREVIOUS_CRT)
        raw = (annotations or {}).get(STEP_ANNOTATION)
        if raw:
            try:
                step_at = datetime.fromisoformat(raw)
                if step_at.tzinfo is None:
                    step_at = step_at.replace(tzinfo=timezone.utc)
            except ValueError:
                log.warning("ignoring an unparseable %s annotation", STEP_ANNOTATION)
        return cls(ca, serving_cert, serving_key, next_ca, previous, step_at)


def _issuer(cert_pem: bytes, key_pem: bytes) -> Issuer:
    cert = parse_pair(cert_pem, key_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise InvalidCertificate("CA certificate is not a CA")
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as e:
        raise InvalidCertificate(f"CA certificate lacks {e.oid}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise InvalidCertificate("CA key is neither ECDSA nor RSA")  # issue_serving signs with SHA-256
    return Issuer(cert, key)


def fresh(now: datetime, policy: Policy, dns_names: tuple[str, ...]) -> Material:
    ca = new_ca(now, policy.ca_validity, backdate=policy.backdate)
    cert, key = issue_serving(ca, dns_names, now, policy.serving_validity, policy.backdate)
    return Material(ca, cert, key)


def advance(material: Material | None, now: datetime, policy: Policy, dns_names: tuple[str, ...], *,
            next_ca_published: bool = True) -> tuple[Material, list[str]] | None:
    """What the Secret should hold next, and why; None when it is fine as it is.

    The single decision of the rotation protocol (see the module docstring). Applied to its own
    output at the same `now` it returns None: every replica converges on one answer.
    `next_ca_published`: the webhook configuration already trusts the announced CA (phase 2
    waits for it even after `overlap`).
    """
    if material is None:
        return fresh(now, policy, dns_names), ["no usable CA"]
    if now >= material.ca.cert.not_valid_after_utc:
        # Nothing signed by it is valid any more, so there is no overlap to preserve; an announced
        # CA is already in the bundle, so use it rather than a new one.
        nxt = material.next_ca
        if nxt is not None and now < nxt.cert.not_valid_after_utc:
            cert, key = issue_serving(nxt, dns_names, now, policy.serving_validity, policy.backdate)
            return Material(nxt, cert, key), ["CA expired: switch to the announced CA at once"]
        return fresh(now, policy, dns_names), ["CA expired"]
    m, why = material, []
    if (m.next_ca is not None or m.previous_ca is not None) and m.step_at is None:
        # Mid-rotation without a timestamp (annotation lost): restart the overlap rather than guess.
        m = replace(m, step_at=now)
        why.append("CA rotation: timestamp missing")
    since_step = now - m.step_at if m.step_at is not None else policy.overlap
    if m.next_ca is not None and since_step >= policy.overlap and next_ca_published:
        cert, key = issue_serving(m.next_ca, dns_names, now, policy.serving_validity, policy.backdate)
        m = Material(m.next_ca, cert, key, None, m.ca.cert, now)
        why.append("CA rotation: switch to the announced CA")
    elif m.next_ca is None and m.previous_ca is not None and since_step >= policy.overlap:
        m = replace(m, previous_ca=None, step_at=None)
        why.append("CA rotation: drop the previous CA")
    if (m.next_ca is None and m.previous_ca is None
            and _remaining_share(m.ca.cert, now) < policy.renew_fraction):
        m = replace(m, next_ca=new_ca(now, policy.ca_validity, backdate=policy.backdate), step_at=now)
        why.append("CA rotation: announce a new CA")
    serving = m.serving_cert
    stale = [reason for reason, bad in (
        ("serving certificate nears expiry", _remaining_share(serving, now) < policy.renew_fraction),
        ("serving certificate names differ", _dns_names(serving) != set(dns_names)),
        ("serving certificate not issued by the CA", not _issued_by(serving, m.ca.cert)),
    ) if bad]
    if stale:
        cert, key = issue_serving(m.ca, dns_names, now, policy.serving_validity, policy.backdate)
        m = replace(m, serving_cert=cert, serving_key=key)
        why.extend(stale)
    return (m, why) if why else None


# --- Kubernetes I/O -----------------------------------------------------------------------------

class ApiFailure(Exception):
    """An API call failed: `.status`, `.reason`; the message is just those (bodies may echo objects)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


async def _raw(call: Any) -> tuple[int, dict[str, Any]]:
    """Run a kubernetes_asyncio call made with `_preload_content=False`: (status, JSON body)."""
    try:
        resp = await call
    except ApiException as e:  # raised for transport-level issues even without preloading
        raise ApiFailure(int(e.status or 0), str(e.reason or "")) from None
    try:
        body = await resp.read()
    finally:
        resp.release()
    try:
        obj = json.loads(body) if body else {}
    except ValueError:
        obj = {}
    if not 200 <= resp.status <= 299:
        raise ApiFailure(resp.status, str(obj.get("reason") or resp.reason or ""))
    return resp.status, obj


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bundle_certs(ca_bundle: str | None) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(base64.b64decode(ca_bundle or ""))
    except ValueError:
        return []


class SelfManagedCerts(CertSource):
    """A CA and serving certificate kept in one Secret, shared by every replica (module docstring)."""

    def __init__(self, api_client: client.ApiClient, namespace: str, secret_name: str, service_name: str, *,
                 policy: Policy = Policy(), poll_interval: float = 30.0, cluster_domain: str = "cluster.local",
                 clock: Callable[[], datetime] = _utcnow, tmp_dir: str | None = None,
                 mwc_name: str | None = None) -> None:
        super().__init__(tmp_dir)
        self.mwc_name = mwc_name
        self.namespace, self.secret_name = namespace, secret_name
        self.dns_names = service_dns_names(service_name, namespace, cluster_domain)
        self.policy, self.poll_interval, self.clock = policy, poll_interval, clock
        self._core = client.CoreV1Api(api_client)
        self._admission = client.AdmissionregistrationV1Api(api_client)
        self._material: Material | None = None

    @property
    def material(self) -> Material:
        if self._material is None:
            raise RuntimeError("no certificate loaded yet: call start() first")
        return self._material

    @property
    def ca_bundle_pem(self) -> bytes:
        return self.material.bundle_pem

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="bimguard-certs")

    async def refresh(self) -> bool:
        """Read the Secret, write the protocol's next step if one is due, serve what it holds.

        True if the served certificate or the CA bundle changed. Raises ApiFailure when the
        API server cannot be read or written (the current certificate keeps serving).
        """
        for _ in range(10):
            now = self.clock()
            current = await self._read()
            if current is None:
                material = fresh(now, self.policy, self.dns_names)
                if not await self._create(material):
                    continue  # another replica created it first: read and use theirs
                log.info("created Secret %s/%s: %s", self.namespace, self.secret_name, describe(material.serving_cert))
                return self._use(material)
            obj, data = current
            parsed: Material | None = None
            try:
                parsed = Material.from_secret(data, (obj.get("metadata") or {}).get("annotations"))
            except InvalidMaterial as e:
                log.warning("Secret %s/%s holds no usable certificates (%s); replacing it",
                            self.namespace, self.secret_name, e)
            published = True
            if (parsed is not None and parsed.next_ca is not None and parsed.step_at is not None
                    and now - parsed.step_at >= self.policy.overlap and self.mwc_name):
                published = await self._trusted_by_webhooks(parsed.next_ca.cert)
                if not published:
                    log.warning("CA rotation waits: MutatingWebhookConfiguration %s does not trust the new CA "
                                "(%s) yet; is the leader injecting caBundle?", self.mwc_name,
                                describe(parsed.next_ca.cert))
            step = advance(parsed, now, self.policy, self.dns_names, next_ca_published=published)
            if step is None and parsed is not None:
                return self._use(parsed)
            assert step is not None
            nxt, why = step
            if not await self._replace(nxt, obj):
                continue  # someone else wrote first: recompute from theirs
            log.info("updated Secret %s/%s (%s): %s", self.namespace, self.secret_name, "; ".join(why), nxt)
            return self._use(nxt)
        raise RuntimeError(f"Secret {self.namespace}/{self.secret_name}: no stable state after 10 attempts")

    def _use(self, material: Material) -> bool:
        before = self._material
        self._material = material
        if self._serving.load(*material.serving_pem):
            log.info("serving certificate %s", describe(material.serving_cert))
            return True
        return before is None or before.bundle != material.bundle

    async def _read(self) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        """(the Secret as stored, its decoded data); None if there is none."""
        try:
            _, obj = await _raw(self._core.read_namespaced_secret(
                self.secret_name, self.namespace, _preload_content=False))
        except ApiFailure as e:
            if e.status == 404:
                return None
            raise
        try:
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        except (ValueError, TypeError):
            data = {}
        return obj, data

    def _body(self, material: Material, current: dict[str, Any] | None) -> dict[str, Any]:
        """The Secret to write. A replacement keeps what others put in the metadata (labels,
        annotations, owners) and the type (immutable in the API)."""
        meta: dict[str, Any] = dict((current or {}).get("metadata") or {})
        meta.pop("managedFields", None)
        meta.update(name=self.secret_name, namespace=self.namespace)
        meta["labels"] = {**(meta.get("labels") or {}), **MANAGED_BY}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != STEP_ANNOTATION}
        meta["annotations"] = {**annotations, **material.annotations()}
        secret_type = (current or {}).get("type") or SECRET_TYPE
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": secret_type,
                "data": {k: _b64(v) for k, v in material.secret_data().items()}}

    async def _create(self, material: Material) -> bool:
        try:
            await _raw(self._core.create_namespaced_secret(
                self.namespace, self._body(material, None), _preload_content=False))
        except ApiFailure as e:
            if e.status == 409:
                log.info("Secret %s/%s was created by another replica; using it", self.namespace, self.secret_name)
                return False
            raise
        return True

    async def _replace(self, material: Material, current: dict[str, Any]) -> bool:
        """PUT with the resourceVersion `current` was read at; False if it changed meanwhile."""
        try:
            await _raw(self._core.replace_namespaced_secret(
                self.secret_name, self.namespace, self._body(material, current), _preload_content=False))
        except ApiFailure as e:
            if e.status in (404, 409):  # deleted or changed since we read it
                log.info("Secret %s/%s changed under us (%s); re-reading", self.namespace, self.secret_name, e)
                return False
            raise
        return True

    async def _trusted_by_webhooks(self, ca: x509.Certificate) -> bool:
        """Does every webhook of the configuration trust `ca`? (No configuration: nobody calls us.)"""
        assert self.mwc_name is not None
        try:
            _, obj = await _raw(self._admission.read_mutating_webhook_configuration(self.mwc_name, _preload_content=False))
        except ApiFailure as e:
            if e.status == 404:
                return True
            log.warning("cannot read MutatingWebhookConfiguration %s: %s", self.mwc_name, e)
            return False
        return all(ca in _bundle_certs((hook.get("clientConfig") or {}).get("caBundle"))
                   for hook in obj.get("webhooks") or [])

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except ApiFailure as e:  # keep serving what we have; the API may be back next time
                log.warning("cannot refresh Secret %s/%s: %s", self.namespace, self.secret_name, e)
            except Exception as e:  # noqa: BLE001 - the watcher must survive; never log the traceback's locals
                log.warning("cannot refresh Secret %s/%s: %s", self.namespace, self.secret_name, type(e).__name__)


async def ensure_ca_bundle(api_client: client.ApiClient, mwc_name: str, bundle_pem: bytes) -> bool:
    """Make every webhook of the MutatingWebhookConfiguration trust `bundle_pem`. True if it patched."""
    if not bundle_pem.strip():
        raise ValueError("refusing to inject an empty caBundle (the API server would fall back to system roots)")
    want = _b64(bundle_pem)

    def changes(i: int, hook: dict[str, Any]) -> list[dict[str, Any]]:
        if (hook.get("clientConfig") or {}).get("caBundle") == want:
            return []
        return [{"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": want}]

    patched = await patch_webhooks(api_client, mwc_name, changes, "caBundle")
    if patched:
        log.info("caBundle of MutatingWebhookConfiguration %s set for %d webhook(s) (%d CA certificate(s))",
                 mwc_name, patched, bundle_pem.count(b"-----BEGIN CERTIFICATE-----"))
    return patched > 0


async def patch_webhooks(api_client: client.ApiClient, mwc_name: str,
                         changes: Callable[[int, dict[str, Any]], list[dict[str, Any]]], what: str) -> int:
    """Apply `changes(index, webhook)` (JSON Patch operations) to the configuration's webhooks; how
    many webhooks changed. The patch first tests the resourceVersion it was computed from, so a
    concurrent writer (helm upgrade, another leader's last act) is never overwritten blindly; a
    failed test (422) or conflict (409) re-reads and recomputes."""
    api = client.AdmissionregistrationV1Api(api_client)
    for _ in range(10):
        _, obj = await _raw(api.read_mutating_webhook_configuration(mwc_name, _preload_content=False))
        rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        per_hook = [changes(i, hook) for i, hook in enumerate(obj.get("webhooks") or [])]
        ops = [op for hook_ops in per_hook for op in hook_ops]
        if not ops:
            return 0
        try:
            await _raw(api.patch_mutating_webhook_configuration(
                mwc_name, [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, *ops],
                _content_type="application/json-patch+json", _preload_content=False))
        except ApiFailure as e:
            if e.status in (409, 422):
                continue
            raise
        return sum(1 for hook_ops in per_hook if hook_ops)
    raise RuntimeError(f"MutatingWebhookConfiguration {mwc_name}: {what} patch kept conflicting")


async def keep_ca_bundle(api_client: client.ApiClient, mwc_name: str, source: CertSource,
                         interval: float = 30.0) -> None:
    """The leader's loop: `ensure_ca_bundle` with the source's bundle every `interval` seconds
    until cancelled. Failures are logged and retried; a source without a bundle (files mode
    without a CA file: cert-manager's injector owns caBundle) is left alone."""
    while True:
        bundle = source.ca_bundle_pem
        if bundle:
            try:
                await ensure_ca_bundle(api_client, mwc_name, bundle)
            except ApiFailure as e:
                log.warning("cannot update caBundle of MutatingWebhookConfiguration %s: %s", mwc_name, e)
            except (RuntimeError, OSError, asyncio.TimeoutError, aiohttp.ClientError) as e:
                log.warning("cannot update caBundle of MutatingWebhookConfiguration %s: %s", mwc_name,
                            type(e).__name__)
        await asyncio.sleep(interval)
