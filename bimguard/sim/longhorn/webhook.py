"""Longhorn's validating admission webhook in the emulator: ``validator.py``'s rules over HTTPS.

longhorn-manager serves ``/v1/webhook/validation`` on port 9502 behind the Service
``longhorn-admission-webhook`` and registers the ValidatingWebhookConfiguration
``longhorn-webhook-validator`` with its own CA (lm v1.7.2 webhook/server/server.go:102-136; the
rules and their sources are in ``validator.py``). The emulator does the same: one server per simulated
cluster (real Longhorn runs one per manager pod behind the Service; they answer alike), a CA and
serving certificate for ``longhorn-admission-webhook.<ns>.svc``, the Service mapped to the
server's loopback port in the API server's ``webhook_hosts``. The emulated API server calls it
exactly as it calls any webhook, so kubectl and the product see Longhorn's refusals with
Longhorn's status codes and messages.

Reads go through the managers' shared informer cache, like the real validator's listers.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import ssl
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bimguard.sim.longhorn import NAMESPACE, Release
from bimguard.sim.longhorn import validator as rules
from bimguard.sim.longhorn.informer import Caches

log = logging.getLogger("bimguard.sim.longhorn.webhook")


def _pki(dns_name: str) -> tuple[str, ssl.SSLContext]:
    """A CA (PEM, base64 for caBundle) and a server context presenting a certificate for dns_name."""
    import base64

    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "longhorn-webhook-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
          .not_valid_after(now + _dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        ctx.load_cert_chain(cert_file, key_file)
    return base64.b64encode(ca.public_bytes(serialization.Encoding.PEM)).decode(), ctx


class LonghornWebhook:
    """Serves validator.py's rules; ``register(api)`` wires the Service and the configuration."""

    def __init__(self, cache: Caches, release: Release, namespace: str = NAMESPACE) -> None:
        self.cache = cache
        self.release = release
        self.namespace = namespace
        self.denials: list[tuple[str, str, str]] = []  # (resource, name, message): for tests and humans
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.ca_bundle = ""

    @property
    def dns_name(self) -> str:
        return f"{rules.SERVICE}.{self.namespace}.svc"

    async def start(self) -> None:
        self.ca_bundle, ctx = _pki(self.dns_name)
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post(rules.PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def register(self, api: Any) -> None:
        """Map the Service to this server and store the configuration (in-process, on the API
        server's loop), as longhorn-manager applies it at start-up."""
        api.webhook_hosts[f"{self.dns_name}:{rules.PORT}"] = ("127.0.0.1", self.port)
        body = rules.configuration(self.ca_bundle, self.namespace)
        key = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
        try:
            current = api.store.get(key, None, rules.CONFIGURATION)
        except Exception:
            api.store.create(key, body)
            return
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        api.store.update(key, body)

    async def _handle(self, request: web.Request) -> web.Response:
        review = json.loads(await request.read())
        req = review.get("request") or {}
        try:
            err = await self._admit(req)
        except Exception as exc:  # lm webhook/admission/admission.go:97-103: any other error is a 500
            log.exception("longhorn validator failed")
            err = rules.AdmitError(500, "InternalError", str(exc))
        response: dict[str, Any] = {"uid": req.get("uid", ""), "allowed": err is None}
        if err is not None:
            response["status"] = err.result()
            self.denials.append((str((req.get("resource") or {}).get("resource")), str(req.get("name")), err.message))
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})

    async def _admit(self, req: dict[str, Any]) -> rules.AdmitError | None:
        resource = (req.get("resource") or {}).get("resource")
        op = req.get("operation")
        obj, old = req.get("object") or {}, req.get("oldObject") or {}
        if resource == "nodes":
            if op == "CREATE":
                return rules.validate_node_create(obj)
            if op == "UPDATE":
                return rules.validate_node_update(old, obj, self.release)
        elif resource == "replicas":
            if op == "UPDATE":
                return rules.validate_replica_update(old, obj)
            if op == "DELETE":
                volume_name = (old.get("spec") or {}).get("volumeName") or ""
                volume = self.cache.peek("volumes", volume_name) if volume_name else None
                siblings = await self.cache.list("replicas", f"longhornvolume={volume_name}") if volume_name else []
                return rules.validate_replica_delete(old, volume, siblings)
        return None
