"""The whole prevention flow in the emulator: a simulated longhorn-manager records a colliding
disk, the real webhook (over TLS) rewrites the status and writes the record, the leader-elected
controller runs the real rewriter pod through the simulated kubelet, and Longhorn turns the disk
Ready under a unique UUID, with status and cfg agreeing (docs/design.md, invariant 2)."""

from __future__ import annotations

from pathlib import Path

from bimguard import records
from bimguard.kube import Kube, Resource
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.sim.serve import simulated_cluster
from tests.webhook.harness import LONGHORN_NS, NAMESPACE, prepare, register, start_replica
from bimguard.rewrite.engine import REASON_DONE, Settings
from webhook.controller import RewriteController
from webhook.leader import LeaderElector

REWRITES = Resource(records.GROUP, records.VERSION, records.REWRITES)


async def test_colliding_disk_ends_ready_under_a_unique_uuid(tmp_path: Path) -> None:
    async with simulated_cluster(nodes=3, disks_per_node=1, seed=11, time_scale=0.01,
                                 root=tmp_path / "nodes") as (api, c):
        kubeconfig = tmp_path / "k"
        api.kubeconfig(kubeconfig)
        await prepare(kubeconfig)
        replica = await start_replica(kubeconfig)
        await register(api, replica)
        await c.start_kubelet(images=["bimguard"])
        elector = LeaderElector(replica.api_client, NAMESPACE, identity="bimguard-webhook-0",
                                lease_duration=4, renew_deadline=3, retry_period=0.2)
        controller = RewriteController(replica.api_client, NAMESPACE, LONGHORN_NS, "bimguard:test",
                                       settings=Settings(resync=0.2, pending_grace=10, pod_start_timeout=15),
                                       leader=elector)
        elector.on_started_leading = controller.wake
        elector.start()
        controller.start()
        try:
            taken = await c.disk_uuid("worker-1", c.disks_of("worker-1")[0])
            await c.add_disk("worker-2", "disk-new", force_uuid=taken[:4])
            name = None

            async def done() -> bool:
                nonlocal name
                for rec in await Kube(replica.api_client).items(REWRITES, NAMESPACE):
                    if rec["spec"]["disk"] == "disk-new":
                        name = rec["metadata"]["name"]
                        return (rec.get("status") or {}).get("phase") in ("Done", "RolledBack", "Abandoned")
                return False

            await c.wait_for(done, 30, "the record reaches a final phase")
            rec = await Kube(replica.api_client).get(REWRITES, NAMESPACE, name or "")
            assert rec["status"]["phase"] == "Done", rec["status"]
            new = rec["spec"]["newUUID"]
            assert not new.startswith(taken[:4])
            assert c.read_cfg("worker-2", "disk-new").disk_uuid == new

            async def ready() -> bool:
                e = (await c.get_node("worker-2"))["status"]["diskStatus"]["disk-new"]
                return e["diskUUID"] == new and get_condition(e["conditions"], "Ready").get("status") == "True"

            await c.wait_for(ready, 15, "disk Ready under the new UUID")
            uuids = [await c.disk_uuid(n, d) for n in c.node_names for d in c.disks_of(n)]
            assert len({u[:4] for u in uuids}) == len(uuids)
            events = [e for e in api.store.list("v1/events", LONGHORN_NS)[0] if e["reason"] == REASON_DONE]
            assert [e["involvedObject"]["name"] for e in events] == ["worker-2"]
        finally:
            await controller.stop()
            await elector.stop()
            await replica.stop()
