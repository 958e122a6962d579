"""The admission webhook in the emulator: real reviews from the simulated longhorn-manager's
status writes, dispatched by the emulated kube-apiserver over verified TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from bimguard import records
from bimguard.kube import Kube, Resource
from bimguard.sim.serve import simulated_cluster
from tests.webhook.harness import NAMESPACE, prepare, register, start_replica

REWRITES = Resource(records.GROUP, records.VERSION, records.REWRITES)
CLAIMS = Resource(records.GROUP, records.VERSION, records.CLAIMS)


@pytest.fixture
async def env(tmp_path: Path):
    async with simulated_cluster(nodes=3, disks_per_node=1, seed=11, time_scale=0.01, root=tmp_path / "nodes") as (api, c):
        kubeconfig = tmp_path / "k"
        api.kubeconfig(kubeconfig)
        await prepare(kubeconfig)
        replica = await start_replica(kubeconfig)
        await register(api, replica)
        try:
            yield api, c, replica
        finally:
            await replica.stop()


async def test_a_new_colliding_disk_gets_a_unique_prefix_at_admission(env):
    api, c, replica = env
    kube = Kube(replica.api_client)
    existing = c.disks_of("worker-1")[0]
    taken = await c.disk_uuid("worker-1", existing)
    await c.add_disk("worker-2", "disk-new", force_uuid=taken[:4])
    generated_cfg_uuid = None

    async def recorded():
        u = await c.disk_uuid("worker-2", "disk-new")
        return u or None

    new_uuid = await c.wait_for(recorded, 20, "the new disk recorded")
    generated_cfg_uuid = c.read_cfg("worker-2", "disk-new").disk_uuid
    assert generated_cfg_uuid.startswith(taken[:4])  # Longhorn drew the colliding UUID...
    assert not new_uuid.startswith(taken[:4])  # ...and the stored status holds a unique one
    all_uuids = [await c.disk_uuid(n, d) for n in c.node_names for d in c.disks_of(n)]
    assert len({u[:4] for u in all_uuids}) == len(all_uuids)
    rec = await kube.get(REWRITES, NAMESPACE, records.record_name("worker-2", "disk-new", generated_cfg_uuid))
    assert (rec["spec"]["oldUUID"], rec["spec"]["newUUID"], rec["spec"]["origin"]) == (generated_cfg_uuid, new_uuid, "webhook")
    claims = {cl["metadata"]["name"]: cl["spec"] for cl in await kube.items(CLAIMS, NAMESPACE)}
    assert claims[new_uuid[:4]]["uuid"] == new_uuid and claims[new_uuid[:4]]["record"] == rec["metadata"]["name"]
    assert claims.get(taken[:4], {}).get("uuid") != generated_cfg_uuid  # the rewritten UUID gave its claim up
    assert replica.metrics.reviews.outcomes["rewritten"] == 1
