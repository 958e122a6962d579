"""Check that the admission webhook answers the way the API server will call it: over TLS,
verified with the caBundle of its MutatingWebhookConfiguration, for the name the API server
verifies. The chart's `helm test` runs it.

It reads the configuration, takes the webhook's clientConfig (a Service, its port and path, or a
URL) and caBundle, and POSTs a harmless AdmissionReview: a dry-run UPDATE of a Longhorn Node's
status that records no disk UUID, which the webhook allows unchanged without deciding anything or
writing anything. kube-apiserver calls a Service-backed webhook at https://<service>.<namespace>.svc
and verifies the certificate against caBundle for that name, over HTTP/1.1 (k8s.io/apiserver
pkg/util/webhook/client.go, ClientManager.HookClient); without a caBundle it uses its system trust
roots (Kubernetes API reference, WebhookClientConfig). This check does the same.

Exit codes: 0 the webhook answered over verified TLS and allowed the review unchanged; 1 it did
not (no caBundle, one the certificate does not verify against, a certificate for another name,
nothing listening, a timeout, an HTTP error, an answer that is not the AdmissionReview response
to this review, or a denial or patch of a review that changes nothing); 2 the check could not
run (bad usage, no cluster configuration, the configuration or its webhook not readable).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from jobs import signals
from jobs.args import seconds
from webhook import scope

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
PROG = "bimguard check-webhook"
CHECK_NODE = "bimguard-check-webhook"  # the Node the harmless review names (it need not exist)

EPILOG = """\
exit codes:
  0  the webhook answered over TLS verified with the configuration's caBundle, allowing the review unchanged
  1  it did not: the line on standard error says what the API server would have met
  2  the check could not run (usage, cluster configuration, the configuration unreadable)

examples:
  bimguard check-webhook --webhook-configuration bimguard-bimguard-system
  # from a workstation, through a port-forward (the certificate is still verified for the Service's name):
  kubectl -n bimguard-system port-forward svc/bimguard 9443:443 &
  bimguard check-webhook --webhook-configuration bimguard-bimguard-system --address 127.0.0.1:9443
"""


class CheckError(Exception):
    """The check could not run (exit 2)."""


class Failed(Exception):
    """The webhook did not answer as the API server needs (exit 1)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--webhook-configuration", default="bimguard", metavar="NAME",
                   help="the MutatingWebhookConfiguration (default %(default)s; the chart's is <fullname>-<namespace>)")
    p.add_argument("--webhook", default=scope.WEBHOOK_NAME, metavar="NAME",
                   help="the webhook within it (default %(default)s)")
    p.add_argument("--address", type=address, metavar="HOST:PORT",
                   help="connect here instead of the Service's (or URL's) address; the certificate is still verified "
                        "for the name the API server verifies (e.g. through kubectl port-forward)")
    p.add_argument("--timeout", type=seconds, metavar="DURATION",
                   help="how long the answer may take (default: the webhook's timeoutSeconds, else 10s)")
    p.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig (default: in-cluster, $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        print(signals.run(check(args)), file=out)
        return EXIT_OK
    except Failed as exc:
        print(f"{PROG}: {exc}", file=err)
        return EXIT_FAILED
    except CheckError as exc:
        print(f"{PROG}: {exc}", file=err)
        return EXIT_ERROR


@dataclass(frozen=True)
class Target:
    """Where and how the API server calls the webhook."""

    url: str  # as the API server shows it
    host: str  # the name the certificate must carry
    port: int
    path: str
    ca_bundle: bytes  # PEM; empty: the system trust roots
    timeout: float


def target(mwc: dict[str, Any], webhook: str, timeout: float | None) -> Target:
    name = (mwc.get("metadata") or {}).get("name", "")
    hooks = [h for h in mwc.get("webhooks") or [] if h.get("name") == webhook]
    if not hooks:
        raise CheckError(f"mutatingwebhookconfiguration {name} has no webhook {webhook} (--webhook)")
    hook = hooks[0]
    cc = hook.get("clientConfig") or {}
    try:
        bundle = base64.b64decode(cc.get("caBundle") or "", validate=True)
    except (binascii.Error, ValueError):
        raise Failed(f"mutatingwebhookconfiguration {name}: caBundle is not base64") from None
    wait = timeout or float(hook.get("timeoutSeconds") or 10)
    if cc.get("service"):
        svc = cc["service"]
        host, port, path = f"{svc['name']}.{svc['namespace']}.svc", int(svc.get("port") or 443), svc.get("path") or "/"
    elif cc.get("url"):
        parts = urlsplit(cc["url"])
        host, port, path = parts.hostname or "", parts.port or 443, parts.path or "/"
    else:
        raise Failed(f"mutatingwebhookconfiguration {name}: webhook {webhook} has neither service nor url")
    return Target(f"https://{host}:{port}{path}", host, port, path, bundle, wait)


def review(uid: str, namespace: str) -> dict[str, Any]:
    """A Longhorn Node status UPDATE that records nothing: the webhook allows it unchanged."""
    s = scope.LONGHORN_NODE_STATUS
    node = {"apiVersion": f"{s.group}/{s.version}", "kind": "Node",
            "metadata": {"name": CHECK_NODE, "namespace": namespace}, "spec": {"disks": {}}, "status": {"diskStatus": {}}}
    gvk = {"group": s.group, "version": s.version, "kind": "Node"}
    gvr = {"group": s.group, "version": s.version, "resource": s.resource}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": gvk, "resource": gvr, "subResource": s.subresource,
        "requestKind": gvk, "requestResource": gvr, "requestSubResource": s.subresource,
        "name": CHECK_NODE, "namespace": namespace, "operation": s.operations[0],
        "userInfo": {"username": PROG.replace(" ", "-")}, "object": node, "oldObject": node, "dryRun": True,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions", "dryRun": ["All"]}}}


def tls_context(bundle: bytes, configuration: str) -> ssl.SSLContext:
    """What kube-apiserver trusts: caBundle, or without one the system roots; HTTP/1.1."""
    try:
        ctx = ssl.create_default_context(cadata=bundle.decode()) if bundle else ssl.create_default_context()
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise Failed(f"mutatingwebhookconfiguration {configuration}: caBundle holds no usable PEM certificate: "
                     f"{_one_line(exc)}") from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def verdict(answer: Any, uid: str) -> str:
    """What is wrong with the webhook's answer to the harmless review, or "" if nothing."""
    if not isinstance(answer, dict) or answer.get("kind") != "AdmissionReview" \
            or answer.get("apiVersion") != "admission.k8s.io/v1":
        return "the answer is not an admission.k8s.io/v1 AdmissionReview"
    response = answer.get("response")
    if not isinstance(response, dict) or response.get("uid") != uid:
        return "the answer's response.uid is not the review's"
    if response.get("allowed") is not True:
        message = ((response.get("status") or {}).get("message") or "").strip()
        return f"it denied a review that changes nothing{': ' + message if message else ''}"
    if response.get("patch") or response.get("patchType"):
        return "it patched a review that changes nothing"
    return ""


async def check(args: argparse.Namespace) -> str:
    import aiohttp
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.rest import ApiException

    from bimguard import kube

    try:
        api = await kube.api_client(args.kubeconfig, args.context)
    except Exception as exc:  # noqa: BLE001 - the loader raises anything on a broken file
        raise CheckError(_one_line(exc)) from None
    try:
        mwc = api.sanitize_for_serialization(await client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
            args.webhook_configuration, _request_timeout=30))
    except ApiException as exc:
        e = kube.translate(exc)
        raise CheckError(f"cannot read mutatingwebhookconfiguration {args.webhook_configuration}: {e.status} "
                         f"{e.reason}: {_one_line(e.message)}") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CheckError(f"cannot reach the API server: {_one_line(exc)}") from None
    finally:
        await api.close()

    t = target(mwc, args.webhook, args.timeout)
    ctx = tls_context(t.ca_bundle, args.webhook_configuration)
    dial_host, dial_port = args.address or (t.host, t.port)
    namespace = (((mwc.get("webhooks") or [{}])[0].get("namespaceSelector") or {}).get("matchLabels") or {}).get(
        "kubernetes.io/metadata.name", "")
    uid = str(uuid.uuid4())
    whose = f"the caBundle of mutatingwebhookconfiguration {args.webhook_configuration}" if t.ca_bundle \
        else f"the system trust roots (mutatingwebhookconfiguration {args.webhook_configuration} has no caBundle)"
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=t.timeout)) as session:
            async with session.post(
                    f"https://{_bracketed(dial_host)}:{dial_port}{t.path}?timeout={int(t.timeout)}s",
                    data=json.dumps(review(uid, namespace)), ssl=ctx, server_hostname=t.host,
                    headers={"Content-Type": "application/json", "Accept": "application/json",
                             "Host": f"{t.host}:{t.port}"}) as r:
                body = await r.read()
                status = r.status
    except aiohttp.ClientConnectorCertificateError as exc:
        raise Failed(f"{t.url}: the certificate does not verify against {whose}: "
                     f"{_one_line(exc.certificate_error)}") from None
    except aiohttp.ClientSSLError as exc:
        raise Failed(f"{t.url}: TLS failed: {_one_line(exc)}") from None
    except aiohttp.ClientConnectorError as exc:
        raise Failed(f"{t.url}: cannot connect to {dial_host}:{dial_port}: {_one_line(exc.os_error)}") from None
    except TimeoutError:
        raise Failed(f"{t.url}: no answer within {t.timeout:g}s (the API server gives up then)") from None
    except aiohttp.ClientError as exc:
        raise Failed(f"{t.url}: {_one_line(exc)}") from None
    took = (time.monotonic() - started) * 1000
    if status != 200:
        raise Failed(f"{t.url}: HTTP {status}: {_one_line(body.decode('utf-8', 'replace')) or 'no body'}")
    try:
        answer = json.loads(body)
    except ValueError:
        raise Failed(f"{t.url}: the answer is not JSON") from None
    wrong = verdict(answer, uid)
    if wrong:
        raise Failed(f"{t.url}: {wrong}")
    return (f"webhook {args.webhook} answered at {t.url} over TLS verified with {whose}: allowed a harmless review "
            f"unchanged in {took:.0f} ms")


def address(text: str) -> tuple[str, int]:
    """HOST:PORT ([v6]:PORT), for --address."""
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _one_line(value: Any) -> str:
    lines = str(value).strip().splitlines()
    return lines[0].strip() if lines else type(value).__name__
