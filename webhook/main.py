"""`bimguard webhook` (also `python -m webhook`): the admission webhook process.

Wires the parts together: Kubernetes client, list+watch index, certificates, the admission
handler and its HTTPS server, metrics, and -- while this replica leads -- the caBundle
injection and the rewrite controller.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from kubernetes_asyncio import client, config

from bimguard import kube
from bimguard.rewrite.pod import DEFAULT_SERVICE_ACCOUNT
from jobs.args import add_rewriter_pod_arguments

log = logging.getLogger("bimguard.webhook")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields (uid, node, record) become keys."""

    _SKIP = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in self._SKIP})
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig (default: in-cluster configuration)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "bimguard"),
                   help="bimguard's namespace: records, claims, certificate Secret, Lease (default $POD_NAMESPACE "
                        "or %(default)s)")
    p.add_argument("--longhorn-namespace", default="longhorn-system", help="Longhorn's namespace (default %(default)s)")
    p.add_argument("--host", default="0.0.0.0", help="address to serve on (default %(default)s)")
    p.add_argument("--port", type=int, default=9443, help="HTTPS port for admission reviews (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=9090, help="port for /metrics (default %(default)s)")
    p.add_argument("--metrics-tls", action="store_true",
                   help="serve /metrics over HTTPS with the webhook's serving certificate (default: plain HTTP)")
    p.add_argument("--metrics-authorization", action="store_true",
                   help="serve /metrics only for a bearer token the API server authenticates (TokenReview) and "
                        "authorizes to get the non-resource URL /metrics (SubjectAccessReview)")
    p.add_argument("--tls-cert-file", metavar="PATH", help="serve this certificate (files mode, e.g. cert-manager); "
                                                           "default: self-managed CA and certificate in a Secret")
    p.add_argument("--tls-key-file", metavar="PATH", help="the key of --tls-cert-file")
    p.add_argument("--tls-ca-file", metavar="PATH", help="CA of --tls-cert-file, injected into caBundle if given")
    p.add_argument("--service-name", default="bimguard-webhook", help="the webhook Service (certificate SANs)")
    p.add_argument("--secret-name", default="bimguard-webhook-tls", help="Secret of the self-managed certificates")
    p.add_argument("--webhook-configuration", default="bimguard",
                   help="MutatingWebhookConfiguration whose caBundle the leader keeps current (default %(default)s)")
    p.add_argument("--rewriter-image", default=os.environ.get("BIMGUARD_IMAGE", "bimguard"),
                   help="image of the on-node rewriter pods: this same image (default $BIMGUARD_IMAGE or %(default)s)")
    p.add_argument("--rewriter-service-account", default=DEFAULT_SERVICE_ACCOUNT,
                   help="service account of the on-node rewriter pods, in --rewriter-namespace (default %(default)s)")
    add_rewriter_pod_arguments(p)
    p.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="this replica's name in leader election (default $POD_NAME or the host name)")
    p.add_argument("--lease-name", default="bimguard-controller",
                   help="coordination Lease the replicas elect a leader with (default %(default)s)")
    p.add_argument("--no-controller", action="store_true",
                   help="only answer admission reviews; never drive records or inject the caBundle")
    p.add_argument("--shutdown-delay", type=float, default=5.0,
                   help="seconds to keep serving after SIGTERM while not ready (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    api_client = await kube.api_client(args.kubeconfig, args.context)
    try:
        await _serve(args, stop, api_client)
    finally:
        await api_client.close()


class StartupError(Exception):
    """The webhook cannot start as configured: one line for the operator."""


async def _serve(args: argparse.Namespace, stop: asyncio.Event, api_client: client.ApiClient) -> None:
    from webhook.admission import Admission
    from webhook.certs import ApiFailure
    from webhook.detection import CollisionWatch
    from webhook.index import ClusterIndex, Informers
    from webhook.metrics import Metrics
    from webhook.records_api import RecordsApi
    from webhook.server import WebhookServer

    metrics = Metrics()
    index = ClusterIndex()
    informers = Informers(api_client, index, longhorn_namespace=args.longhorn_namespace, namespace=args.namespace)
    certs = await _cert_source(args, api_client)

    def not_ready() -> str | None:
        if informers.missing:
            return "; ".join(sorted(informers.missing.values())) + " (are bimguard's CRDs installed?)"
        if not informers.ready:
            return "index not synced: " + ", ".join(p for p, ok in informers.synced.items() if not ok)
        return None

    for plural, ok in informers.synced.items():
        metrics.synced.labels(plural).set(1 if ok else 0)
    # Every review is checked against the stored Node before any durable effect (webhook/admission.py).
    admission = Admission(index, RecordsApi(api_client, args.namespace, args.longhorn_namespace), metrics,
                          ready=not_ready, verify_reviews=True)
    access = None
    if args.metrics_authorization:
        from webhook.scrape_access import ScrapeAccess

        access = ScrapeAccess(api_client)
    server = WebhookServer(admission, certs, metrics, not_ready=not_ready, host=args.host, port=args.port,
                           metrics_port=args.metrics_port, shutdown_delay=args.shutdown_delay,
                           metrics_tls=args.metrics_tls, metrics_access=access)
    try:
        await certs.start()
    except ApiFailure as err:
        hint = f" (does namespace {args.namespace} exist? --namespace)" if err.status == 404 else ""
        raise StartupError(f"cannot read or create the TLS Secret {args.namespace}/{args.secret_name}: "
                           f"{err}{hint}") from None
    informers.start()
    await server.start()
    log.info("serving admission reviews on :%d, metrics on :%d (%s%s)", server.bound_port, server.bound_metrics_port,
             "https" if args.metrics_tls else "http", ", bearer token required" if access else "")
    leadership = None if args.no_controller else _Leadership(api_client, args, certs, metrics, index)
    # Existing collision groups from the index: the gauge on every replica, Events from the leader.
    watch = CollisionWatch(index, metrics, kube.Kube(api_client) if leadership else None, args.longhorn_namespace,
                           ready=not_ready, leading=leadership.is_leader if leadership else (lambda: False))
    if leadership:
        leadership.on_started.append(watch.poke)
        leadership.start()
    watch.start()
    frozen = False
    try:
        while not stop.is_set():
            if informers.ready and not frozen:
                # The synced index is ~150 k long-lived objects for 1,000 nodes; moving them out of
                # the collector's reach cuts full-collection pauses from ~70 ms to ~3 ms (bench/).
                gc.collect()
                gc.freeze()
                frozen = True
            for plural, ok in informers.synced.items():
                metrics.synced.labels(plural).set(1 if ok else 0)
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        log.info("shutting down: not ready now, serving %.1f s more", args.shutdown_delay)
        await watch.stop()
        if leadership:
            await leadership.stop()  # hands the lease over at once
        await server.stop()
        await informers.stop()
        await certs.stop()


class _Leadership:
    """What only the elected replica does: drive DiskRewrite records, keep the caBundle current,
    add matchConditions once the server has them (webhook/registration.py)."""

    def __init__(self, api_client: client.ApiClient, args: argparse.Namespace, certs: Any, metrics: Any,
                 index: Any) -> None:
        from webhook.certs import keep_ca_bundle
        from webhook.controller import RewriteController
        from webhook.leader import LeaderElector
        from webhook.registration import keep_match_conditions

        self._loops = {"bimguard-ca-bundle": lambda: keep_ca_bundle(api_client, args.webhook_configuration, certs),
                       "bimguard-match-conditions": lambda: keep_match_conditions(api_client,
                                                                                  args.webhook_configuration)}
        self._tasks: list[asyncio.Task[None]] = []
        self.on_started: list[Any] = []  # callables run when this replica starts leading
        self.elector = LeaderElector(api_client, args.namespace, args.lease_name, args.identity,
                                     on_started_leading=self._started, on_stopped_leading=self._stopped)

        self._metrics = metrics

        def gauge(counts: dict[str, int]) -> None:
            # A Blocked record counts as unfinished while its disk still records the blocked UUID.
            metrics.set_rewrites(counts, self.controller.unfinished(lambda node, disk, uuid:
                                                                    index.disk(node, disk, uuid) is not None))

        self.controller = RewriteController(api_client, args.namespace, args.longhorn_namespace, args.rewriter_image,
                                            settings=rewriter_settings(args), leader=self.elector, on_pass=gauge)

    def is_leader(self) -> bool:
        return self.elector.is_leader

    def _started(self) -> None:
        log.info("leading: driving rewrite records, the caBundle and matchConditions")
        self.controller.wake()
        for hook in self.on_started:
            hook()
        if all(t.done() for t in self._tasks):
            self._tasks = [asyncio.create_task(loop(), name=name) for name, loop in self._loops.items()]

    def _stopped(self) -> None:
        log.info("no longer leading")
        self._metrics.clear_rewrites()  # the new leader exports them; a stale copy here would linger
        for t in self._tasks:
            t.cancel()

    def start(self) -> None:
        self.elector.start()
        self.controller.start()

    async def stop(self) -> None:
        await self.controller.stop()
        await self.elector.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def rewriter_settings(args: argparse.Namespace) -> Any:
    """The rewrite engine's settings from the --rewriter-* flags (the timings keep their defaults)."""
    from bimguard.rewrite.engine import Settings

    return Settings(service_account=args.rewriter_service_account, priority_class_name=args.rewriter_priority_class,
                    pod_namespace=args.rewriter_namespace or args.namespace,
                    image_pull_secrets=tuple(args.rewriter_image_pull_secret), tolerations=args.rewriter_tolerations)


async def _cert_source(args: argparse.Namespace, api_client: client.ApiClient) -> Any:
    if args.tls_cert_file or args.tls_key_file:
        if not (args.tls_cert_file and args.tls_key_file):
            raise SystemExit("bimguard webhook: --tls-cert-file and --tls-key-file go together")
        from webhook.tls import FileCerts

        return FileCerts(args.tls_cert_file, args.tls_key_file, ca_file=args.tls_ca_file)
    from webhook.certs import SelfManagedCerts

    return SelfManagedCerts(api_client, args.namespace, args.secret_name, args.service_name,
                            mwc_name=args.webhook_configuration)


def run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("bimguard")
    root.handlers[:] = [handler]
    root.setLevel(args.log_level.upper())
    root.propagate = False

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args, stop)

    try:
        asyncio.run(main())
    except (config.ConfigException, OSError, StartupError) as err:
        print(f"bimguard webhook: {err}", file=sys.stderr)
        return 2
    return 0
