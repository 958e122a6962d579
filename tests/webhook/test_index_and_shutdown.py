"""The webhook's list+watch index survives dropped streams and compaction; shutdown drains."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp

from bimguard.kube import Kube, Resource
from tests.webhook.harness import LONGHORN_NS, NAMESPACE, SERVICE, prepare, start_replica
from tests.webhook.test_reviews import occupy, review, until

BIMS = Resource("longhorn.io", "v1beta2", "backingimagemanagers")


def bim(prefix: str, node: str = "worker-9") -> dict:
    uuid = f"{prefix}57ea-8353-4200-a67e-6939ff4dcecf"
    return {"apiVersion": "longhorn.io/v1beta2", "kind": "BackingImageManager",
            "metadata": {"name": f"backing-image-manager-5ae6-{prefix}",
                         "labels": {"longhorn.io/disk-uuid": uuid, "longhorn.io/node": node}},
            "spec": {"diskUUID": uuid, "nodeID": node, "diskPath": "/mnt/x",
                     "image": "longhornio/backing-image-manager:v1.7.2", "backingImages": {}}}


async def test_index_resyncs_after_dropped_watches_and_compaction(api, tmp_path: Path):
    api.bookmark_interval = 0.2
    api.kubeconfig(tmp_path / "k")
    await prepare(tmp_path / "k")
    r = await start_replica(tmp_path / "k", verify_reviews=False)  # hand-made reviews (tests.webhook.test_reviews)
    try:
        kube = Kube(r.api_client)
        await kube.create(BIMS, LONGHORN_NS, bim("aaa1"))
        await until(lambda: "aaa1" in r.index.occupied())
        assert api.faults.drop_watches() > 0  # streams end: watch again from the last version
        await kube.create(BIMS, LONGHORN_NS, bim("aaa2"))
        await until(lambda: "aaa2" in r.index.occupied())
        relists = r.informers.relists
        api.faults.compact()  # every older version is gone: the next watch gets 410 and lists again
        api.faults.drop_watches()
        await kube.create(BIMS, LONGHORN_NS, bim("aaa3"))
        await kube.delete(BIMS, LONGHORN_NS, "backing-image-manager-5ae6-aaa1")
        await until(lambda: "aaa3" in r.index.occupied() and "aaa1" not in r.index.occupied())
        assert r.informers.relists > relists and r.informers.ready
    finally:
        await r.stop()


async def test_shutdown_drops_readiness_first_and_finishes_in_flight_reviews(api, tmp_path: Path, sample):
    api.kubeconfig(tmp_path / "k")
    await prepare(tmp_path / "k")
    r = await start_replica(tmp_path / "k", verify_reviews=False)  # hand-made reviews (tests.webhook.test_reviews)
    await occupy(r)
    ctx = ssl.create_default_context(cadata=r.certs.ca_bundle_pem.decode())
    base = f"https://127.0.0.1:{r.server.bound_port}"
    host = f"{SERVICE}.{NAMESPACE}.svc"
    # A rewrite that is slow inside (its claim takes 0.6 s) is in flight when SIGTERM arrives.
    api.faults.latency(0.6, verbs="create", resource="bimguard.io/v1alpha1/prefixclaims")
    r.server.shutdown_delay = 1.0
    async with aiohttp.ClientSession() as s:
        async def mutate() -> tuple[int, dict]:
            async with s.post(base + "/mutate", data=json.dumps(review(sample)).encode(), ssl=ctx,
                              server_hostname=host) as resp:
                return resp.status, await resp.json()

        in_flight = asyncio.create_task(mutate())
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(r.server.stop())
        await asyncio.sleep(0.1)
        async with s.get(base + "/readyz", ssl=ctx, server_hostname=host) as resp:
            assert resp.status == 503 and "shutting down" in await resp.text()
        code, answer = await mutate()  # still served during the delay
        assert code == 200 and answer["response"]["allowed"]
        code, answer = await in_flight
        assert code == 200 and "patch" in answer["response"]  # finished, with its rewrite
        await stopping
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/healthz", ssl=ctx, server_hostname=host):
                raise AssertionError("still listening after stop")
    except aiohttp.ClientConnectorError:
        pass
    finally:
        r.server._runners.clear()
        await r.stop()
