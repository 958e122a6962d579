"""The rewrite engine: one implementation of each step that changes a disk's UUID, shared by the
admission webhook's controller and the repair Job.

A DiskRewrite record (bimguard.records) names the disk, the old and the new UUID. Once the stored
Longhorn Node status holds the new UUID, the steps here finish the change (docs/design.md,
invariants 2, 4, 8):

    begin     Rewriting, attempt 1, a rewriter pod on the disk's node (bimguard.rewrite.pod)
    advance   pod Succeeded (exit 0: the compare-and-swap's own word) -> "swapped": the caller
              finishes (the webhook: Done; the Job: restores the scheduling flags first)
              pod exit 2/3/4 (usage, refused, cfg missing) -> roll the status back -> RolledBack
              pod exit 1 or killed -> a new pod, up to `max_attempts`
              pod never started within `pod_start_timeout` -> delete it, unless `wait_for_node`
              says the node is not Ready: then wait (its kubelet may yet run the pod; the swap
              is idempotent, a rollback under a swapped cfg is not)
              Once a pod has ended without a word -- exit 1, killed, or an attempt after one
              that was -- the cfg may already hold the new UUID (a pod killed between its rename
              and its exit). Then nothing is rolled back on a guess: a read-only check pod
              (`rewrite-cfg --check`) says what the cfg holds -> "swapped" if the new UUID, a
              rollback if anything else, another check later if it cannot tell either.
    roll_back a JSON Patch on nodes/<node>/status whose `test` requires the new UUID, so it never
              overwrites anything but the record's own change
    finish    Event first (deterministic name), then the final phase; claims of rolled-back and
              abandoned records are released

Who drives a record: exactly one process at a time. The webhook's controller drives only records
with `spec.origin: webhook`, and only in the replica holding the `bimguard-controller` Lease; the
repair Job drives only `origin: job` records, and only while it holds the `bimguard-repair` Lease
(one Job at a time). Both call `act()` before every write, which raises once their Lease is lost,
so a process that lost its turn stops mid-pass. Record names differ by origin (`r-...` for the
webhook, `j-...` for the Job), so neither can create the other's record.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import msgspec

from bimguard import records
from bimguard.decision import rewrite_patch
from bimguard.decode import add_object
from bimguard.dependents import Dependents, DependentsIndex
from bimguard.inventory import Inventory
from bimguard.kube import EVENTS, PODS, AlreadyExists, Conflict, Invalid, Kube, KubeError, NotFound, Resource
from bimguard.model import LABEL_BIM_DISK_UUID, LABEL_REPLICA_DISK_UUID, Disk, DiskType
from bimguard.rewrite.pod import CHECK, DEFAULT_ACTIVE_DEADLINE, DEFAULT_COMMAND, DEFAULT_SERVICE_ACCOUNT, LABEL_RECORD, \
    REWRITE, SELECTOR, pod_name, rewriter_pod
from bimguard.rewrite_cfg import EXIT_MISSING, EXIT_REFUSED, EXIT_USAGE

log = logging.getLogger("bimguard.rewrite")

REWRITES = Resource(records.GROUP, records.VERSION, records.REWRITES)
CLAIMS = Resource(records.GROUP, records.VERSION, records.CLAIMS)
LONGHORN_GROUP, LONGHORN_VERSION = "longhorn.io", "v1beta2"
LH_NODES = Resource(LONGHORN_GROUP, LONGHORN_VERSION, "nodes")
LH_REPLICAS = Resource(LONGHORN_GROUP, LONGHORN_VERSION, "replicas")
LH_BIMS = Resource(LONGHORN_GROUP, LONGHORN_VERSION, "backingimagemanagers")
LH_BACKING_IMAGES = Resource(LONGHORN_GROUP, LONGHORN_VERSION, "backingimages")

# Outcomes a retry cannot change (bimguard.rewrite_cfg's exit codes).
PERMANENT_EXITS = frozenset({EXIT_USAGE, EXIT_REFUSED, EXIT_MISSING})

REASON_DONE = "DiskUUIDRewritten"
REASON_ROLLED_BACK = "DiskUUIDRolledBack"
REASON_ABANDONED = "DiskUUIDRewriteAbandoned"

SWAPPED, WAITING, FINAL = "swapped", "waiting", "final"


@dataclass(frozen=True)
class Settings:
    """Timings in seconds. The defaults suit a real cluster; tests shrink them."""

    service_account: str = DEFAULT_SERVICE_ACCOUNT
    command: tuple[str, ...] = DEFAULT_COMMAND
    priority_class_name: str | None = None
    # Where the on-node pods run: a namespace of their own, the only privileged one (docs/security.md);
    # None = the records' namespace (a plain `bimguard` run against a test cluster).
    pod_namespace: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    tolerations: tuple[dict[str, Any], ...] | None = None  # None: every taint (bimguard.rewrite.pod)
    # How long after the record's creation the admission patch may take to show up in the stored
    # status. Well above the webhook timeout (5 s) plus longhorn-manager's write.
    pending_grace: float = 30.0
    # A rewriter pod still Pending after this is taken to never run (node down or gone).
    pod_start_timeout: float = 120.0
    active_deadline: int = DEFAULT_ACTIVE_DEADLINE
    max_attempts: int = 3
    resync: float = 5.0
    gc_interval: float = 60.0
    gc_grace: float = 600.0  # age before an unreferenced PrefixClaim is deleted
    late_landing_window: float = 600.0  # how long Abandoned records are watched for a late patch
    check_interval: float = 30.0  # between two check pods that could not tell what the cfg holds
    retention: float | None = None  # delete final records this long after finishing; None = keep


def parse_time(value: str | None) -> float | None:
    """RFC 3339 (seconds or fractions, as the API server and we write it) -> POSIX seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def written_no_earlier_than(value: str | None) -> float | None:
    """The latest moment a timestamp can stand for. `creationTimestamp` has whole seconds (the
    API server truncates), so an object stamped 12:00:00Z may be 0.99 s younger than that; a
    grace period measured from it must not come out shorter than configured."""
    t = parse_time(value)
    if t is None or value is None:
        return None
    return t if "." in value else t + 1.0


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pointer_token(key: str) -> str:
    """RFC 6901: `~` -> `~0`, `/` -> `~1` (in that order)."""
    return key.replace("~", "~0").replace("/", "~1")


def rollback_patch(disk: str, old_uuid: str, new_uuid: str, message: str, now: str) -> list[dict[str, Any]]:
    """JSON Patch putting `old_uuid` back, only if the stored status still holds `new_uuid`. The
    conditions become bimguard's own (NotReady until Longhorn's next sync judges status == cfg
    again): a Longhorn verdict about the new UUID -- "record diskUUID doesn't match the one on the
    disk" -- left beside the old one would read as a verdict about it (decision.cfg_differs)."""
    path = f"/status/diskStatus/{pointer_token(disk)}/diskUUID"
    return [{"op": "test", "path": path, "value": new_uuid}, *rewrite_patch(disk, old_uuid, (), message, now)]


class DiskPathRefused(KubeError):
    """No on-node pod for a record whose disk path is not the one the Longhorn Node gives the disk."""

    def __init__(self, message: str) -> None:
        super().__init__(422, "DiskPathRefused", message)


def disk_path_refusal(node: dict[str, Any] | None, spec: dict[str, Any]) -> str:
    """"" when `spec.diskPath` is the path the stored Longhorn Node's `spec.disks[spec.disk]` names
    (a trailing slash aside: Longhorn's default disk is `/var/lib/longhorn/`); otherwise why no
    privileged pod may mount it. The record's path came from an admission review or a snapshot;
    the Node in the API server is what longhorn-manager itself mounts, so a forged or stale record
    never gets a hostPath on anything else. A ValidatingAdmissionPolicy cannot make this check
    (it cannot read the Node): this is where it is made (docs/security.md)."""
    if node is None:
        return f"Longhorn node {spec.get('node')} not found"
    disk = ((node.get("spec") or {}).get("disks") or {}).get(spec.get("disk", ""))
    if not isinstance(disk, dict):
        return f"disk {spec.get('disk')} is not in spec.disks of Longhorn node {spec.get('node')}"
    want, have = str(disk.get("path") or ""), str(spec.get("diskPath") or "")

    def trimmed(path: str) -> str:
        return path[:-1] if path.endswith("/") else path

    if not want.startswith("/") or not trimmed(have) or trimmed(have) != trimmed(want):
        return (f"the record's disk path {have!r} is not the path {want!r} that Longhorn node {spec.get('node')} "
                f"gives disk {spec.get('disk')}")
    return ""


def phase_of(rec: dict[str, Any]) -> str:
    return (rec.get("status") or {}).get("phase") or "Pending"


def termination(pod: dict[str, Any]) -> tuple[int | None, str]:
    """(exit code, termination message) of the pod's container; (None, pod reason) if it never ran."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term.get("exitCode"), str(term.get("message") or term.get("reason") or "").strip()
    return None, str(status.get("message") or status.get("reason") or "").strip()


def _started(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "", "Pending"):
        return True
    return any(("running" in (cs.get("state") or {}) or "terminated" in (cs.get("state") or {}))
               for cs in status.get("containerStatuses") or [])


class RewriteEngine:
    """The steps of a UUID change for one process (see the module docstring).

    `act()` is called before every write (raise to stop); `on_transition(record, old, new)` after
    every phase change this process writes; `wait_for_node(node) -> bool` (optional) says whether
    a pod that has not started must be waited for rather than given up on.
    """

    def __init__(self, kube: Kube, namespace: str, longhorn_namespace: str, image: str, *, settings: "Settings",
                 component: str, act: Callable[[], None] = lambda: None,
                 on_transition: Callable[[str, str, str], None] | None = None,
                 wait_for_node: Callable[[dict[str, Any] | None], bool] | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.pod_namespace = settings.pod_namespace or namespace
        self.longhorn_namespace = longhorn_namespace
        self.image = image
        self.settings = settings
        self.component = component
        self.act = act
        self.on_transition = on_transition
        self.wait_for_node = wait_for_node
        self._warned: set[str] = set()

    async def begin(self, rec: dict[str, Any], message: str) -> dict[str, Any]:
        """Rewriting with attempt 1 and its pod; only once the stored status holds the new UUID, and
        only for the disk path the stored Node gives the disk (else: rolled back, no pod)."""
        self.act()
        node, _ = await self.disk(rec["spec"])
        why = disk_path_refusal(node, rec["spec"])
        if why:
            await self.roll_back(rec, f"{why}; no pod created")
            return rec
        updated = await self.write_status(rec, phase="Rewriting", attempts=1, pod=pod_name(rec["metadata"]["name"], 1),
                                          startedAt=self.kube.clock.rfc3339(), message=message)
        await self.create_pod(updated, 1)
        return updated

    async def advance(self, rec: dict[str, Any]) -> str:
        """The Rewriting step: SWAPPED (the caller finishes), WAITING, or FINAL (rolled back or
        abandoned here)."""
        st = rec.get("status") or {}
        name = rec["metadata"]["name"]
        attempt = max(1, int(st.get("attempts") or 1))
        pname = st.get("pod") or pod_name(name, attempt)
        checking = pname == pod_name(name, attempt, CHECK)
        pod = await self.kube.get_or_none(PODS, self.pod_namespace, pname)
        if pod is None:
            return await self._pod_missing(rec, attempt, checking)
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        code, message = termination(pod)
        if phase == "Succeeded" or (phase == "Failed" and code == 0):
            # Exit 0 is the compare-and-swap's own word that the cfg holds the new UUID (a check
            # pod's too), even when the pod was marked Failed around it (activeDeadlineSeconds
            # racing the exit).
            return SWAPPED
        if phase == "Failed":
            what = f"{'check' if checking else 'rewriter'} pod {pname} failed" + (
                f" with exit {code}" if code is not None else "") + (f": {message}" if message else "")
            if code in PERMANENT_EXITS:
                # The cfg was read and does not hold the new UUID: the status goes back.
                await self.roll_back(rec, what)
                return FINAL
            if not checking and attempt < self.settings.max_attempts:
                return await self._retry(rec, pod, attempt, what)
            return await self._check(rec, pod, attempt, what)
        if not _started(pod):
            age = self.kube.clock.age(pod["metadata"].get("creationTimestamp"))
            if age is None or age < self.settings.pod_start_timeout:
                return WAITING
            if self.wait_for_node is not None:
                node, _ = await self.disk(rec["spec"])
                if self.wait_for_node(node):
                    self._warn_once(pname, f"record {name}: pod {pname} has not started and node "
                                           f"{rec['spec']['node']} is not Ready; waiting for it")
                    return WAITING
            # Delete first: a pod that could still start after a rollback would write the new
            # UUID under a status that holds the old one. Force-deleted, the kubelet of a node
            # that comes back finds no pod to start.
            self.act()
            await self.kube.delete(PODS, self.pod_namespace, pname, grace_period_seconds=0)
            why = f"pod {pname} did not start within {self.settings.pod_start_timeout:g}s (node down or gone?)"
            if attempt == 1 and not checking:
                await self.roll_back(rec, f"rewriter {why}")  # no pod ever ran: the cfg is untouched
                return FINAL
            return await self._check(rec, None, attempt, why)
        age = self.kube.clock.age(pod["metadata"].get("creationTimestamp"))
        overdue = self.settings.pod_start_timeout + self.settings.active_deadline + 60
        if age is not None and age > overdue:
            # Running past its deadline means its node stopped reporting. Whether the cfg was
            # written is unknown, so neither outcome is safe to assume: wait for the node.
            self._warn_once(pname, f"record {name}: pod {pname} still {phase} after {int(overdue)}s; "
                                   "waiting for its node to report")
        return WAITING

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    async def _pod_missing(self, rec: dict[str, Any], attempt: int, checking: bool = False) -> str:
        """Rewriting but no pod: the controller stopped between the status write and the create
        (or someone deleted the pod). Re-create it only while the stored status holds the new UUID."""
        spec = rec["spec"]
        node, entry = await self.disk(spec)
        if entry is None or entry.get("diskUUID") != spec["newUUID"]:
            return await self._status_moved(rec, node, entry, "before the rewriter ran")
        pname = pod_name(rec["metadata"]["name"], attempt, CHECK if checking else REWRITE)
        try:
            await self.create_pod(rec, attempt, check=checking)
            return WAITING
        except KubeError as exc:
            # Quota, admission policy, a missing service account: retried every pass, and
            # rolled back once it has failed for as long as a pod may take to start -- unless a
            # pod already ran without a word: then only a check may decide.
            since = self.kube.clock.age((rec.get("status") or {}).get("updatedAt"))
            if since is None or since < self.settings.pod_start_timeout:
                raise
            if checking or attempt > 1:
                self._warn_once(pname, f"record {rec['metadata']['name']}: could not create pod {pname}: {exc}; "
                                       "the cfg may hold either UUID, so nothing is rolled back until a check runs")
                raise
            await self.roll_back(rec, f"could not create rewriter pod {pname}: {exc}")
            return FINAL

    async def _status_moved(self, rec: dict[str, Any], node: dict[str, Any] | None, entry: dict[str, Any] | None,
                            when: str) -> str:
        """The stored status no longer holds the record's new UUID: nothing of ours to finish."""
        spec = rec["spec"]
        current = (entry or {}).get("diskUUID") or ""
        if entry is not None and current == spec["oldUUID"]:
            await self.finish(rec, "RolledBack", f"the stored status holds {spec['oldUUID']} again {when}; "
                                                 "cfg not rewritten by this attempt", "Warning", REASON_ROLLED_BACK)
            return FINAL
        where = "node gone" if node is None else "disk gone from the node status" if entry is None else \
            f"the stored status holds {current}"
        await self.finish(rec, "Abandoned", f"{where} {when}; Longhorn records the cfg's UUID "
                                            f"when the disk comes back", "Warning", REASON_ABANDONED)
        return FINAL

    async def _retry(self, rec: dict[str, Any], pod: dict[str, Any], attempt: int, why: str) -> str:
        spec = rec["spec"]
        node, entry = await self.disk(spec)
        if entry is None or entry.get("diskUUID") != spec["newUUID"]:
            return await self._status_moved(rec, node, entry, "before the rewriter ran")  # never write blindly
        self.act()
        nxt = attempt + 1
        updated = await self.write_status(rec, attempts=nxt, pod=pod_name(rec["metadata"]["name"], nxt), lastError=why,
                                           message=f"attempt {nxt} of {self.settings.max_attempts}")
        await self.create_pod(updated, nxt)
        await self.kube.delete(PODS, self.pod_namespace, pod["metadata"]["name"])
        return WAITING

    async def _check(self, rec: dict[str, Any], pod: dict[str, Any] | None, attempt: int, why: str) -> str:
        """A pod ended without saying what the cfg holds, after an attempt that may have renamed
        it. A rollback now could put the old UUID back over a cfg that holds the new one -- a
        disagreement Longhorn never resolves (it never rewrites an existing cfg,
        controller/monitor/disk_utils.go:148-151 @v1.7.2). So a read-only check pod looks first
        (its outcome is handled like any pod's by `advance`), and a check that cannot tell is
        followed by another one after `check_interval`."""
        spec = rec["spec"]
        name = rec["metadata"]["name"]
        node, entry = await self.disk(spec)
        if entry is None or entry.get("diskUUID") != spec["newUUID"]:
            return await self._status_moved(rec, node, entry, "while the cfg was being rewritten")
        if pod is not None and pod["metadata"]["name"] == pod_name(name, attempt, CHECK):
            since = self.kube.clock.age((rec.get("status") or {}).get("updatedAt"))
            if since is not None and since < self.settings.check_interval:
                return WAITING
        self.act()
        nxt = attempt + 1
        updated = await self.write_status(
            rec, attempts=nxt, pod=pod_name(name, nxt, CHECK), lastError=why,
            message=f"{why}; the cfg may already hold {spec['newUUID']}: checking what it holds before anything "
                    "is rolled back")
        await self.create_pod(updated, nxt, check=True)
        if pod is not None:
            await self.kube.delete(PODS, self.pod_namespace, pod["metadata"]["name"])
        log.warning("record %s: %s; checking what the cfg holds (pod %s)", name, why, pod_name(name, nxt, CHECK))
        return WAITING

    async def roll_back(self, rec: dict[str, Any], why: str) -> None:
        """Put the old UUID back into the stored status (only over our new one), then RolledBack."""
        spec = rec["spec"]
        self.act()
        try:
            await self.kube.json_patch_status(LH_NODES, self.longhorn_namespace, spec["node"],
                                              rollback_patch(spec["disk"], spec["oldUUID"], spec["newUUID"],
                                                             f"bimguard put {spec['oldUUID']} back: {why}", now_rfc3339()))
            phase, outcome = "RolledBack", f"status {spec['newUUID']} -> {spec['oldUUID']}"
        except (Invalid, NotFound):
            # The test op failed or the node is gone: see what is there now (a re-run after a
            # crash finds its own rollback already applied).
            node, entry = await self.disk(spec)
            current = (entry or {}).get("diskUUID") or ""
            if entry is not None and current == spec["oldUUID"]:
                phase, outcome = "RolledBack", f"status already holds {spec['oldUUID']}"
            elif node is None:
                phase, outcome = "Abandoned", "node gone, nothing to roll back"
            elif entry is None:
                phase, outcome = "Abandoned", "disk gone from the node status, nothing to roll back"
            else:
                phase, outcome = "Abandoned", f"status holds {current or 'no UUID'}, left alone"
        reason = REASON_ROLLED_BACK if phase == "RolledBack" else REASON_ABANDONED
        text = (f"disk {spec['disk']} ({spec['diskPath']}) on node {spec['node']}: kept diskUUID {spec['oldUUID']} "
                f"instead of {spec['newUUID']} ({outcome}): {why}; the collision is left to the repair Job")
        await self.finish(rec, phase, f"{why}; {outcome}", "Warning", reason, event_message=text, last_error=why)

    async def finish(self, rec: dict[str, Any], phase: str, message: str, event_type: str, reason: str, *,
                      event_message: str | None = None, last_error: str | None = None) -> None:
        """Event first (deterministic name: a re-run does not duplicate it), then the final phase."""
        self.act()
        spec = rec["spec"]
        await self.event(rec, event_type, reason, event_message or
                          f"disk {spec['disk']} on node {spec['node']}, {spec['oldUUID']} -> {spec['newUUID']}: {message}")
        fields: dict[str, Any] = {"phase": phase, "message": message, "finishedAt": self.kube.clock.rfc3339()}
        if last_error:
            fields["lastError"] = last_error
        updated = await self.write_status(rec, **fields)
        log.info("record %s: %s: %s", rec["metadata"]["name"], phase, message)
        if phase in ("Abandoned", "RolledBack"):
            await self.release_claim(updated, None)
        await self.delete_pods_of(rec["metadata"]["name"])

    async def release_claim(self, rec: dict[str, Any], claims: dict[str, dict[str, Any]] | None) -> None:
        """Delete the claim on the new prefix if this record made it (compare-and-delete by RV)."""
        spec = rec["spec"]
        prefix = spec["newUUID"][:4].lower()
        claim = (claims or {}).get(prefix) if claims is not None else \
            await self.kube.get_or_none(CLAIMS, self.namespace, prefix)
        if claim is None:
            return
        cspec = claim.get("spec") or {}
        if cspec.get("record") != rec["metadata"]["name"] or str(cspec.get("uuid", "")).lower() != spec["newUUID"].lower():
            return
        self.act()
        try:
            await self.kube.delete(CLAIMS, self.namespace, prefix, resource_version=claim["metadata"]["resourceVersion"])
        except Conflict:
            return  # changed since read: the next pass looks again
        if claims is not None:
            claims.pop(prefix, None)
        log.info("record %s: released prefix claim %s", rec["metadata"]["name"], prefix)

    async def data_under_old_uuid(self, node: dict[str, Any], spec: dict[str, Any]) -> str:
        """What on this node still refers to the old UUID ("" if nothing): Replicas, BIMs, backing-
        image copies, scheduled replicas, judged by `Dependents.holds_data` (docs/design.md,
        invariant 3). Other disks that record the same whole UUID (the original of a clone) are
        counted, so that backing-image copies are judged as for any cloned UUID."""
        old, new = spec["oldUUID"].lower(), spec["newUUID"].lower()
        # Label values are compared exactly, and Longhorn labels Replicas and BIMs with the UUID as
        # recorded (datastore/longhorn.go:3132, types/types.go:534-539 @v1.7.2): select that too.
        olds = ",".join(sorted({spec["oldUUID"], old}))
        ns = self.longhorn_namespace
        inv = Inventory()
        sources = (
            (LH_REPLICAS, "Replica", f"{LABEL_REPLICA_DISK_UUID} in ({olds},{new})"),
            (LH_BIMS, "BackingImageManager", f"{LABEL_BIM_DISK_UUID} in ({olds},{new})"),
            (LH_BACKING_IMAGES, "BackingImage", None),
        )
        for res, kind, selector in sources:
            for obj in await self.kube.items(res, ns, selector):
                obj.setdefault("apiVersion", f"{LONGHORN_GROUP}/{LONGHORN_VERSION}")
                obj.setdefault("kind", kind)
                add_object(obj, "live", inv)
        entry = ((node.get("status") or {}).get("diskStatus") or {}).get(spec["disk"]) or {}
        disk = Disk(node=spec["node"], name=spec["disk"], path=spec.get("diskPath", ""), type=DiskType.V1, uuid=old,
                    ready=None, schedulable=None, scheduled_replicas=tuple(sorted(entry.get("scheduledReplica") or ())))
        twins = [Disk(node=n["metadata"]["name"], name=d, path="", type=DiskType.V1, uuid=old, ready=None,
                      schedulable=None)
                 for n in await self.kube.items(LH_NODES, ns)
                 for d, st in (((n.get("status") or {}).get("diskStatus")) or {}).items()
                 if str((st or {}).get("diskUUID") or "").lower() == old and (n["metadata"]["name"], d) != (
                     spec["node"], spec["disk"])]
        deps: Dependents = DependentsIndex([disk, *twins], inv.replicas, inv.backing_images, inv.bims).of(disk)
        newer = msgspec.structs.replace(disk, uuid=new, scheduled_replicas=())
        new_deps = DependentsIndex([newer], inv.replicas, inv.backing_images, inv.bims).of(newer)
        if new_deps.holds_data:
            log.warning("record for %s/%s: data already refers to the new UUID %s (%s)", spec["node"], spec["disk"],
                        new, new_deps.describe())
        return deps.describe() if deps.holds_data else ""

    # ------------------------------------------------------------------ API helpers
    async def disk(self, spec: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        node = await self.kube.get_or_none(LH_NODES, self.longhorn_namespace, spec["node"])
        if node is None:
            return None, None
        entry = ((node.get("status") or {}).get("diskStatus") or {}).get(spec["disk"])
        return node, entry

    async def write_status(self, rec: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """RV-guarded status write; 409 propagates (the caller re-reads)."""
        self.act()
        body = copy.deepcopy(rec)
        old_phase = phase_of(rec)
        status = dict(body.get("status") or {})
        status.setdefault("phase", old_phase)
        status.update(fields, updatedAt=self.kube.clock.rfc3339())
        body["status"] = status
        updated = await self.kube.replace_status(REWRITES, self.namespace, body)
        new_phase = phase_of(updated)
        if self.on_transition is not None:
            try:
                self.on_transition(rec["metadata"]["name"], old_phase, new_phase)
            except Exception:
                log.exception("on_transition callback failed")
        return updated

    async def create_pod(self, rec: dict[str, Any], attempt: int, *, check: bool = False) -> None:
        """Raises DiskPathRefused when the record's disk path is not the stored Node's for the disk."""
        self.act()
        s = self.settings
        node, _ = await self.disk(rec["spec"])
        why = disk_path_refusal(node, rec["spec"])
        if why:
            raise DiskPathRefused(why)
        body = rewriter_pod(rec, attempt=attempt, namespace=self.pod_namespace, image=self.image,
                            service_account=s.service_account, command=s.command,
                            active_deadline_seconds=s.active_deadline, priority_class_name=s.priority_class_name,
                            check=check, image_pull_secrets=s.image_pull_secrets, tolerations=s.tolerations)
        try:
            await self.kube.create(PODS, self.pod_namespace, body)
            log.info("record %s: created rewriter pod %s on %s", rec["metadata"]["name"], body["metadata"]["name"],
                     rec["spec"]["node"])
        except AlreadyExists:
            pass

    async def event(self, rec: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on the Longhorn Node, where `kubectl describe` shows Longhorn's own."""
        spec = rec["spec"]
        node = await self.kube.get_or_none(LH_NODES, self.longhorn_namespace, spec["node"])
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{spec['node']}.{rec['metadata']['name']}.{reason.lower()}",
                         "namespace": self.longhorn_namespace,
                         "labels": {"app.kubernetes.io/managed-by": "bimguard", LABEL_RECORD: rec["metadata"]["name"]}},
            "involvedObject": {"apiVersion": f"{LONGHORN_GROUP}/{LONGHORN_VERSION}", "kind": "Node",
                               "name": spec["node"], "namespace": self.longhorn_namespace,
                               "uid": (node or {}).get("metadata", {}).get("uid", "")},
            "reason": reason, "message": message[:1024], "type": event_type,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            await self.kube.create(EVENTS, self.longhorn_namespace, body)
        except AlreadyExists:
            pass
        except KubeError as exc:  # best effort, like client-go's recorder; the record is the audit trail
            log.warning("event %s for %s not recorded: %s", reason, rec["metadata"]["name"], exc)

    async def delete_pods_of(self, record: str) -> None:
        for pod in await self.kube.items(PODS, self.pod_namespace, f"{SELECTOR},{LABEL_RECORD}={record}"):
            await self.kube.delete(PODS, self.pod_namespace, pod["metadata"]["name"])

