"""Running webhook replicas against the cluster emulator, as in a cluster.

Each replica is the real process's parts (index fed by list+watch, self-managed certificates in
the emulator, the admission handler, the HTTPS server) talking to the emulated API server over
HTTP through kubernetes_asyncio. The MutatingWebhookConfiguration is the one the Helm chart
renders, pointed at the first replica through the emulator's service map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client

from bimguard.kube import api_client as api_client_from
from bimguard.sim.apiserver import ApiServer
from webhook.admission import Admission
from webhook.certs import SelfManagedCerts
from webhook.index import ClusterIndex, Informers
from webhook.metrics import Metrics
from webhook.records_api import RecordsApi
from webhook.server import WebhookServer
from webhook import scope
from webhook.registration import mutating_webhook_configuration

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "bimguard"
SERVICE = "bimguard-webhook"
LONGHORN_NS = "longhorn-system"


async def prepare(kubeconfig: Path) -> None:
    """What `helm install` does before the pods start: the namespace and bimguard's CRDs."""
    api_client = await api_client_from(str(kubeconfig))
    try:
        await ensure_namespace(api_client)
        await install_crds(api_client)
    finally:
        await api_client.close()


async def install_crds(api_client: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    for path in sorted((REPO / "charts/bimguard/crds").glob("*.yaml")):
        await ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))


async def ensure_namespace(api_client: client.ApiClient, name: str = NAMESPACE) -> None:
    core = client.CoreV1Api(api_client)
    try:
        await core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except client.ApiException as err:
        if err.status != 409:
            raise


def webhook_configuration(ca_bundle: bytes, *, failure_policy: str = scope.FAILURE_POLICY) -> dict[str, Any]:
    return mutating_webhook_configuration(name="bimguard", service=SERVICE, namespace=NAMESPACE,
                                          longhorn_namespace=LONGHORN_NS, ca_bundle=ca_bundle,
                                          failure_policy=failure_policy)


@dataclass
class Replica:
    api_client: client.ApiClient
    index: ClusterIndex
    informers: Informers
    certs: SelfManagedCerts
    admission: Admission
    server: WebhookServer
    metrics: Metrics

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.bound_port}{scope.LONGHORN_NODE_STATUS.path}"

    async def stop(self) -> None:
        self.server.shutdown_delay = 0
        await self.server.stop()
        await self.informers.stop()
        await self.certs.stop()
        await self.api_client.close()


async def start_replica(kubeconfig: Path, *, deadline: float = 2.0, wait_ready: bool = True,
                        verify_reviews: bool = True) -> Replica:
    """`verify_reviews` as in the webhook process; tests that post hand-made reviews about Nodes the
    API server does not store turn it off (tests/webhook/test_forged_reviews.py tests the check)."""
    import asyncio

    api_client = await api_client_from(str(kubeconfig))
    metrics, index = Metrics(), ClusterIndex()
    informers = Informers(api_client, index, longhorn_namespace=LONGHORN_NS, namespace=NAMESPACE, watch_timeout=30)
    certs = SelfManagedCerts(api_client, NAMESPACE, f"{SERVICE}-tls", SERVICE)

    def not_ready() -> str | None:
        if informers.missing:
            return "; ".join(sorted(informers.missing.values()))
        return None if informers.ready else "index not synced"

    admission = Admission(index, RecordsApi(api_client, NAMESPACE, LONGHORN_NS), metrics, ready=not_ready,
                          deadline=deadline, verify_reviews=verify_reviews)
    server = WebhookServer(admission, certs, metrics, not_ready=not_ready, host="127.0.0.1", port=0,
                           metrics_port=0, shutdown_delay=0)
    informers.start()
    await certs.start()
    await server.start()
    if wait_ready:
        for _ in range(400):
            if not_ready() is None:
                break
            await asyncio.sleep(0.025)
        else:
            raise TimeoutError(f"replica never ready: {not_ready()}")
    return Replica(api_client, index, informers, certs, admission, server, metrics)


async def register(api: ApiServer, replica: Replica, **kwargs: Any) -> None:
    """Install the webhook configuration and route its Service to this replica."""
    api.webhook_hosts[f"{SERVICE}.{NAMESPACE}.svc"] = ("127.0.0.1", replica.server.bound_port)
    ar = client.AdmissionregistrationV1Api(replica.api_client)
    await ar.create_mutating_webhook_configuration(webhook_configuration(replica.certs.ca_bundle_pem, **kwargs))
