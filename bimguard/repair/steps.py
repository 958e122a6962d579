"""The repair's order, as a pure decision: ``decide(record, world, context) -> Action``.

Level-triggered (STYLE "Reconcile"): each call reads what the record says was done and what the
cluster shows now, and names the one next step; the runner (jobs/repair_runner.py) carries it out,
writes the record, and calls again. A Job killed between any two steps re-reads and continues.

The order, for each victim (a disk whose UUID is regenerated; the checks against Longhorn
v1.7.2-v1.9.1 are cited where they apply):

 1. Record and claim (the runner, before this module is asked): the record keeps both UUIDs and
    the disk's original ``allowScheduling`` / ``evictionRequested``.
 2. Scheduling off on every victim, before anything else happens to any of them: the replica
    scheduler and backing-image replenishment skip only disks with scheduling off
    (lm scheduler/replica_scheduler.go:106-123, datastore/longhorn.go:2888).
 3. Delete the *stuck* replicas on the victim (never healthy, never failed, waiting for their
    backing image, never running, and their volume has another healthy replica): they hold no
    data. Wait until they are gone.
 4. Delete the victim from ``spec.diskFileSpecMap`` of every BackingImage whose status does not
    list it (the copy the colliding BIM name never let start; eviction never touches it,
    datastore/longhorn.go:5423; dropping an entry whose status entry exists is what crashes
    v1.7.0-v1.9.0 managers, node_controller.go:1806).
 5. What remains is judged: a data source not transferred, leftover directories (seen by a
    read-only pod, before any eviction: an evicting disk's orphans are neither scanned nor kept,
    disk_monitor.go:356, node_controller.go:1518-1565) or Orphans, a filesystem shared with
    another disk, or a clone holding anything are Blocked. Data (``bimguard.dependents``) is
    Blocked without ``--evict``; with it, the replicas must be able to go elsewhere, then
    ``evictionRequested`` is set and the disk must drain (every signal in ``drained``).
 6. The identity change (bimguard.rewrite.engine): a status JSON Patch that tests the old UUID
    and an empty ``scheduledReplica``, then the rewriter pod's compare-and-swap of the cfg.
 7. Wait for Longhorn to report the disk Ready under the new UUID; restore the flags the Job set
    (``evictionRequested`` first), each only if it still holds the value the Job set.
 8. Verify: no BackingImage spec key and no Replica names the old UUID, the new UUID's BIM name is
    free or this disk's; Done.

Blocked and rolled-back records get their flags restored too. A record that has not started its
identity change when the run's time is up stays where it is (eviction keeps running, flags stay
as set) until the next run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from bimguard.bim import prefix_bim_name
from bimguard.decision import cfg_differs
from bimguard.repair.world import Obj, World, condition, deleting, name_of

# Record phases of a Job record (the webhook's are Pending, Rewriting and the final ones).
PENDING, PREPARING, DRAINING, REWRITING, RESTORING = "Pending", "Preparing", "Draining", "Rewriting", "Restoring"
DONE, BLOCKED, ROLLED_BACK, ABANDONED = "Done", "Blocked", "RolledBack", "Abandoned"
FINAL = frozenset({DONE, ROLLED_BACK, ABANDONED})
SHARED_FS = "disk has same file system ID"


def job_record_name(node: str, disk: str, old_uuid: str) -> str:
    """Deterministic per (node, disk, old UUID), distinct from the webhook's ``r-`` records."""
    return "j-" + hashlib.sha256(f"{node}/{disk}/{old_uuid.lower()}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Action:
    """What the runner does next for one record."""

    kind: str
    detail: str = ""
    names: tuple[str, ...] = ()  # replicas or BackingImages the action is about
    field: str = ""  # spec.disks[d] field to set, for set-flag/restore-flag
    value: bool = False
    phase: str = ""  # the record phase to write with the action


def wait(detail: str, phase: str = "") -> Action:
    return Action("wait", detail, phase=phase)


def pending(detail: str) -> Action:
    """Waiting on something only the cluster or the operator can change (reported as pending)."""
    return Action("pending", detail)


def block(detail: str) -> Action:
    return Action("block", detail)


@dataclass(frozen=True)
class Context:
    """What the decision needs beyond one record: the run's options and the other records."""

    evict: bool = False
    max_parallel: int = 1
    counts_backing_images: bool = False  # Longhorn v1.8+: storageScheduled / scheduledBackingImage
    bim_image: str = ""
    victims: frozenset[tuple[str, str]] = frozenset()  # (node, disk) of every victim of the run
    clones: frozenset[tuple[str, str]] = frozenset()  # victims whose whole UUID another disk has too
    all_unschedulable: bool = True  # step 2 is done for every victim of the run not yet past it
    evicting: int = 0  # victims with evictionRequested set by the Job and not yet drained
    time_for_rewrite: bool = True  # enough of the run's budget left to finish an identity change
    soft_anti_affinity: bool = False  # setting replica-soft-anti-affinity


# ---------------------------------------------------------------------------- checks (pure)
def stuck_replicas(world: World, node: str, uuid: str) -> tuple[list[Obj], list[Obj]]:
    """(stuck, other) replicas on the disk. Stuck: never healthy and never failed (``healthyAt``,
    ``lastHealthyAt`` and ``failedAt`` empty: a reused failed replica has an empty healthyAt but
    still holds data, lm volume_controller.go:2292), waiting for its backing image, never
    started, and its volume has another healthy replica that has not failed."""
    stuck, other = [], []
    for r in world.replicas_on(node, uuid):
        s, st = r.get("spec") or {}, r.get("status") or {}
        waiting = condition(st.get("conditions"), "WaitForBackingImage").get("status") == "True"
        never = not s.get("healthyAt") and not s.get("lastHealthyAt") and not s.get("failedAt")
        idle = st.get("currentState") in (None, "", "stopped") and not st.get("started")
        volume = s.get("volumeName") or ((r.get("metadata") or {}).get("labels") or {}).get("longhornvolume", "")
        backed = any(name_of(x) != name_of(r) and (x.get("spec") or {}).get("healthyAt")
                     and not (x.get("spec") or {}).get("failedAt") and not deleting(x)
                     for x in world.replicas_of_volume(volume))
        (stuck if waiting and never and idle and backed else other).append(r)
    return stuck, other


def stuck_spec_entries(world: World, uuid: str) -> list[Obj]:
    """BackingImages asking for a copy on the disk that never got a status entry."""
    return [bi for bi in world.spec_copies(uuid) if uuid not in ((bi.get("status") or {}).get("diskFileStatusMap") or {})]


def shared_filesystem(world: World, node: str, disk: str) -> str:
    """Longhorn lets only one of the disks on one filesystem be Ready (node_controller.go:740)."""
    n = world.nodes.get(node) or {}
    for name, entry in ((n.get("status") or {}).get("diskStatus") or {}).items():
        msg = str(condition((entry or {}).get("conditions"), "Ready").get("message") or "")
        if SHARED_FS in msg:
            members = msg[msg.rfind("[") + 1:msg.rfind("]")].split()
            if disk in members or name == disk:
                return msg
    return ""


def leftovers(world: World, node: str, uuid: str, inspection: Mapping[str, Any]) -> list[str]:
    """Directories on the disk that no live Replica or BIM of this disk accounts for."""
    expected_replicas = {(r.get("spec") or {}).get("dataDirectoryName") for r in world.replicas_on(node, uuid)
                         if not deleting(r)}
    expected_images = {f"{bi}-{u}" for b in world.bims_on(node, uuid)
                       for bi, u in ((b.get("spec") or {}).get("backingImages") or {}).items()}
    out = [f"replicas/{d}" for d in inspection.get("replicas") or [] if d not in expected_replicas]
    out += [f"backing-images/{d}" for d in inspection.get("backingImages") or [] if d not in expected_images]
    return out


def can_move(world: World, ctx: Context, node: str, uuid: str) -> str:
    """Whether every replica on the disk could be rebuilt on a disk that is not a victim ("" if
    yes, else why not): a Ready, Schedulable, scheduling-allowed, not evicting disk with room for
    it, on a node without another replica of its volume unless replica-soft-anti-affinity is on
    or the node's replicas of the volume are all on victims (the scheduler's "only evicting
    nodes" tier, lm scheduler/replica_scheduler.go:287-352)."""
    for r in world.replicas_on(node, uuid):
        volume = (r.get("spec") or {}).get("volumeName") or ""
        size = int((r.get("spec") or {}).get("volumeSize") or 0)
        holders: dict[str, bool] = {}  # node -> every replica of the volume there is on a victim
        for x in world.replicas_of_volume(volume):
            xn = (x.get("spec") or {}).get("nodeID") or ""
            on_victim = any((xn, d.name) in ctx.victims for d in world.v1_disks()
                            if d.node == xn and d.uuid == str((x.get("spec") or {}).get("diskID") or "").lower())
            holders[xn] = holders.get(xn, True) and on_victim
        if not any(_fits(world, ctx, n, name, holders, size) for n in world.nodes
                   for name in ((world.nodes[n].get("spec") or {}).get("disks") or {})):
            return (f"no disk can take replica {name_of(r)} of volume {volume}: every Ready and Schedulable disk is "
                    f"full, evicting, a victim, or on a node holding a replica of {volume} "
                    f"(replica-soft-anti-affinity is {'on' if ctx.soft_anti_affinity else 'off'})")
    return ""


def _fits(world: World, ctx: Context, node: str, disk: str, holders: Mapping[str, bool], size: int) -> bool:
    n = world.nodes[node]
    if (node, disk) in ctx.victims or not world.node_ready(node) or not (n.get("spec") or {}).get("allowScheduling", True):
        return False
    if condition((n.get("status") or {}).get("conditions"), "Schedulable").get("status") != "True":
        return False
    spec, entry = world.disk_spec(node, disk) or {}, world.disk_status(node, disk) or {}
    if not spec.get("allowScheduling") or spec.get("evictionRequested") or (spec.get("diskType") or "filesystem") != "filesystem":
        return False
    if condition(entry.get("conditions"), "Schedulable").get("status") != "True":
        return False
    if node in holders and not holders[node] and not ctx.soft_anti_affinity:
        return False
    room = int(entry.get("storageAvailable") or 0) - int(spec.get("storageReserved") or 0)
    return room >= size


def drained(world: World, ctx: Context, node: str, disk: str, uuid: str) -> str:
    """"" when every drained signal holds for the disk, else the first that does not."""
    entry = world.disk_status(node, disk) or {}
    if entry.get("scheduledReplica"):
        return f"{len(entry['scheduledReplica'])} replica(s) still scheduled on the disk"
    if int(entry.get("storageScheduled") or 0) != 0:
        return f"storageScheduled is {entry.get('storageScheduled')}"
    if ctx.counts_backing_images and entry.get("scheduledBackingImage"):
        return f"backing images still scheduled: {', '.join(sorted(entry['scheduledBackingImage']))}"
    reps = world.replicas_naming(uuid)
    if reps:
        return f"replica(s) {', '.join(sorted(name_of(r) for r in reps))} still name the disk"
    copies = {name_of(bi) for bi in world.spec_copies(uuid) + world.status_copies(uuid)}
    if copies:
        return f"backing image(s) {', '.join(sorted(copies))} still list the disk"
    bims = world.bims_on(node, uuid)
    if bims:
        return f"backing image manager(s) {', '.join(sorted(name_of(b) for b in bims))} still serve the disk"
    if world.untransferred_sources(uuid):
        return "a backing-image data source is still on the disk"
    return ""


def stall_reason(world: World, node: str, uuid: str) -> str:
    """Longhorn's own reason an eviction does not progress: a volume's Scheduled condition."""
    for r in world.replicas_on(node, uuid):
        volume = world.volumes.get((r.get("spec") or {}).get("volumeName") or "") or {}
        cond = condition((volume.get("status") or {}).get("conditions"), "Scheduled")
        if cond.get("status") == "False":
            return (f"volume {name_of(volume)}: Scheduled=False {cond.get('reason') or ''}"
                    f"{': ' + cond['message'] if cond.get('message') else ''}")
    return ""


# ---------------------------------------------------------------------------- the decision
def decide(rec: Mapping[str, Any], world: World, ctx: Context) -> Action:
    spec, st = rec.get("spec") or {}, rec.get("status") or {}
    phase = st.get("phase") or PENDING
    node, disk, old, new = spec["node"], spec["disk"], spec["oldUUID"], spec["newUUID"]
    set_flags = st.get("setFlags") or {}
    if phase in FINAL:
        return _restore(world, node, disk, set_flags, spec) or Action("none")
    if phase == BLOCKED:
        return _restore(world, node, disk, set_flags, spec) or Action("none")
    dspec, entry = world.disk_spec(node, disk), world.disk_status(node, disk)
    if phase in (REWRITING,):
        return Action("follow-rewrite")
    if phase == RESTORING:
        return _restoring(world, ctx, rec)
    # -- before the identity change: the disk must still be the one recorded
    if dspec is None or entry is None:
        return block(f"disk {disk} is no longer on node {node}")
    if (entry.get("diskUUID") or "") != old:
        if (entry.get("diskUUID") or "") == new:
            return Action("follow-rewrite", "the status already holds the new UUID", phase=REWRITING)
        return block(f"the disk's recorded UUID is {entry.get('diskUUID') or 'empty'} now, not {old}")
    if not world.node_ready(node):
        return pending(f"node {node} is not Ready")
    if not world.disk_ready(node, disk):
        reason = condition(entry.get("conditions"), "Ready")
        why = shared_filesystem(world, node, disk)
        if why:
            return block(f"the disk shares its filesystem with another disk of the node ({why}); Longhorn keeps "
                         "only one of them Ready")
        return pending(f"the disk is not Ready ({reason.get('reason') or 'no reason'}: {reason.get('message') or ''})")
    # 2. scheduling off
    if dspec.get("allowScheduling"):
        if dspec.get("evictionRequested"):
            return block("the disk has evictionRequested with scheduling on, which Longhorn refuses; fix the disk first")
        return Action("set-flag", "turn scheduling off", field="allowScheduling", value=False, phase=PREPARING)
    if phase in (PENDING, PREPARING) and not ctx.all_unschedulable:
        return wait("scheduling is being turned off on the other disks of this run", phase=PREPARING)
    # 3. stuck replicas
    stuck, _ = stuck_replicas(world, node, old)
    live = [r for r in stuck if not deleting(r)]
    if live:
        return Action("delete-replicas", "delete replicas stuck waiting for their backing image",
                      names=tuple(sorted(name_of(r) for r in live)), phase=PREPARING)
    if stuck:
        return wait(f"stuck replica(s) {', '.join(sorted(name_of(r) for r in stuck))} being deleted", phase=PREPARING)
    # 4. stuck spec entries (never one a data source keeps: it would only come back)
    entries = [bi for bi in stuck_spec_entries(world, old) if not world.untransferred_sources(old)]
    if entries:
        return Action("drop-spec-entries", "delete the disk from backing images that never got a copy there",
                      names=tuple(sorted(name_of(bi) for bi in entries)), phase=PREPARING)
    # 5. what remains
    if world.untransferred_sources(old):
        names = ", ".join(sorted(name_of(s) for s in world.untransferred_sources(old)))
        return block(f"backing-image data source {names} has not transferred its file off this disk; Longhorn's "
                     "eviction never moves it")
    clone = (node, disk) in ctx.clones
    gone = set(entry.get("scheduledReplica") or {}) - {name_of(r) for r in world.replicas}
    if gone:
        # The node controller recounts the disk's replicas on its next sync (node_controller.go:849-869).
        return wait(f"Longhorn has not recounted the disk's replicas yet ({', '.join(sorted(gone))} deleted)",
                    phase=PREPARING)
    deps = world.dependents(node, disk)
    orphans = world.orphans_on(node, old)
    if orphans:
        return block(f"{len(orphans)} orphaned replica director{'y' if len(orphans) == 1 else 'ies'} on the disk "
                     f"(Orphan {', '.join(sorted(name_of(o) for o in orphans))}): changing the UUID would let "
                     "orphan auto-deletion delete them")
    inspection = st.get("inspection")
    if inspection is None:
        return Action("inspect", "list the disk's replicas/ and backing-images/ directories", phase=DRAINING)
    # Judged against the replicas of the moment, so only until the eviction starts: from then on
    # the directories of evicted replicas go (or linger) as Longhorn deletes their replicas, and
    # the inspection of the drained disk below is the one that counts.
    extra = leftovers(world, node, old, inspection) if not dspec.get("evictionRequested") else []
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return block(f"leftover directories on the disk ({shown}): their data would become orphans")
    holds = deps.holds_data or bool(world.replicas_on(node, old))
    if holds and clone:
        return block(f"a clone (another disk has the same whole UUID) holding {deps.describe()}: Longhorn selects "
                     "replicas and BIMs by UUID, so evicting it would flag the other disk's data too")
    if holds:
        if not ctx.evict and not dspec.get("evictionRequested"):
            return block(f"holds {deps.describe()}; run the repair with --evict to drain it through Longhorn's eviction")
        if not dspec.get("evictionRequested"):
            why = can_move(world, ctx, node, old)
            if why:
                return pending(why)
            if ctx.evicting >= ctx.max_parallel:
                return wait(f"{ctx.evicting} eviction(s) running (--max-parallel {ctx.max_parallel})", phase=DRAINING)
            return Action("set-flag", "request Longhorn's eviction of the disk", field="evictionRequested", value=True,
                          phase=DRAINING)
    left = drained(world, ctx, node, disk, old)
    if left:
        stall = stall_reason(world, node, old)
        return pending(f"draining: {left}" + (f"; {stall}" if stall else "")) if stall else \
            wait(f"draining: {left}", phase=DRAINING)
    # 6. the identity change. A disk that was never evicted has had scheduling off since before its
    # inspection: Longhorn schedules no replica and replenishes no copy onto it, so nothing can have
    # arrived since and that inspection stands. An evicted disk is looked at again once drained.
    evicted = bool(set_flags.get("evictionRequested") or dspec.get("evictionRequested"))
    if evicted and not st.get("finalInspection"):
        return Action("inspect", "check the disk is empty before its UUID changes", phase=DRAINING)
    extra = leftovers(world, node, old, st["finalInspection"]) if evicted else []
    if extra:
        return block(f"directories left on the drained disk ({', '.join(extra[:5])}): not changing its UUID")
    if not ctx.time_for_rewrite:
        return pending("not enough of the run's time left to start the identity change; the next run continues")
    return Action("rewrite", f"status {old} -> {new}, then the cfg", phase=REWRITING)


def _restoring(world: World, ctx: Context, rec: Mapping[str, Any]) -> Action:
    spec, st = rec["spec"], rec.get("status") or {}
    node, disk, old, new = spec["node"], spec["disk"], spec["oldUUID"], spec["newUUID"]
    entry = world.disk_status(node, disk)
    if entry is None:
        return wait("the disk is not in the node's status")
    if (entry.get("diskUUID") or "") == old and cfg_differs(dict(entry)):
        # The cfg holds the new UUID (this record's compare-and-swap said so before Restoring), yet
        # Longhorn recorded the old one again: the Longhorn Node was deleted and created again
        # after the swap, and its node controller records what its disk monitor last collected
        # (node_controller.go:450-456,745 @v1.7.2), collected before the swap: polls fail while
        # the Node is missing (controller/monitor/disk_monitor.go:98-101,132-136). Longhorn never
        # corrects a recorded UUID, so the status half of the change is made again.
        return Action("restatus", f"Longhorn recorded {old} again while the cfg holds {new}; recording {new} again",
                      phase=RESTORING)
    if (entry.get("diskUUID") or "") != new or not world.disk_ready(node, disk):
        return wait(f"waiting for Longhorn to report the disk Ready with {new}")
    restore = _restore(world, node, disk, st.get("setFlags") or {}, spec)
    if restore is not None:
        return restore
    if any(d.uuid == old.lower() and (d.node, d.name) != (node, disk) for d in world.v1_disks()):
        # A clone: the old UUID is still the other disk's, and so are the replicas and copies that
        # name it (Longhorn may even have rebuilt a replica there meanwhile); only this node's count.
        names = [name_of(r) for r in world.replicas_naming(old) if (r.get("spec") or {}).get("nodeID") == node]
    else:
        names = [name_of(bi) for bi in world.spec_copies(old)] + [name_of(r) for r in world.replicas_naming(old)]
    if names:
        return wait(f"{', '.join(sorted(names))} still name the old UUID")
    if ctx.bim_image:
        bim = world.bim_named(prefix_bim_name(ctx.bim_image, new[:4]))
        owner = str(((bim or {}).get("spec") or {}).get("diskUUID") or "").lower()
        if bim is not None and owner != new.lower():
            return block(f"the new UUID's BIM name {name_of(bim)} belongs to disk UUID {owner}")
    return Action("done", f"diskUUID {old} -> {new}; verified")


def _restore(world: World, node: str, disk: str, set_flags: Mapping[str, Any], spec: Mapping[str, Any]) -> Action | None:
    """Undo what the Job set, evictionRequested first, each only while it holds the Job's value
    (an operator's change made meanwhile wins)."""
    dspec = world.disk_spec(node, disk)
    if dspec is None:
        return None
    original = spec.get("original") or {}
    for fld in ("evictionRequested", "allowScheduling"):
        if fld in set_flags and not set_flags.get(f"{fld}Restored") and dspec.get(fld) == set_flags[fld]:
            target = bool(original.get(fld, not set_flags[fld]))
            if target != set_flags[fld]:
                return Action("restore-flag", f"restore {fld}={str(target).lower()}", field=fld, value=target)
    return None


@dataclass
class Summary:
    """Counts for the report and the exit code."""

    done: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
