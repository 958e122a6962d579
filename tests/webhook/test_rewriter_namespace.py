"""The rewrite controller with its pods in a namespace of their own, and its check of a record's
disk path against the Longhorn Node before any pod mounts it (bimguard/rewrite/engine.py
disk_path_refusal): against the emulator, a simulated Longhorn and the kubelet running the real
`bimguard rewrite-cfg`, as in tests/webhook/test_controller.py (whose fixture this reuses)."""

from __future__ import annotations

import dataclasses

from bimguard import records
from bimguard.rewrite.engine import REASON_DONE, REASON_ROLLED_BACK, disk_path_refusal
from tests.webhook.test_controller import CLAIMS, DISK, FAST, LH, NODE, NS, RW, Env, env  # noqa: F401 (fixture)

POD_NS = "bimguard-rewriter"


def pods_in(e: Env, namespace: str) -> list[dict]:
    return [p for p in e.api.store.list("v1/pods", namespace)[0]
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "bimguard"]


async def test_pods_run_in_the_rewriter_namespace(env: Env) -> None:  # noqa: F811
    env.api.store.create("v1/namespaces", {"metadata": {"name": POD_NS}})
    settings = dataclasses.replace(FAST, pod_namespace=POD_NS, image_pull_secrets=("regcred",),
                                   tolerations=({"key": "storage", "operator": "Exists"},))
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    created: list[dict] = []

    def note(method: str, path: str, status: int, user: str) -> None:
        if method == "POST" and "/pods" in path and status < 300:
            created.append({"path": path})

    env.api.request_listeners.append(note)
    env.controller(settings).start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "Done", rec["status"]
    assert env.cluster.read_cfg(NODE, DISK).disk_uuid == new
    # Every pod it made was in the rewriter namespace, none in bimguard's.
    assert created and all(f"/namespaces/{POD_NS}/pods" in c["path"] for c in created), created
    assert env.node_events(REASON_DONE)
    # ... and it cleans them up there.
    await env.cluster.wait_for(lambda: not pods_in(env, POD_NS), 10, "the rewriter pod deleted")
    assert not pods_in(env, NS)


async def test_a_record_whose_path_is_not_the_nodes_gets_no_pod(env: Env) -> None:  # noqa: F811
    """A record naming another host path than the Longhorn Node gives the disk (a forged or stale
    record): no pod ever mounts it; the status change is rolled back, status and cfg agree."""
    old = await env.cluster.disk_uuid(NODE, DISK)
    new = "5eed" + old[4:]
    name = records.record_name(NODE, DISK, old)
    env.api.store.create(RW, records.rewrite_manifest(
        name=name, namespace=NS, node=NODE, disk=DISK, disk_name=DISK, disk_path="/etc", old_uuid=old, new_uuid=new,
        reason="forged", origin="webhook"))
    env.api.store.create(CLAIMS, records.claim_manifest(prefix="5eed", namespace=NS, node=NODE, disk=DISK, uuid=new,
                                                        record=name))
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    env.controller().start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "RolledBack", rec["status"]
    assert "'/etc' is not the path" in rec["status"]["message"] and "no pod created" in rec["status"]["message"]
    assert not pods_in(env, NS) and (rec["status"].get("attempts") or 0) == 0
    assert await env.cluster.disk_uuid(NODE, DISK) == old and env.cluster.read_cfg(NODE, DISK).disk_uuid == old
    assert env.node_events(REASON_ROLLED_BACK)


def test_disk_path_refusal() -> None:
    node = {"spec": {"disks": {"d": {"path": "/var/lib/longhorn/"}, "e": {"path": "relative"}}}}
    spec = {"node": "n", "disk": "d", "diskPath": "/var/lib/longhorn/"}
    assert disk_path_refusal(node, spec) == ""
    assert disk_path_refusal(node, {**spec, "diskPath": "/var/lib/longhorn"}) == ""  # a trailing slash aside
    for bad in ("/var/lib/longhorn/../..", "/var/lib", "/", "", "/var/lib/longhorn//"):
        assert disk_path_refusal(node, {**spec, "diskPath": bad}), bad
    assert "not in spec.disks" in disk_path_refusal(node, {**spec, "disk": "x"})
    assert disk_path_refusal(node, {**spec, "disk": "e", "diskPath": "relative"})
    assert "not found" in disk_path_refusal(None, spec)
    assert LH  # the fixture's Longhorn namespace, for readers of this file
