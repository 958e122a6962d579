"""The webhook process sends only the requests webhook/permissions.py lists (which the chart grants,
tests/chart/test_chart.py), and its /metrics answers only whom the API server authorizes.

`bimguard webhook` runs in-process (`webhook.main.serve`, the process's own wiring) against the
emulator with a simulated Longhorn and kubelet, authenticated as its ServiceAccount, with
self-managed certificates, its pods in a rewriter namespace, and `--metrics-tls
--metrics-authorization`. It injects its caBundle, answers a colliding disk's first record with a
new UUID, and its controller drives the rewrite to Done through a rewriter pod; scrapers with and
without a good token read /metrics. Every request of the webhook's user is then checked against
the list: one it does not name fails the test -- what keeps the chart's grants the code's calls.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
import yaml

from bimguard.sim import authz
from bimguard.sim.apiserver import CRD_KEY, ApiServer
from bimguard.sim.longhorn.cluster import SimCluster
from jobs.cli import build_parser
from webhook import main as webhook_main
from webhook import permissions
from webhook.registration import mutating_webhook_configuration

REPO = Path(__file__).resolve().parents[2]
NS, REWRITER_NS, LH = "bimguard", "bimguard-rewriter", "longhorn-system"
SA = f"system:serviceaccount:{NS}:bimguard"
MWC, SERVICE, SECRET, LEASE = "bimguard", "bimguard-webhook", "bimguard-webhook-tls", "bimguard-controller"
RW = "bimguard.io/v1alpha1/diskrewrites"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    api: ApiServer
    cluster: SimCluster
    args: argparse.Namespace
    calls: set[tuple[str, str, str, str, str]] = field(default_factory=set)
    nonresource: set[str] = field(default_factory=set)


@contextlib.asynccontextmanager
async def webhook_process(tmp_path: Path) -> AsyncIterator[Running]:
    api = ApiServer(namespace_seed=("default", LH, NS, REWRITER_NS))
    await api.start()
    cluster = SimCluster(api, tmp_path / "hosts", nodes=2, disks_per_node=1, seed=3, time_scale=0.01)
    stop = asyncio.Event()
    task = None
    try:
        await cluster.start()
        await cluster.wait_until_ready(30)
        await cluster.start_kubelet(images=["bimguard"])
        for path in sorted((REPO / "charts/bimguard/crds").glob("*.yaml")):
            api.store.create(CRD_KEY, yaml.safe_load(path.read_text()))
        port, metrics_port = free_port(), free_port()
        api.webhook_hosts[f"{SERVICE}.{NS}.svc"] = ("127.0.0.1", port)
        api.store.create("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                         mutating_webhook_configuration(name=MWC, service=SERVICE, namespace=NS, longhorn_namespace=LH))
        api.add_user("webhook-token", SA)
        kubeconfig = tmp_path / "webhook.kubeconfig"
        api.kubeconfig(kubeconfig, token="webhook-token")
        args = build_parser().parse_args([
            "webhook", "--kubeconfig", str(kubeconfig), "--namespace", NS, "--longhorn-namespace", LH,
            "--host", "127.0.0.1", f"--port={port}", f"--metrics-port={metrics_port}", "--service-name", SERVICE,
            "--secret-name", SECRET, "--webhook-configuration", MWC, "--lease-name", LEASE, "--identity", "w-0",
            "--rewriter-image", "bimguard:test", "--rewriter-namespace", REWRITER_NS, "--shutdown-delay=0",
            "--metrics-tls", "--metrics-authorization"])
        running = Running(api, cluster, args)

        def note(method: str, path_qs: str, status: int, user: str) -> None:
            if user == SA:
                url = urlsplit(path_qs)
                a = authz.request_attributes(method, url.path, dict(parse_qsl(url.query)), {"username": user})
                if not a.resource_request:
                    # /version (the leader's matchConditions check), discovery: Kubernetes' default
                    # ClusterRoles system:public-info-viewer and system:discovery let every
                    # authenticated user read them; no grant of the chart's is involved.
                    path = url.path.rstrip("/")  # the client asks for /version/; both are granted
                    assert path in ("/version", "/api", "/apis") or path.startswith(("/api/", "/apis/")), path
                    running.nonresource.add(path)
                    return
                resource = a.resource + (f"/{a.subresource}" if a.subresource else "")
                where = {LH: "lh", NS: "own", REWRITER_NS: "pods", "": "cluster"}.get(a.namespace, a.namespace)
                running.calls.add((a.verb, a.group, resource, where, a.name))

        api.request_listeners.append(note)
        task = asyncio.create_task(webhook_main.serve(args, stop))
        yield running
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 60)
        await cluster.stop()
        await api.stop()


def listed(call: tuple[str, str, str, str, str], allowed: tuple[permissions.Permission, ...]) -> bool:
    names = {permissions.LEASE: LEASE, permissions.TLS_SECRET: SECRET, permissions.WEBHOOK_CONFIGURATION: MWC}
    # A request for one object is allowed by a rule for any object; a rule naming an object allows only it.
    return any(p[:4] == call[:4] and (p[4] == "" or names.get(p[4]) == call[4]) for p in allowed)


async def scrape(port: int, ca: bytes, token: str | None) -> int:
    ctx = ssl.create_default_context(cadata=ca.decode())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://127.0.0.1:{port}/metrics", ssl=ctx, server_hostname=f"{SERVICE}.{NS}.svc",
                         headers=headers) as resp:
            await resp.read()
            return resp.status


async def test_the_webhook_calls_only_what_it_is_granted(tmp_path: Path) -> None:
    async with webhook_process(tmp_path) as w:
        api, cluster = w.api, w.cluster

        def ca_bundle() -> str:
            hook = api.store.get("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", "", MWC)["webhooks"][0]
            return hook["clientConfig"].get("caBundle", "")

        await cluster.wait_for(ca_bundle, 30, "the leader to inject the caBundle")
        # A disk whose UUID shares worker-1's prefix, first recorded on worker-2.
        taken = await cluster.disk_uuid("worker-1", cluster.disks_of("worker-1")[0])
        await cluster.add_disk("worker-2", "extra", force_uuid=taken[:4])

        def done() -> list[dict]:
            return [r for r in api.store.list(RW, NS)[0] if (r.get("status") or {}).get("phase") == "Done"]

        (record,) = await cluster.wait_for(done, 60, "the rewrite to be Done")
        assert record["spec"]["newUUID"][:4] != taken[:4]
        assert cluster.read_cfg("worker-2", "extra").disk_uuid == record["spec"]["newUUID"]

        # /metrics: HTTPS with the serving certificate; a bearer token the API server authorizes.
        ca = base64.b64decode(ca_bundle())
        api.add_user("prometheus-token", "system:serviceaccount:monitoring:prometheus")
        api.add_user("nosy-token", "system:serviceaccount:default:nosy")
        api.deny("get", "/metrics", user="system:serviceaccount:default:nosy")
        port = w.args.metrics_port
        assert await scrape(port, ca, "prometheus-token") == 200
        assert await scrape(port, ca, None) == 401
        assert await scrape(port, ca, "not-a-token") == 401
        assert await scrape(port, ca, "nosy-token") == 403
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served there
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    await resp.read()

    allowed = permissions.permissions(self_managed_tls=True, injects_ca_bundle=True, metrics_authorization=True)
    unlisted = sorted(c for c in w.calls if not listed(c, allowed))
    assert unlisted == [], f"requests webhook/permissions.py does not list (so the chart does not grant): {unlisted}"
    assert "/version" in w.nonresource  # the leader's matchConditions check ran
    # The run exercised what matters: the rewriter pod in its namespace, the caBundle, the Secret,
    # the Lease, the reviews of a scraper's token.
    for needed in (("create", "", "pods", "pods", ""), ("patch", "admissionregistration.k8s.io",
                   "mutatingwebhookconfigurations", "cluster", MWC), ("create", "", "secrets", "own", ""),
                   ("update", "coordination.k8s.io", "leases", "own", LEASE),
                   ("create", "authentication.k8s.io", "tokenreviews", "cluster", ""),
                   ("create", "bimguard.io", "prefixclaims", "own", ""), ("update", "bimguard.io", "diskrewrites/status", "own", "")):
        assert any(c[:4] == needed[:4] and needed[4] in ("", c[4]) for c in w.calls), needed
