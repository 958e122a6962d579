"""The repair's order as pure rules (bimguard.repair.steps.decide), on hand-built worlds whose
objects have Longhorn's shapes (tests/builders.py follows the samples in tests/fixtures)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bimguard.repair import steps
from bimguard.repair.world import World

OLD = "c0120000-0000-4000-8000-000000000001"
NEW = "d00d0000-0000-4000-8000-000000000002"
KEEP = "c0120000-0000-4000-8000-00000000000f"


def cond(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def node(name: str, disks: dict[str, dict[str, Any]], *, ready: bool = True) -> dict[str, Any]:
    """disks: disk -> {uuid, allow, evict, scheduled, ready}"""
    spec, status = {}, {}
    for d, o in disks.items():
        spec[d] = {"path": f"/mnt/{d}", "allowScheduling": o.get("allow", True), "evictionRequested": o.get("evict", False),
                   "diskType": "filesystem", "storageReserved": 0}
        status[d] = {"diskUUID": o["uuid"], "diskName": d, "diskType": "filesystem",
                     "scheduledReplica": o.get("scheduled", {}), "storageScheduled": sum(o.get("scheduled", {}).values()),
                     "storageAvailable": 100 << 30, "storageMaximum": 200 << 30,
                     "conditions": [cond("Ready", "True" if o.get("ready", True) else "False", *o.get("why", ())),
                                    cond("Schedulable", "True")]}
    return {"metadata": {"name": name}, "spec": {"allowScheduling": True, "disks": spec},
            "status": {"conditions": [cond("Ready", "True" if ready else "False"), cond("Schedulable", "True")],
                       "diskStatus": status}}


def replica(name: str, node_: str, uuid: str, volume: str = "vol", *, healthy: bool = False, last_healthy: bool = False,
            failed: bool = False, waiting: bool = False, running: bool = False, size: int = 1 << 30) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"longhorndiskuuid": uuid, "longhornnode": node_, "longhornvolume": volume}},
            "spec": {"nodeID": node_, "diskID": uuid, "volumeName": volume, "dataDirectoryName": f"{volume}-{name[-8:]}",
                     "healthyAt": "2026-01-01T00:00:00Z" if healthy else "",
                     "lastHealthyAt": "2026-01-01T00:00:00Z" if (healthy or last_healthy) else "",
                     "failedAt": "2026-01-01T00:00:00Z" if failed else "", "volumeSize": str(size)},
            "status": {"currentState": "running" if running else "stopped", "started": running,
                       "conditions": [cond("WaitForBackingImage", "True" if waiting else "False",
                                           "Waiting" if waiting else "")]}}


def record(phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j-1"},
            "spec": {"node": "w2", "disk": "victim", "diskPath": "/mnt/victim", "oldUUID": OLD, "newUUID": NEW,
                     "origin": "job", "original": {"allowScheduling": True, "evictionRequested": False}},
            "status": {"phase": phase, **status}}


def world(victim: dict[str, Any] | None = None, *, replicas: list[dict[str, Any]] = (), bis: list[dict[str, Any]] = (),
          **kw: Any) -> World:
    v = {"uuid": OLD, "allow": False, **(victim or {})}
    return World.from_lists(nodes=[node("w1", {"keeper": {"uuid": KEEP}}), node("w2", {"victim": v}),
                                   node("w3", {"other": {"uuid": "aaaa0000-0000-4000-8000-000000000003"}})],
                            replicas=list(replicas), backing_images=list(bis), **kw)


INSPECTED = {"inspection": {"replicas": [], "backingImages": []}}


def test_scheduling_goes_off_first_and_waits_for_every_victim() -> None:
    w = world({"allow": True})
    a = steps.decide(record(), w, steps.Context())
    assert (a.kind, a.field, a.value) == ("set-flag", "allowScheduling", False)
    a = steps.decide(record(), world(), steps.Context(all_unschedulable=False))
    assert a.kind == "wait" and "other disks" in a.detail


@pytest.mark.parametrize("kw,stuck", [
    ({"waiting": True}, True),
    ({"waiting": True, "last_healthy": True}, False),  # a reused failed replica: data
    ({"waiting": True, "failed": True}, False),
    ({"waiting": True, "running": True}, False),
    ({"waiting": False}, False),  # a rebuilding replica
])
def test_only_replicas_that_never_held_data_are_stuck(kw: dict[str, Any], stuck: bool) -> None:
    r = replica("vol-r-00000001", "w2", OLD, **kw)
    backer = replica("vol-r-00000002", "w3", "aaaa0000-0000-4000-8000-000000000003", healthy=True, running=True)
    found, _ = steps.stuck_replicas(world(replicas=[r, backer]), "w2", OLD)
    assert bool(found) is stuck
    a = steps.decide(record(), world(replicas=[r, backer]), steps.Context())
    assert (a.kind == "delete-replicas") is stuck


def test_a_stuck_replica_without_another_healthy_replica_is_not_deleted() -> None:
    r = replica("vol-r-00000001", "w2", OLD, waiting=True)
    failed_backer = replica("vol-r-00000002", "w3", "aaaa0000-0000-4000-8000-000000000003", healthy=True, failed=True)
    assert steps.stuck_replicas(world(replicas=[r, failed_backer]), "w2", OLD)[0] == []


def test_a_deleted_replica_still_counted_by_longhorn_is_waited_for_not_judged_as_data() -> None:
    a = steps.decide(record(**INSPECTED), world({"scheduled": {"vol-r-gone": 1 << 30}}), steps.Context())
    assert a.kind == "wait" and "recounted" in a.detail


def test_stuck_spec_entries_only_where_the_status_lacks_the_disk() -> None:
    stuck = {"metadata": {"name": "img"}, "spec": {"diskFileSpecMap": {OLD: {}}}, "status": {"diskFileStatusMap": {}}}
    listed = {"metadata": {"name": "img2"}, "spec": {"diskFileSpecMap": {OLD: {}}},
              "status": {"diskFileStatusMap": {OLD: {"state": "ready"}}}}
    a = steps.decide(record(), world(bis=[stuck, listed]), steps.Context())
    assert (a.kind, a.names) == ("drop-spec-entries", ("img",))


def test_data_without_evict_is_blocked_and_with_evict_is_drained() -> None:
    r = replica("vol-r-00000001", "w2", OLD, healthy=True, running=True)
    other = replica("vol-r-00000002", "w1", KEEP, healthy=True, running=True)
    w = world({"scheduled": {"vol-r-00000001": 1 << 30}}, replicas=[r, other])
    a = steps.decide(record(**INSPECTED), w, steps.Context())
    assert a.kind == "block" and "--evict" in a.detail
    a = steps.decide(record(**INSPECTED), w, steps.Context(evict=True, victims=frozenset({("w2", "victim")})))
    assert (a.kind, a.field, a.value) == ("set-flag", "evictionRequested", True)
    evicting = world({"scheduled": {"vol-r-00000001": 1 << 30}, "evict": True}, replicas=[r, other])
    a = steps.decide(record(**INSPECTED), evicting, steps.Context(evict=True))
    assert a.kind == "wait" and "draining" in a.detail


def test_eviction_waits_for_a_place_for_every_replica() -> None:
    # w1 and w3 hold the volume's other replicas: hard anti-affinity leaves no node.
    r = replica("vol-r-00000001", "w2", OLD, healthy=True, running=True)
    others = [replica("vol-r-00000002", "w1", KEEP, healthy=True, running=True),
              replica("vol-r-00000003", "w3", "aaaa0000-0000-4000-8000-000000000003", healthy=True, running=True)]
    w = world({"scheduled": {"vol-r-00000001": 1 << 30}}, replicas=[r, *others])
    ctx = steps.Context(evict=True, victims=frozenset({("w2", "victim")}))
    a = steps.decide(record(**INSPECTED), w, ctx)
    assert a.kind == "pending" and "no disk can take replica vol-r-00000001" in a.detail
    a = steps.decide(record(**INSPECTED), w, steps.Context(evict=True, victims=ctx.victims, soft_anti_affinity=True))
    assert a.kind == "set-flag"
    a = steps.decide(record(**INSPECTED), world({"scheduled": {"vol-r-00000001": 1 << 30}}, replicas=[r, others[0]]),
                     steps.Context(evict=True, victims=ctx.victims, evicting=1, max_parallel=1))
    assert a.kind == "wait" and "--max-parallel" in a.detail


def test_leftovers_orphans_clones_and_shared_filesystems_block() -> None:
    a = steps.decide(record(inspection={"replicas": ["pvc-x-0a1b2c3d"], "backingImages": []}), world(), steps.Context())
    assert a.kind == "block" and "replicas/pvc-x-0a1b2c3d" in a.detail
    orphan = {"metadata": {"name": "orphan-1"}, "spec": {"nodeID": "w2", "parameters": {"DiskUUID": OLD}}}
    assert steps.decide(record(), world(orphans=[orphan]), steps.Context()).kind == "block"
    r = replica("vol-r-00000001", "w2", OLD, healthy=True, running=True)
    a = steps.decide(record(**INSPECTED), world(replicas=[r]), steps.Context(evict=True, clones=frozenset({("w2", "victim")})))
    assert a.kind == "block" and "clone" in a.detail
    shared = world({"ready": False, "why": ("DiskFilesystemChanged", "Disk victim(/mnt/victim) on node w2 is not ready: "
                                                                      "disk has same file system ID 1234 as other disks [victim other]")})
    assert steps.decide(record(), shared, steps.Context()).kind == "block"
    source = {"metadata": {"name": "img"}, "spec": {"diskUUID": OLD, "fileTransferred": False}}
    assert steps.decide(record(**INSPECTED), world(data_sources=[source]), steps.Context()).kind == "block"


def test_identity_change_after_the_inspections_and_only_with_time_left() -> None:
    # never evicted: scheduling has been off since before the one inspection, which stands
    assert steps.decide(record(**INSPECTED), world(), steps.Context()).kind == "rewrite"
    assert steps.decide(record(**INSPECTED), world(), steps.Context(time_for_rewrite=False)).kind == "pending"
    # evicted (by the Job, or by an operator): looked at again once drained
    drained = world({"evict": True})
    for rec in (record(**INSPECTED, setFlags={"evictionRequested": True}), record(**INSPECTED)):
        assert steps.decide(rec, drained, steps.Context()).kind == "inspect"
    both = {**INSPECTED, "finalInspection": {"replicas": [], "backingImages": []}}
    assert steps.decide(record(**both), drained, steps.Context()).kind == "rewrite"
    left = {**INSPECTED, "finalInspection": {"replicas": ["pvc-x-1234abcd"], "backingImages": []}}
    assert steps.decide(record(**left), drained, steps.Context()).kind == "block"


def test_status_already_new_continues_the_rewrite_and_a_third_uuid_blocks() -> None:
    assert steps.decide(record("Draining"), world({"uuid": NEW}), steps.Context()).kind == "follow-rewrite"
    assert steps.decide(record("Draining"), world({"uuid": "eeee0000-0000-4000-8000-000000000009"}),
                        steps.Context()).kind == "block"


def test_restore_only_what_the_job_set_and_only_if_still_its_value() -> None:
    set_both = {"allowScheduling": False, "evictionRequested": True}
    ready_new = world({"uuid": NEW, "evict": True})
    a = steps.decide(record("Restoring", setFlags=set_both), ready_new, steps.Context())
    assert (a.kind, a.field, a.value) == ("restore-flag", "evictionRequested", False)  # eviction first
    a = steps.decide(record("Restoring", setFlags=set_both), world({"uuid": NEW}), steps.Context())
    assert (a.kind, a.field, a.value) == ("restore-flag", "allowScheduling", True)
    # an operator turned scheduling back on meanwhile: nothing to restore, the disk is verified
    a = steps.decide(record("Restoring", setFlags={"allowScheduling": False}), world({"uuid": NEW, "allow": True}),
                     steps.Context())
    assert a.kind == "done"
    # a disk that was unschedulable before the Job: nothing was set, nothing is restored
    rec = record("Restoring")
    rec["spec"]["original"] = {"allowScheduling": False, "evictionRequested": False}
    assert steps.decide(rec, world({"uuid": NEW}), steps.Context()).kind == "done"


def test_done_only_when_nothing_names_the_old_uuid() -> None:
    stale = {"metadata": {"name": "img"}, "spec": {"diskFileSpecMap": {OLD: {}}}, "status": {}}
    a = steps.decide(record("Restoring"), world({"uuid": NEW}, bis=[stale]), steps.Context())
    assert a.kind == "wait" and "img" in a.detail
    assert steps.decide(record("Restoring"), world({"uuid": NEW, "ready": False}), steps.Context()).kind == "wait"


def test_the_old_uuid_recorded_again_over_the_swapped_cfg_is_recorded_new_again() -> None:
    """Restoring (the cfg was swapped) but Longhorn recorded the old UUID again -- its Node object was
    re-created from monitor data older than the swap -- and says the cfg does not match: the status
    half of the change is made again. Any other NotReady reason is waited on, never acted on."""
    mismatch = ("DiskFilesystemChanged", "Disk victim(/mnt/victim) on node w2 is not ready: record diskUUID "
                                         "doesn't match the one on the disk ")
    a = steps.decide(record("Restoring"), world({"uuid": OLD, "ready": False, "why": mismatch}), steps.Context())
    assert (a.kind, a.phase) == ("restatus", "Restoring") and NEW in a.detail
    missing = ("DiskFilesystemChanged", "Disk victim(/mnt/victim) on node w2 is not ready: cannot find disk config "
                                        "file, maybe due to a mount error")
    assert steps.decide(record("Restoring"), world({"uuid": OLD, "ready": False, "why": missing}), steps.Context()).kind == "wait"
    assert steps.decide(record("Restoring"), world({"uuid": OLD}), steps.Context()).kind == "wait"


def test_blocked_and_rolled_back_records_get_their_flags_back() -> None:
    for phase in ("Blocked", "RolledBack"):
        a = steps.decide(record(phase, setFlags={"allowScheduling": False}), world(), steps.Context())
        assert (a.kind, a.field, a.value) == ("restore-flag", "allowScheduling", True)
        done = record(phase, setFlags={"allowScheduling": False, "allowSchedulingRestored": True})
        assert steps.decide(done, world({"allow": True}), steps.Context()).kind == "none"


def test_decide_never_mutates_its_inputs() -> None:
    rec = record(**INSPECTED)
    w = world(replicas=[replica("vol-r-00000001", "w2", OLD, waiting=True)])
    before = (copy.deepcopy(rec), copy.deepcopy(dict(w.nodes)))
    steps.decide(rec, w, steps.Context())
    assert (rec, dict(w.nodes)) == before


def test_a_clone_is_verified_on_its_own_node_only() -> None:
    """After a clone's identity change the old UUID is still the other disk's: replicas Longhorn
    rebuilt there name it legitimately; only one left on the clone's own node keeps it waiting."""
    rec = record("Restoring")
    nodes = [node("w1", {"keeper": {"uuid": OLD}}), node("w2", {"victim": {"uuid": NEW, "allow": True}})]
    on_keeper = World.from_lists(nodes=nodes, replicas=[replica("vol-r-aaaaaaaa", "w1", OLD, healthy=True)])
    assert steps.decide(rec, on_keeper, steps.Context()).kind == "done"
    on_clone = World.from_lists(nodes=nodes, replicas=[replica("vol-r-bbbbbbbb", "w2", OLD, healthy=True)])
    a = steps.decide(rec, on_clone, steps.Context())
    assert a.kind == "wait" and "vol-r-bbbbbbbb still name the old UUID" in a.detail
    # not a clone (no other disk has the old UUID): anything naming it anywhere keeps it waiting
    alone = World.from_lists(nodes=[node("w1", {"keeper": {"uuid": KEEP}}), nodes[1]],
                             replicas=[replica("vol-r-aaaaaaaa", "w1", OLD, healthy=True)])
    assert steps.decide(rec, alone, steps.Context()).kind == "wait"
