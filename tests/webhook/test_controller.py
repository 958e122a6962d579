"""The rewrite controller against the emulated API server, a simulated Longhorn v1.7.2 cluster
with real cfg files, and the simulated kubelet running the real `bimguard rewrite-cfg` pods.

Each test plays the webhook's part by hand (a DiskRewrite, a PrefixClaim, the status patch via
`set_status_disk_uuid`) and then checks the outcome docs/design.md's invariant 2 requires: status
and cfg agree.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import yaml

from bimguard import records
from bimguard.sim.apiserver import CRD_KEY, ApiServer
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.kube import api_client
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.rewrite.engine import REASON_ABANDONED, REASON_DONE, REASON_ROLLED_BACK, Settings
from webhook.controller import RewriteController
from webhook.leader import LeaderElector
from bimguard.rewrite.pod import pod_name

REPO = Path(__file__).resolve().parents[2]
NS = "bimguard"
LH = "longhorn-system"
NODE, DISK = "worker-2", "disk-1"
IMAGE = "bimguard:test"
RW = "bimguard.io/v1alpha1/diskrewrites"
CLAIMS = "bimguard.io/v1alpha1/prefixclaims"
OTHER_OLD = "0dd50d6e-3b1a-4f7e-9a55-1a2b3c4d5e6f"
FAST = Settings(pending_grace=0.6, pod_start_timeout=1.5, resync=0.1, gc_interval=0.2, gc_grace=3600,
                active_deadline=60)


@dataclass
class Env:
    api: ApiServer
    cluster: SimCluster
    tmp: Path
    clients: list[Any] = field(default_factory=list)
    controllers: list[RewriteController] = field(default_factory=list)

    def controller(self, settings: Settings = FAST, **kw: Any) -> RewriteController:
        c = api_client(self.api.url)
        self.clients.append(c)
        ctl = RewriteController(c, NS, LH, IMAGE, settings=settings, **kw)
        self.controllers.append(ctl)
        return ctl

    async def make_record(self, new_prefix: str = "5eed", *, disk_name: str | None = None,
                          node: str = NODE, disk: str = DISK, origin: str = "webhook") -> tuple[str, str, str]:
        old = await self.cluster.disk_uuid(node, disk)
        new = new_prefix + old[len(new_prefix):]
        name = records.record_name(node, disk, old)
        self.api.store.create(RW, records.rewrite_manifest(
            name=name, namespace=NS, node=node, disk=disk, disk_name=disk if disk_name is None else disk_name,
            disk_path=self.cluster.host_path(node, disk), old_uuid=old, new_uuid=new,
            reason="prefix collides with another disk", origin=origin))  # type: ignore[arg-type]
        self.api.store.create(CLAIMS, records.claim_manifest(prefix=new[:4], namespace=NS, node=node, disk=disk,
                                                             uuid=new, record=name))
        return name, old, new

    def rec(self, name: str) -> dict[str, Any]:
        return self.api.store.get(RW, NS, name)

    def phase(self, name: str) -> str:
        return (self.rec(name).get("status") or {}).get("phase") or "Pending"

    async def wait_phase(self, name: str, phases: set[str], timeout: float = 15) -> dict[str, Any]:
        await self.cluster.wait_for(lambda: self.phase(name) in phases, timeout, f"{name} in {phases}")
        return self.rec(name)

    def pods(self) -> list[dict[str, Any]]:
        return [p for p in self.api.store.list("v1/pods", NS)[0] if p["metadata"].get("labels", {}).get(
            "app.kubernetes.io/component") == "rewriter"]

    def node_events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.api.store.list("v1/events", LH)[0]
                if e["involvedObject"].get("kind") == "Node" and e["reason"] == reason]

    def claim(self, prefix: str) -> dict[str, Any] | None:
        try:
            return self.api.store.get(CLAIMS, NS, prefix)
        except Exception:
            return None

    async def ready_with(self, uuid: str, node: str = NODE, disk: str = DISK) -> bool:
        e = (((await self.cluster.get_node(node)).get("status") or {}).get("diskStatus") or {}).get(disk) or {}
        return e.get("diskUUID") == uuid and get_condition(e.get("conditions"), "Ready").get("status") == "True"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    api = ApiServer(namespace_seed=("default", LH, NS))
    await api.start()
    for path in sorted((REPO / "charts/bimguard/crds").glob("*.yaml")):
        api.store.create(CRD_KEY, yaml.safe_load(path.read_text()))
    cluster = SimCluster(api, tmp_path / "hosts", nodes=[NODE], disks_per_node=2, seed=7, time_scale=0.01)
    await cluster.start()
    e = Env(api, cluster, tmp_path)
    try:
        await cluster.wait_until_ready(20)
        await cluster.start_kubelet(images=["bimguard"])
        yield e
    finally:
        for ctl in e.controllers:
            await ctl.stop()
        for c in e.clients:
            await c.close()
        await cluster.stop()
        await api.stop()


async def test_happy_path_rewrites_cfg_and_longhorn_turns_ready(env: Env) -> None:
    name, old, new = await env.make_record()
    cfg_before = env.cluster.read_cfg(NODE, DISK)
    assert cfg_before.disk_uuid == old
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)  # the admission patch landed
    seen: list[tuple[str, str]] = []
    env.controller(on_transition=lambda r, a, b: seen.append((a, b))).start()

    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "Done", rec["status"]
    assert rec["status"]["attempts"] == 1
    assert rec["status"]["pod"] == pod_name(name, 1)
    assert "written" in rec["status"]["message"]
    assert env.cluster.read_cfg(NODE, DISK).disk_uuid == new
    assert env.cluster.read_cfg(NODE, DISK).disk_name == cfg_before.disk_name
    await env.cluster.wait_for(lambda: len(seen) == 2, 3, "both transitions reported")
    assert seen == [("Pending", "Rewriting"), ("Rewriting", "Done")]
    (ev,) = env.node_events(REASON_DONE)
    assert ev["type"] == "Normal" and ev["involvedObject"]["name"] == NODE
    assert ev["involvedObject"]["apiVersion"] == "longhorn.io/v1beta2"
    assert old in ev["message"] and new in ev["message"] and DISK in ev["message"]
    await env.cluster.wait_for(lambda: not env.pods(), 5, "rewriter pod deleted")
    await env.cluster.wait_for(lambda: env.ready_with(new), 10, "disk Ready under the new UUID")
    assert env.claim(new[:4]) is not None  # the disk keeps its new prefix


async def test_status_kept_old_uuid_is_abandoned_and_cfg_untouched(env: Env) -> None:
    name, old, new = await env.make_record()
    job_rec, _, _ = await env.make_record("abcd", disk=env.cluster.disks_of(NODE)[0], origin="job")
    ghost = records.record_name("worker-9", "disk-1", OTHER_OLD)  # a node that went away meanwhile
    env.api.store.create(RW, records.rewrite_manifest(
        name=ghost, namespace=NS, node="worker-9", disk="disk-1", disk_name="disk-1", disk_path="/mnt/disk1",
        old_uuid=OTHER_OLD, new_uuid="beef" + OTHER_OLD[4:], reason="test", origin="webhook"))
    raw = env.cluster.cfg_path(NODE, DISK).read_bytes()
    gauges: list[dict[str, int]] = []
    ctl = env.controller(on_pass=gauges.append)
    ctl.start()
    await asyncio.sleep(0.3)
    assert env.phase(name) == "Pending"  # within the grace period nothing happens
    rec = await env.wait_phase(name, {"Abandoned", "Done", "RolledBack"})
    assert rec["status"]["phase"] == "Abandoned"
    assert "did not land" in rec["status"]["message"]
    assert env.cluster.cfg_path(NODE, DISK).read_bytes() == raw
    assert await env.cluster.disk_uuid(NODE, DISK) == old
    await env.cluster.wait_for(lambda: env.claim(new[:4]) is None, 5, "claim released")
    assert not env.pods() and not [p for m, p, s in env.api.requests if m == "POST" and "/pods" in p]
    assert env.node_events(REASON_ABANDONED)
    assert gauges[0] == {"Pending": 3}
    gone = await env.wait_phase(ghost, {"Abandoned"})
    assert "worker-9 not found" in gone["status"]["message"]
    await env.cluster.wait_for(lambda: gauges[-1] == {"Abandoned": 2, "Pending": 1}, 3, "gauge after a pass")
    assert ctl.phase_counts == {"Abandoned": 2, "Pending": 1}
    assert "status" not in env.rec(job_rec)  # the repair Job's records are the Job's to drive


async def test_late_landing_patch_after_abandon_is_rolled_back(env: Env) -> None:
    name, old, new = await env.make_record()
    env.controller().start()
    await env.wait_phase(name, {"Abandoned"})
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)  # a slow write lands after all
    rec = await env.wait_phase(name, {"RolledBack"})
    assert await env.cluster.disk_uuid(NODE, DISK) == old == env.cluster.read_cfg(NODE, DISK).disk_uuid
    assert "landed after" in rec["status"]["message"]


async def test_refused_rewrite_rolls_status_back(env: Env) -> None:
    # The record names another disk than the cfg does: rewrite-cfg refuses (exit 3).
    name, old, new = await env.make_record(disk_name="some-other-disk")
    raw = env.cluster.cfg_path(NODE, DISK).read_bytes()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    env.controller().start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "RolledBack", rec["status"]
    assert "exit 3" in rec["status"]["lastError"] and "refused" in rec["status"]["lastError"]
    assert await env.cluster.disk_uuid(NODE, DISK) == old
    assert env.cluster.cfg_path(NODE, DISK).read_bytes() == raw
    (ev,) = env.node_events(REASON_ROLLED_BACK)
    assert ev["type"] == "Warning" and "some-other-disk" in ev["message"]
    await env.cluster.wait_for(lambda: env.claim(new[:4]) is None, 5, "claim released")
    await env.cluster.wait_for(lambda: not env.pods(), 5, "rewriter pod deleted")
    await env.cluster.wait_for(lambda: env.ready_with(old), 10, "disk Ready under the old UUID again")


async def test_node_down_pod_never_runs_rolls_back(env: Env) -> None:
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    await env.cluster.set_node_down(NODE)
    env.controller().start()
    await env.wait_phase(name, {"Rewriting"})
    await env.cluster.wait_for(env.pods, 5, "rewriter pod created")
    assert [p["status"].get("phase") for p in env.pods()] == ["Pending"]
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "RolledBack", rec["status"]
    assert "did not start" in rec["status"]["message"]
    assert await env.cluster.disk_uuid(NODE, DISK) == old == env.cluster.read_cfg(NODE, DISK).disk_uuid
    assert not env.pods()
    await env.cluster.set_node_down(NODE, False)  # the node returns: nothing left to run
    await asyncio.sleep(0.5)
    assert env.cluster.read_cfg(NODE, DISK).disk_uuid == old


async def test_transient_failures_are_retried_then_succeed(env: Env) -> None:
    marker = env.tmp / "failed-once"
    script = f'if [ ! -e {marker} ]; then touch {marker}; echo "error: injected" > /dev/termination-log; exit 1; fi; ' \
             f'exec bimguard rewrite-cfg "$@"'
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    env.controller(Settings(**{**FAST.__dict__, "command": ("sh", "-c", script, "rewrite-cfg")})).start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "Done", (rec["status"]["lastError"], rec["status"]["message"])
    assert rec["status"]["attempts"] == 2 and rec["status"]["pod"] == pod_name(name, 2), rec["status"]["lastError"]
    assert "exit 1" in rec["status"]["lastError"]
    assert env.cluster.read_cfg(NODE, DISK).disk_uuid == new


async def test_pod_creation_failing_rolls_back(env: Env) -> None:
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    env.api.faults.error_rate(1.0, 500, verbs="create", resource="v1/pods")
    env.controller().start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "RolledBack" and "could not create" in rec["status"]["message"]
    assert await env.cluster.disk_uuid(NODE, DISK) == old == env.cluster.read_cfg(NODE, DISK).disk_uuid


# Every rewrite attempt fails with a transient error; a read-only check (`--check`) runs for real.
FAIL_REWRITES = 'case " $* " in *" --check "*) exec bimguard rewrite-cfg "$@";; esac; exit 1'


async def test_transient_failures_exhausted_roll_back(env: Env) -> None:
    # After the last attempt a check reads the cfg: the old UUID, so the status goes back.
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    env.controller(Settings(**{**FAST.__dict__, "max_attempts": 2,
                               "command": ("sh", "-c", FAIL_REWRITES, "x")})).start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "RolledBack" and rec["status"]["attempts"] == 3
    assert "check pod" in rec["status"]["lastError"] and "checked, nothing written" in rec["status"]["lastError"]
    assert await env.cluster.disk_uuid(NODE, DISK) == old == env.cluster.read_cfg(NODE, DISK).disk_uuid


async def test_nothing_is_rolled_back_while_no_pod_can_tell_what_the_cfg_holds(env: Env) -> None:
    # Rewrites and checks all fail without a word (a disk failing every read): the cfg may hold
    # either UUID, so the record waits, checking again every check_interval, and never guesses.
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    env.controller(Settings(**{**FAST.__dict__, "max_attempts": 2, "check_interval": 0.5,
                               "command": ("sh", "-c", "exit 1", "x")})).start()
    await env.cluster.wait_for(lambda: int((env.rec(name).get("status") or {}).get("attempts") or 0) >= 4, 20,
                               "two checks")
    rec = env.rec(name)
    assert rec["status"]["phase"] == "Rewriting" and rec["status"]["pod"] == pod_name(name, rec["status"]["attempts"], "ck")
    assert await env.cluster.disk_uuid(NODE, DISK) == new


async def test_data_under_old_uuid_is_never_rewritten(env: Env) -> None:
    # A re-recorded disk that still holds a replica (Longhorn records the UUID the existing cfg holds,
    # controller/node_controller.go:745 @v1.7.2): no pod, status back to old (docs/design.md, invariant 3).
    await env.cluster.create_volume("vol-1", [(NODE, DISK)])
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    env.controller().start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "RolledBack" and "1 replica" in rec["status"]["message"]
    assert await env.cluster.disk_uuid(NODE, DISK) == old == env.cluster.read_cfg(NODE, DISK).disk_uuid
    assert not [p for m, p, s in env.api.requests if m == "POST" and "/pods" in p]


async def test_restart_after_pod_created_converges_to_done(env: Env) -> None:
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    first = env.controller()
    await first.reconcile_once()  # Pending -> Rewriting, pod created; then the process dies
    assert env.phase(name) == "Rewriting" and len(env.pods()) == 1

    async def pod_done() -> bool:
        return all(p["status"].get("phase") == "Succeeded" for p in env.pods())

    await env.cluster.wait_for(pod_done, 10, "pod finished while no controller runs")
    assert env.phase(name) == "Rewriting"
    second = env.controller()
    await second.reconcile_once()
    rec = env.rec(name)
    assert rec["status"]["phase"] == "Done" and rec["status"]["attempts"] == 1
    await second.reconcile_once()  # and again: nothing changes
    assert env.rec(name)["metadata"]["resourceVersion"] == rec["metadata"]["resourceVersion"]
    assert len(env.node_events(REASON_DONE)) == 1
    assert env.cluster.read_cfg(NODE, DISK).disk_uuid == new
    assert sum(1 for m, p, s in env.api.requests if m == "POST" and p.startswith(f"/api/v1/namespaces/{NS}/pods")
               and s == 201) == 1


async def test_restart_between_status_and_pod_creation(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    first = env.controller()

    async def crash(*_a: Any, **_k: Any) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(first.engine, "create_pod", crash)
    with pytest.raises(SystemExit):
        await first._reconcile(env.rec(name), {})
    assert env.phase(name) == "Rewriting" and not env.pods()
    env.controller().start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "Done" and rec["status"]["attempts"] == 1
    assert env.cluster.read_cfg(NODE, DISK).disk_uuid == new


async def test_restart_after_rollback_patch_before_record_write(env: Env) -> None:
    name, old, new = await env.make_record(disk_name="some-other-disk")
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    first = env.controller()
    await first.reconcile_once()
    await env.cluster.wait_for(lambda: [p for p in env.pods() if p["status"].get("phase") == "Failed"], 10, "refused")
    await env.cluster.set_status_disk_uuid(NODE, DISK, old)  # the rollback patch went through; then a crash
    await env.controller().reconcile_once()
    rec = env.rec(name)
    assert rec["status"]["phase"] == "RolledBack" and "already holds" in rec["status"]["message"]


async def test_only_the_leader_acts(env: Env) -> None:
    fast = dict(lease_duration=4.0, renew_deadline=3.0, retry_period=0.2)  # roomy: a loaded CI machine
    c1, c2 = api_client(env.api.url), api_client(env.api.url)
    env.clients += [c1, c2]
    e1 = LeaderElector(c1, NS, identity="webhook-0", **fast)
    e2 = LeaderElector(c2, NS, identity="webhook-1", **fast)
    ctl1, ctl2 = env.controller(leader=e1), env.controller(leader=e2)
    e1.on_started_leading, e2.on_started_leading = ctl1.wake, ctl2.wake
    e1.start()
    assert await e1.wait_leading(3)
    e2.start()
    ctl1.start(); ctl2.start()
    try:
        name, old, new = await env.make_record()
        await env.cluster.set_status_disk_uuid(NODE, DISK, new)
        await env.wait_phase(name, {"Done"})
        # The store shows Done a moment before the controller has read its own write's response.
        await env.cluster.wait_for(lambda: sum(ctl1.transitions.values()) == 2, 3, "leader counted its writes")
        assert e1.transitions == 1 and e2.transitions == 0, "leadership changed hands during the test"
        assert sum(ctl1.transitions.values()) == 2 and not ctl2.transitions and not ctl2.phase_counts, (
            ctl1.transitions, ctl2.transitions)
        # The leader goes away: the other takes over and drives the next record.
        await ctl1.stop()
        await e1.stop()
        assert await e2.wait_leading(3)
        other = env.cluster.disks_of(NODE)[0]  # the default disk
        name2, old2, new2 = await env.make_record("f00d", disk=other)
        await env.cluster.set_status_disk_uuid(NODE, other, new2)
        await env.wait_phase(name2, {"Done"})
        await env.cluster.wait_for(lambda: sum(ctl2.transitions.values()) == 2, 3, "new leader counted its writes")
    finally:
        await e1.stop()
        await e2.stop()


async def test_claims_of_vanished_uuids_are_collected(env: Env) -> None:
    live = await env.cluster.disk_uuid(NODE, DISK)
    env.api.store.create(CLAIMS, records.claim_manifest(prefix=live[:4], namespace=NS, node=NODE, disk=DISK, uuid=live))
    gone = "abcd" + live[4:]
    env.api.store.create(CLAIMS, records.claim_manifest(prefix="abcd", namespace=NS, node=NODE, disk="gone", uuid=gone))
    young = env.controller()  # default-ish grace: the webhook may still be about to record it
    await young.reconcile_once()
    assert env.claim("abcd") is not None
    env.api.clock.skew = 5.0  # (ages are whole seconds on the API server's clock)
    old = env.controller(Settings(**{**FAST.__dict__, "gc_grace": 1.0}))
    await old.reconcile_once()
    assert env.claim("abcd") is None
    assert env.claim(live[:4]) is not None


async def test_final_records_are_kept_unless_retention_is_set(env: Env) -> None:
    name, old, new = await env.make_record()
    rec = env.rec(name)
    rec["status"] = {"phase": "Abandoned", "attempts": 0, "finishedAt": "2020-01-01T00:00:00Z", "message": "old"}
    env.api.store.update(RW, rec, subresource="status")
    env.api.store.delete(CLAIMS, NS, new[:4])
    await env.controller().reconcile_once()
    assert env.phase(name) == "Abandoned"  # the audit trail stays by default
    await env.controller(Settings(**{**FAST.__dict__, "retention": 3600.0})).reconcile_once()
    await env.cluster.wait_for(lambda: not env.api.store.list(RW, NS)[0], 2, "record deleted after retention")


async def test_exit_zero_counts_even_if_the_pod_is_marked_failed(env: Env) -> None:
    # activeDeadlineSeconds can fail a pod whose process already exited 0: the swap is done.
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    await env.cluster.set_node_down(NODE)  # the kubelet leaves the pod alone; we write its status
    ctl = env.controller()
    await ctl.reconcile_once()
    (pod,) = env.pods()
    pod["status"] = {"phase": "Failed", "reason": "DeadlineExceeded", "containerStatuses": [{
        "name": "rewrite-cfg", "image": IMAGE, "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": "unchanged: already new"}}}]}
    env.api.store.update("v1/pods", pod, subresource="status")
    await ctl.reconcile_once()
    assert env.phase(name) == "Done" and env.rec(name)["status"]["message"] == "unchanged: already new"


async def test_node_object_gone_while_rewriting_is_abandoned(env: Env) -> None:
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    await env.cluster.set_node_down(NODE)
    env.controller().start()
    await env.wait_phase(name, {"Rewriting"})
    node = env.api.store.get("longhorn.io/v1beta2/nodes", LH, NODE)
    node["metadata"]["finalizers"] = []
    env.api.store.update("longhorn.io/v1beta2/nodes", node)
    env.api.store.delete("longhorn.io/v1beta2/nodes", LH, NODE)
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "Abandoned" and "node gone" in rec["status"]["message"]
    assert env.cluster.read_cfg(NODE, DISK).disk_uuid == old  # the pod never ran
    await env.cluster.wait_for(lambda: env.claim(new[:4]) is None, 5, "claim released")


async def test_final_records_new_uuid_reappearing_is_reverted_only_on_longhorns_word(env: Env) -> None:
    name, old, new = await env.make_record(disk_name="some-other-disk")  # refused -> RolledBack, attempts 1
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    env.controller(Settings(**{**FAST.__dict__, "late_landing_window": 0.0})).start()
    await env.wait_phase(name, {"RolledBack"})
    await env.cluster.wait_for(lambda: env.ready_with(old), 10, "Ready under the old UUID")
    # The record's answer reappears in the status (a re-recorded disk, a reused review): the cfg
    # still holds the old UUID, Longhorn says so, and the status goes back.
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    await env.cluster.wait_for(lambda: env.ready_with(old), 10, "reverted and Ready under the old UUID")
    await env.cluster.wait_for(lambda: "again although" in env.rec(name)["status"]["message"], 5, "record says why")
    # If the cfg really holds the new UUID and Longhorn records it from there, they agree: hands off.
    cfg = env.cluster.cfg_path(NODE, DISK)
    tmp = cfg.with_name(".longhorn-disk.cfg.test")
    tmp.write_bytes(cfg.read_bytes().replace(old.encode(), new.encode()))
    tmp.replace(cfg)
    await env.cluster.wake()  # the monitor reads the cfg before the node is re-created
    await env.cluster.recreate_node(NODE)
    await env.cluster.wait_for(lambda: env.ready_with(new), 10, "re-recorded from the cfg")
    await asyncio.sleep(1.0)  # several audits
    assert await env.ready_with(new)


# ------------------------------------------------------------------ issue 10: unknown outcomes, clocks, orphan claims

# attempt 1 does the real compare-and-swap and is then SIGKILLed before it can exit 0 (a node
# reboot, an OOM kill); attempt 2, the last one, fails with a transient error; any later run
# (a read-only check) is the real command.
KILLED_AFTER_RENAME = ('n=$(cat {marker} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {marker}; '
                       'if [ $n -eq 1 ]; then {first}; kill -9 $$; fi; '
                       'if [ $n -eq 2 ]; then echo "error: injected" > /dev/termination-log; exit 1; fi; '
                       'exec bimguard rewrite-cfg "$@"')


@pytest.mark.parametrize("renamed", [True, False], ids=["renamed-then-killed", "killed-before-rename"])
async def test_last_attempt_failing_after_an_unknown_outcome_converges_to_what_the_cfg_holds(env: Env, renamed: bool
                                                                                          ) -> None:
    """Attempt 1 is killed (exit 137) after -- or before -- its rename; attempt 2, the last, fails
    transiently. Neither says what the cfg holds, so rolling back blindly could leave the status
    on the old UUID over a cfg holding the new one, for good. Longhorn's manager on the node is
    stopped (so it cannot report the disk Ready with the new UUID either): the controller must
    establish what the cfg holds and converge to it -- Done when the rename happened, RolledBack
    when it did not -- and Longhorn, once back, finds status == cfg."""
    marker = env.tmp / "runs"
    first = 'bimguard rewrite-cfg "$@" >/dev/null' if renamed else "true"
    script = KILLED_AFTER_RENAME.format(marker=marker, first=first)
    name, old, new = await env.make_record()
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)
    await env.cluster.set_manager_down(NODE)
    env.controller(Settings(**{**FAST.__dict__, "max_attempts": 2,
                               "command": ("sh", "-c", script, "rewrite-cfg")})).start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"}, timeout=30)
    expected = new if renamed else old
    assert env.cluster.read_cfg(NODE, DISK).disk_uuid == expected
    assert rec["status"]["phase"] == ("Done" if renamed else "RolledBack"), rec["status"]
    assert await env.cluster.disk_uuid(NODE, DISK) == expected
    assert int(marker.read_text()) >= 3  # both attempts ran, and then a check
    await env.cluster.wait_for(lambda: not env.pods(), 5, "every pod of the record deleted")
    await env.cluster.set_manager_down(NODE, False)
    await env.cluster.wait_for(lambda: env.ready_with(expected), 10, f"Ready under {expected}")


async def test_pending_grace_is_measured_on_the_api_servers_clock(env: Env) -> None:
    """The controller's clock runs a minute ahead of the API server's. A record created a moment
    ago is a moment old: it stays Pending for the grace period instead of being abandoned at once."""
    env.api.clock.skew = -60.0
    name, old, new = await env.make_record()
    ctl = env.controller(Settings(**{**FAST.__dict__, "pending_grace": 5.0}))
    await ctl.reconcile_once()
    assert env.phase(name) == "Pending"
    await env.cluster.set_status_disk_uuid(NODE, DISK, new)  # the admission write lands
    ctl.start()
    rec = await env.wait_phase(name, {"Done", "RolledBack", "Abandoned"})
    assert rec["status"]["phase"] == "Done", rec["status"]


async def test_claim_naming_a_record_that_does_not_exist_is_collected(env: Env) -> None:
    """A claim left by a webhook that died between claiming and creating the record names a record
    that never came to exist. Past a short grace it is garbage, long before gc_grace."""
    live = await env.cluster.disk_uuid(NODE, DISK)
    orphan = "abcd" + live[4:]
    env.api.store.create(CLAIMS, records.claim_manifest(prefix="abcd", namespace=NS, node=NODE, disk=DISK, uuid=orphan,
                                                        record=records.record_name(NODE, DISK, live)))
    env.api.store.create(CLAIMS, records.claim_manifest(prefix="f00d", namespace=NS, node=NODE, disk="other",
                                                        uuid="f00d" + live[4:]))  # a first-record claim
    ctl = env.controller()  # gc_grace 3600 s
    await ctl.reconcile_once()
    assert env.claim("abcd") is not None  # within the grace its record may be a moment away
    env.api.clock.skew = 120.0
    await env.controller().reconcile_once()
    assert env.claim("abcd") is None
    assert env.claim("f00d") is not None  # without a record, only gc_grace applies
