"""The rewrite controller: drives DiskRewrite records from Pending to a final phase.

The admission webhook creates a DiskRewrite (phase unset = Pending, `spec.newUUID` set) and a
PrefixClaim, then patches the recorded UUID in the Longhorn Node's status. That patch can still
fail to land (409, a retried write, a timeout). This controller, running only in the leader
replica, finishes the job (DESIGN "Prevention" flow, invariants 2, 4, 8):

    Pending    stored status holds newUUID? -> data check -> Rewriting + rewriter pod
               still oldUUID (or gone, or a third value) after `pending_grace` -> Abandoned
    Rewriting  pod Succeeded -> Done (+ Normal Event on the Longhorn Node)
               pod exit 2/3/4 (usage, refused, cfg missing) -> roll the status back -> RolledBack
               pod exit 1 or killed -> a new pod, up to `max_attempts`, then roll back
               pod never started within `pod_start_timeout` (node down) -> delete it, roll back
    Abandoned  (never had a pod) if the admission patch lands late after all -> roll back

"Roll back" is a JSON Patch on `nodes/<node>/status` whose `test` op requires the new UUID, so it
never overwrites anything but our own change. Every final phase leaves status and cfg agreeing:
Done (both new), Abandoned (status kept old, cfg untouched), RolledBack (status old again, cfg
not rewritten). The host file is only touched by a pod created after the stored status was seen
to hold the new UUID (invariant 2), and that pod only swaps old -> new (invariant 4).

All state lives in the API server (invariant 8): the phase, attempt number and pod name are in
the record's status, written with its resourceVersion; pod names are derived from (record,
attempt) so creating one twice is a 409; Events have deterministic names. A controller killed
at any point and restarted (or replaced by another leader) re-reads and converges to the same
outcome. PrefixClaims of abandoned and rolled-back records are released; claims of UUIDs no
longer recorded or referenced anywhere are collected after `gc_grace`. Final records are the
audit trail and are kept unless `retention` is set.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

import msgspec
from kubernetes_asyncio import client

from bimguard import records
from bimguard.decode import add_object
from bimguard.dependents import Dependents, DependentsIndex
from bimguard.inventory import Inventory
from bimguard.kube import (
    EVENTS,
    PODS,
    AlreadyExists,
    Conflict,
    Invalid,
    Kube,
    KubeError,
    NotFound,
    Resource,
)
from bimguard.model import LABEL_BIM_DISK_UUID, LABEL_REPLICA_DISK_UUID, Disk, DiskType
from bimguard.rewrite_cfg import EXIT_MISSING, EXIT_REFUSED, EXIT_USAGE
from webhook.rewriter_pod import (
    DEFAULT_ACTIVE_DEADLINE,
    DEFAULT_COMMAND,
    DEFAULT_SERVICE_ACCOUNT,
    LABEL_ATTEMPT,
    LABEL_RECORD,
    SELECTOR,
    pod_name,
    rewriter_pod,
)

log = logging.getLogger("bimguard.controller")

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
COMPONENT = "bimguard-controller"


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...


@dataclass(frozen=True)
class Settings:
    """Timings in seconds. The defaults suit a real cluster; tests shrink them."""

    service_account: str = DEFAULT_SERVICE_ACCOUNT
    command: tuple[str, ...] = DEFAULT_COMMAND
    priority_class_name: str | None = None
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


def rollback_patch(disk: str, old_uuid: str, new_uuid: str) -> list[dict[str, Any]]:
    """JSON Patch putting `old_uuid` back, only if the stored status still holds `new_uuid`."""
    path = f"/status/diskStatus/{pointer_token(disk)}/diskUUID"
    return [{"op": "test", "path": path, "value": new_uuid}, {"op": "replace", "path": path, "value": old_uuid}]


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


class _NotLeader(Exception):
    pass


class RewriteController:
    """See the module docstring. In the webhook process::

        elector = LeaderElector(api_client, namespace)           # identity: POD_NAME / hostname
        controller = RewriteController(api_client, namespace, longhorn_namespace, image, leader=elector)
        elector.on_started_leading = controller.wake
        elector.start(); controller.start()
        ...
        await controller.stop(); await elector.stop()             # stop() releases the lease

    Without `leader` it always acts (one replica, tests). Metrics: `phase_counts` (records per
    phase), `transitions` (phase changes made here, by new phase), `errors`, and the optional
    `on_transition(record, old_phase, new_phase)` and `on_pass(phase_counts)` callbacks.
    """

    def __init__(self, api_client: client.ApiClient, namespace: str, longhorn_namespace: str, image: str, *,
                 settings: Settings | None = None, leader: Leadership | None = None,
                 on_transition: Callable[[str, str, str], None] | None = None,
                 on_pass: Callable[[dict[str, int]], None] | None = None) -> None:
        self.kube = Kube(api_client)
        self.namespace = namespace
        self.longhorn_namespace = longhorn_namespace
        self.image = image
        self.settings = settings or Settings()
        self.leader = leader
        self.on_transition = on_transition
        self.on_pass = on_pass  # e.g. lambda counts: set the bimguard_rewrites{phase} gauge
        # Metrics for the server to export.
        self._phases: dict[str, str] = {}  # record -> phase, as of the last pass and our own writes
        self.transitions: Counter[str] = Counter()  # phase changes made by this process, by new phase
        self.errors = 0  # passes or records that failed with an unexpected error
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_gc = -float("inf")
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="bimguard-rewrite-controller")
        return self._task

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=30)
            self._task = None

    @property
    def phase_counts(self) -> dict[str, int]:
        """Records per phase (a gauge for the server's metrics), as of the last pass."""
        return dict(Counter(self._phases.values()))

    def wake(self) -> None:
        """Run a pass now (e.g. from the elector's on_started_leading)."""
        self._wake.set()

    async def run(self) -> None:
        self._stop.clear()
        watches = [asyncio.create_task(self._watch(REWRITES, None), name="watch-diskrewrites"),
                   asyncio.create_task(self._watch(PODS, SELECTOR), name="watch-rewriter-pods")]
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if self._leading():
                    try:
                        await self.reconcile_once()
                    except asyncio.CancelledError:
                        raise
                    except _NotLeader:
                        pass
                    except Exception:
                        self.errors += 1
                        log.exception("rewrite controller pass failed")
                await self._sleep(self.settings.resync)
        finally:
            for t in watches:
                t.cancel()
            await asyncio.wait(set(watches), timeout=5)

    async def _sleep(self, seconds: float) -> None:
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=seconds)
        finally:
            waiter.cancel()

    async def _watch(self, res: Resource, selector: str | None) -> None:
        """Wake the loop on any change; the periodic pass is what guarantees progress."""
        while not self._stop.is_set():
            try:
                listed = await self.kube.list(res, self.namespace, selector)
                rv = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                async for kind, _obj in self.kube.watch(res, self.namespace, rv, label_selector=selector):
                    if kind == "ERROR":
                        break
                    if kind != "BOOKMARK":
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("watch %s ended: %s", res.plural, exc)
            await asyncio.sleep(1.0)

    def _leading(self) -> bool:
        return self.leader is None or self.leader.is_leader

    def _act(self) -> None:
        """Called before every write: a replica that lost the lease stops mid-pass."""
        if not self._leading():
            raise _NotLeader()

    # ------------------------------------------------------------------ one pass
    async def reconcile_once(self) -> None:
        recs = await self.kube.items(REWRITES, self.namespace)
        self._phases = {r["metadata"]["name"]: phase_of(r) for r in recs}
        claims = {c["metadata"]["name"]: c for c in await self.kube.items(CLAIMS, self.namespace)}
        for rec in recs:
            self._act()
            try:
                await self._reconcile(rec, claims)
            except Conflict as exc:
                # Someone (another leader, the webhook) wrote in between: re-read on the next pass.
                log.info("record %s: %s; retrying", rec["metadata"]["name"], exc)
                self._wake.set()
            except (_NotLeader, asyncio.CancelledError):
                raise
            except Exception:
                self.errors += 1
                log.exception("record %s: reconcile failed", rec["metadata"]["name"])
        await self._clean_pods(recs)
        if time.monotonic() - self._last_gc >= self.settings.gc_interval:
            self._last_gc = time.monotonic()
            await self._revert_stray_new_uuids(recs)
            await self._collect_garbage(recs, claims)
        if self.on_pass is not None:
            try:
                self.on_pass(self.phase_counts)
            except Exception:
                log.exception("on_pass callback failed")

    async def _reconcile(self, rec: dict[str, Any], claims: dict[str, dict[str, Any]]) -> None:
        spec = rec.get("spec") or {}
        if not spec.get("newUUID"):
            return  # a Blocked record: nothing to drive
        if spec.get("origin") != "webhook":
            return  # the repair Job drives its own records (evict, CAS, verify) start to finish
        phase = phase_of(rec)
        if phase == "Pending":
            await self._pending(rec)
        elif phase == "Rewriting":
            await self._rewriting(rec)
        else:
            if phase == "Abandoned":
                await self._late_landing(rec)
            if phase in ("Abandoned", "RolledBack"):
                await self._release_claim(rec, claims)

    # ------------------------------------------------------------------ Pending
    async def _pending(self, rec: dict[str, Any]) -> None:
        spec = rec["spec"]
        node, entry = await self._disk(spec)
        current = (entry or {}).get("diskUUID") or ""
        if entry is not None and current == spec["newUUID"]:
            assert node is not None
            held = await self._data_under_old_uuid(node, spec)
            if held:
                # The disk was not new: Longhorn re-recorded a UUID that objects still refer to
                # (a re-created Node or re-added disk, BRIEF §0.7). Changing it would orphan that
                # data (invariant 3); putting the old UUID back makes status == cfg again.
                await self._roll_back(rec, f"the disk holds data under {spec['oldUUID']} ({held}); not rewriting")
                return
            # Data under the *new* UUID (nothing should schedule there: the webhook marked the
            # disk unschedulable, but a race is possible) refers to the new UUID, so finishing
            # the rewrite is what keeps it valid; rolling back would orphan it.
            self._act()
            started = now_rfc3339()
            updated = await self._write_status(rec, phase="Rewriting", attempts=1, pod=pod_name(rec["metadata"]["name"], 1),
                                               startedAt=started,
                                               message=f"stored status holds {spec['newUUID']}; rewriting the cfg")
            await self._create_pod(updated, 1)
            return
        created = written_no_earlier_than(rec["metadata"].get("creationTimestamp")) or time.time()
        if time.time() - created < self.settings.pending_grace:
            return  # the admission write may still be in flight
        if node is None:
            why = f"Longhorn node {spec['node']} not found"
        elif entry is None:
            why = f"disk {spec['disk']} is not in the status of node {spec['node']}"
        elif current == spec["oldUUID"]:
            why = f"the stored status kept {spec['oldUUID']}: the admission patch did not land"
        else:
            why = f"the stored status holds {current or 'no UUID'}, neither {spec['oldUUID']} nor {spec['newUUID']}"
        await self._finish(rec, "Abandoned", f"{why}; cfg untouched", "Warning", REASON_ABANDONED)

    async def _late_landing(self, rec: dict[str, Any]) -> None:
        """An Abandoned record's patch can still land (a slow write, a retried review): roll it back."""
        st = rec.get("status") or {}
        if int(st.get("attempts") or 0) > 0:
            return  # abandoned after a pod existed: the cfg may hold either UUID, never guess
        finished = parse_time(st.get("finishedAt"))
        if finished is None or time.time() - finished > self.settings.late_landing_window:
            return
        spec = rec["spec"]
        _, entry = await self._disk(spec)
        if entry is not None and entry.get("diskUUID") == spec["newUUID"]:
            await self._roll_back(rec, "the admission patch landed after the record was abandoned; the cfg was never rewritten")

    async def _revert_stray_new_uuids(self, recs: list[dict[str, Any]]) -> None:
        """A final, not-Done record's new UUID back in the stored status (any age): e.g. the disk
        was re-recorded and a review reused the record's answer. Nothing will write it to the cfg,
        so put the old UUID back -- but only on Longhorn's word that the cfg does not hold it
        (Ready=False, DiskFilesystemChanged): if an ambiguous failure did leave the new UUID in the
        cfg and Longhorn re-recorded that, status and cfg agree and must be left alone. Records
        that never had a pod need no such word: their cfg was never touched (`_late_landing`)."""
        finals = [r for r in recs if phase_of(r) in ("Abandoned", "RolledBack")
                  and (r.get("spec") or {}).get("origin") == "webhook" and (r.get("spec") or {}).get("newUUID")]
        if not finals:
            return
        nodes = {n["metadata"]["name"]: n for n in await self.kube.items(LH_NODES, self.longhorn_namespace)}
        for rec in finals:
            spec = rec["spec"]
            entry = (((nodes.get(spec["node"]) or {}).get("status") or {}).get("diskStatus") or {}).get(spec["disk"])
            if not entry or entry.get("diskUUID") != spec["newUUID"]:
                continue
            ready = next((c for c in entry.get("conditions") or [] if c.get("type") == "Ready"), {})
            never_ran = int((rec.get("status") or {}).get("attempts") or 0) == 0
            if never_ran or (ready.get("status") == "False" and ready.get("reason") == "DiskFilesystemChanged"):
                await self._roll_back(rec, f"the stored status holds {spec['newUUID']} again although this record is "
                                           f"{phase_of(rec)} and the cfg does not (a re-recorded disk?)")

    # ------------------------------------------------------------------ Rewriting
    async def _rewriting(self, rec: dict[str, Any]) -> None:
        st = rec.get("status") or {}
        name = rec["metadata"]["name"]
        attempt = max(1, int(st.get("attempts") or 1))
        pname = st.get("pod") or pod_name(name, attempt)
        pod = await self.kube.get_or_none(PODS, self.namespace, pname)
        if pod is None:
            await self._pod_missing(rec, attempt)
            return
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        code, message = termination(pod)
        if phase == "Succeeded" or (phase == "Failed" and code == 0):
            # Exit 0 is the compare-and-swap's own word that the cfg holds the new UUID, even when
            # the pod was marked Failed around it (activeDeadlineSeconds racing the exit).
            await self._done(rec, pod)
        elif phase == "Failed":
            what = f"rewriter pod {pname} failed" + (f" with exit {code}" if code is not None else "") + (
                f": {message}" if message else "")
            if code in PERMANENT_EXITS:
                await self._roll_back(rec, what)
            elif attempt < self.settings.max_attempts:
                await self._retry(rec, pod, attempt, what)
            else:
                await self._roll_back(rec, f"{what} (attempt {attempt} of {self.settings.max_attempts})")
        elif not _started(pod):
            created = written_no_earlier_than(pod["metadata"].get("creationTimestamp")) or time.time()
            if time.time() - created >= self.settings.pod_start_timeout:
                # Delete first, then roll back: a pod that could still start after the rollback
                # would write the new UUID under a status that holds the old one. Force-deleted,
                # the kubelet of a node that comes back finds no pod to start.
                self._act()
                await self.kube.delete(PODS, self.namespace, pname, grace_period_seconds=0)
                await self._roll_back(rec, f"rewriter pod {pname} did not start within "
                                           f"{self.settings.pod_start_timeout:g}s (node down or gone?)")
        else:
            created = parse_time(pod["metadata"].get("creationTimestamp")) or time.time()
            overdue = self.settings.pod_start_timeout + self.settings.active_deadline + 60
            if time.time() - created > overdue and pname not in self._warned:
                # Running past its deadline means its node stopped reporting. Whether the cfg was
                # written is unknown, so neither outcome is safe to assume: wait for the node.
                self._warned.add(pname)
                log.warning("record %s: rewriter pod %s still %s after %ds; waiting for its node to report",
                            name, pname, phase, int(overdue))

    async def _pod_missing(self, rec: dict[str, Any], attempt: int) -> None:
        """Rewriting but no pod: the controller stopped between the status write and the create
        (or someone deleted the pod). Re-create it only while the stored status holds the new UUID."""
        spec = rec["spec"]
        node, entry = await self._disk(spec)
        current = (entry or {}).get("diskUUID") or ""
        if entry is not None and current == spec["newUUID"]:
            try:
                await self._create_pod(rec, attempt)
            except KubeError as exc:
                # Quota, admission policy, a missing service account: retried every pass, and
                # rolled back once it has failed for as long as a pod may take to start.
                since = parse_time((rec.get("status") or {}).get("updatedAt")) or time.time()
                if time.time() - since < self.settings.pod_start_timeout:
                    raise
                await self._roll_back(rec, f"could not create rewriter pod {pod_name(rec['metadata']['name'], attempt)}: "
                                           f"{exc}")
        elif entry is not None and current == spec["oldUUID"]:
            await self._finish(rec, "RolledBack", f"the stored status holds {spec['oldUUID']} again and no rewriter "
                                                  f"pod exists; cfg not rewritten by this attempt",
                               "Warning", REASON_ROLLED_BACK)
        else:
            where = "node gone" if node is None else "disk gone from the node status" if entry is None else \
                f"the stored status holds {current}"
            await self._finish(rec, "Abandoned", f"{where} before the rewriter ran; Longhorn records the cfg's UUID "
                                                 f"when the disk comes back", "Warning", REASON_ABANDONED)

    async def _retry(self, rec: dict[str, Any], pod: dict[str, Any], attempt: int, why: str) -> None:
        spec = rec["spec"]
        _, entry = await self._disk(spec)
        if entry is None or entry.get("diskUUID") != spec["newUUID"]:
            await self._pod_missing(rec, attempt)  # same decision as without a pod: never write blindly
            return
        self._act()
        nxt = attempt + 1
        updated = await self._write_status(rec, attempts=nxt, pod=pod_name(rec["metadata"]["name"], nxt), lastError=why,
                                           message=f"attempt {nxt} of {self.settings.max_attempts}")
        await self._create_pod(updated, nxt)
        await self.kube.delete(PODS, self.namespace, pod["metadata"]["name"])

    async def _done(self, rec: dict[str, Any], pod: dict[str, Any]) -> None:
        spec = rec["spec"]
        _, message = termination(pod)
        _, entry = await self._disk(spec)
        note = ""
        if entry is None:
            note = "; the disk is not in the node status now: Longhorn records the cfg's UUID when it returns"
        elif entry.get("diskUUID") != spec["newUUID"]:
            note = f"; note: the stored status now holds {entry.get('diskUUID')}"
        text = (f"disk {spec['disk']} ({spec['diskPath']}) on node {spec['node']}: diskUUID {spec['oldUUID']} -> "
                f"{spec['newUUID']} (record {rec['metadata']['name']}){note}")
        await self._finish(rec, "Done", (message or "cfg rewritten") + note, "Normal", REASON_DONE, event_message=text)

    # ------------------------------------------------------------------ outcomes
    async def _roll_back(self, rec: dict[str, Any], why: str) -> None:
        """Put the old UUID back into the stored status (only over our new one), then RolledBack."""
        spec = rec["spec"]
        self._act()
        try:
            await self.kube.json_patch_status(LH_NODES, self.longhorn_namespace, spec["node"],
                                              rollback_patch(spec["disk"], spec["oldUUID"], spec["newUUID"]))
            phase, outcome = "RolledBack", f"status {spec['newUUID']} -> {spec['oldUUID']}"
        except (Invalid, NotFound):
            # The test op failed or the node is gone: see what is there now (a re-run after a
            # crash finds its own rollback already applied).
            node, entry = await self._disk(spec)
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
        await self._finish(rec, phase, f"{why}; {outcome}", "Warning", reason, event_message=text, last_error=why)

    async def _finish(self, rec: dict[str, Any], phase: str, message: str, event_type: str, reason: str, *,
                      event_message: str | None = None, last_error: str | None = None) -> None:
        """Event first (deterministic name: a re-run does not duplicate it), then the final phase."""
        self._act()
        spec = rec["spec"]
        await self._event(rec, event_type, reason, event_message or
                          f"disk {spec['disk']} on node {spec['node']}, {spec['oldUUID']} -> {spec['newUUID']}: {message}")
        fields: dict[str, Any] = {"phase": phase, "message": message, "finishedAt": now_rfc3339()}
        if last_error:
            fields["lastError"] = last_error
        updated = await self._write_status(rec, **fields)
        log.info("record %s: %s: %s", rec["metadata"]["name"], phase, message)
        if phase in ("Abandoned", "RolledBack"):
            await self._release_claim(updated, None)
        await self._delete_pods_of(rec["metadata"]["name"])

    async def _release_claim(self, rec: dict[str, Any], claims: dict[str, dict[str, Any]] | None) -> None:
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
        self._act()
        try:
            await self.kube.delete(CLAIMS, self.namespace, prefix, resource_version=claim["metadata"]["resourceVersion"])
        except Conflict:
            return  # changed since read: the next pass looks again
        if claims is not None:
            claims.pop(prefix, None)
        log.info("record %s: released prefix claim %s", rec["metadata"]["name"], prefix)

    # ------------------------------------------------------------------ API helpers
    async def _disk(self, spec: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        node = await self.kube.get_or_none(LH_NODES, self.longhorn_namespace, spec["node"])
        if node is None:
            return None, None
        entry = ((node.get("status") or {}).get("diskStatus") or {}).get(spec["disk"])
        return node, entry

    async def _write_status(self, rec: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """RV-guarded status write; 409 propagates (the pass re-reads)."""
        self._act()
        body = copy.deepcopy(rec)
        old_phase = phase_of(rec)
        status = dict(body.get("status") or {})
        status.setdefault("phase", old_phase)
        status.update(fields, updatedAt=now_rfc3339())
        body["status"] = status
        updated = await self.kube.replace_status(REWRITES, self.namespace, body)
        new_phase = phase_of(updated)
        self._phases[rec["metadata"]["name"]] = new_phase
        if new_phase != old_phase:
            self.transitions[new_phase] += 1
            if self.on_transition is not None:
                try:
                    self.on_transition(rec["metadata"]["name"], old_phase, new_phase)
                except Exception:
                    log.exception("on_transition callback failed")
        return updated

    async def _create_pod(self, rec: dict[str, Any], attempt: int) -> None:
        self._act()
        s = self.settings
        body = rewriter_pod(rec, attempt=attempt, namespace=self.namespace, image=self.image,
                            service_account=s.service_account, command=s.command,
                            active_deadline_seconds=s.active_deadline, priority_class_name=s.priority_class_name)
        try:
            await self.kube.create(PODS, self.namespace, body)
            log.info("record %s: created rewriter pod %s on %s", rec["metadata"]["name"], body["metadata"]["name"],
                     rec["spec"]["node"])
        except AlreadyExists:
            pass

    async def _event(self, rec: dict[str, Any], event_type: str, reason: str, message: str) -> None:
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
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            await self.kube.create(EVENTS, self.longhorn_namespace, body)
        except AlreadyExists:
            pass
        except KubeError as exc:  # best effort, like client-go's recorder; the record is the audit trail
            log.warning("event %s for %s not recorded: %s", reason, rec["metadata"]["name"], exc)

    async def _data_under_old_uuid(self, node: dict[str, Any], spec: dict[str, Any]) -> str:
        """What on this node still refers to the old UUID ("" if nothing): Replicas, BIMs, backing-
        image copies, scheduled replicas, judged by `Dependents.holds_data` (invariant 3)."""
        old, new = spec["oldUUID"].lower(), spec["newUUID"].lower()
        ns = self.longhorn_namespace
        inv = Inventory()
        sources = (
            (LH_REPLICAS, "Replica", f"{LABEL_REPLICA_DISK_UUID} in ({old},{new})"),
            (LH_BIMS, "BackingImageManager", f"{LABEL_BIM_DISK_UUID} in ({old},{new})"),
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
        deps: Dependents = DependentsIndex([disk], inv.replicas, inv.backing_images, inv.bims).of(disk)
        newer = msgspec.structs.replace(disk, uuid=new, scheduled_replicas=())
        new_deps = DependentsIndex([newer], inv.replicas, inv.backing_images, inv.bims).of(newer)
        if new_deps.holds_data:
            log.warning("record for %s/%s: data already refers to the new UUID %s (%s)", spec["node"], spec["disk"],
                        new, new_deps.describe())
        return deps.describe() if deps.holds_data else ""

    # ------------------------------------------------------------------ clean-up
    async def _delete_pods_of(self, record: str) -> None:
        for pod in await self.kube.items(PODS, self.namespace, f"{SELECTOR},{LABEL_RECORD}={record}"):
            await self.kube.delete(PODS, self.namespace, pod["metadata"]["name"])

    async def _clean_pods(self, recs: list[dict[str, Any]]) -> None:
        """Rewriter pods of final or vanished records, and of superseded attempts.

        `recs` is the snapshot from the start of the pass: a pod created during the pass has an
        attempt number above the snapshot's, so it is never mistaken for a superseded one.
        """
        by_name = {r["metadata"]["name"]: r for r in recs}
        for pod in await self.kube.items(PODS, self.namespace, SELECTOR):
            labels = pod["metadata"].get("labels") or {}
            rec = by_name.get(labels.get(LABEL_RECORD, ""))
            if rec is not None and phase_of(rec) not in records.FINAL_PHASES:
                try:
                    attempt = int(labels.get(LABEL_ATTEMPT, ""))
                except ValueError:
                    continue
                if attempt >= int((rec.get("status") or {}).get("attempts") or 0):
                    continue
            elif rec is None and not await self._record_gone(labels.get(LABEL_RECORD, "")):
                continue  # created after the snapshot
            self._act()
            await self.kube.delete(PODS, self.namespace, pod["metadata"]["name"])

    async def _record_gone(self, name: str) -> bool:
        return not name or await self.kube.get_or_none(REWRITES, self.namespace, name) is None

    async def _collect_garbage(self, recs: list[dict[str, Any]], claims: dict[str, dict[str, Any]]) -> None:
        now = time.time()
        s = self.settings
        if s.retention is not None:
            for rec in recs:
                finished = parse_time((rec.get("status") or {}).get("finishedAt"))
                if phase_of(rec) in records.FINAL_PHASES and finished is not None and now - finished > s.retention:
                    self._act()
                    await self.kube.delete(REWRITES, self.namespace, rec["metadata"]["name"],
                                           resource_version=rec["metadata"]["resourceVersion"])
        if not claims:
            return
        in_use = await self._uuids_in_use()
        for rec in recs:
            if phase_of(rec) not in records.FINAL_PHASES:
                spec = rec.get("spec") or {}
                in_use.update(str(spec.get(k) or "").lower() for k in ("oldUUID", "newUUID"))
        for name, claim in list(claims.items()):
            uuid = str((claim.get("spec") or {}).get("uuid") or "").lower()
            created = parse_time(claim["metadata"].get("creationTimestamp")) or now
            if uuid in in_use or now - created < s.gc_grace:
                continue
            self._act()
            try:
                await self.kube.delete(CLAIMS, self.namespace, name, resource_version=claim["metadata"]["resourceVersion"])
                log.info("prefix claim %s (%s): no disk or object refers to it any more; deleted", name, uuid)
            except Conflict:
                pass

    async def _uuids_in_use(self) -> set[str]:
        """Every disk UUID a Longhorn object records or refers to (BRIEF §3)."""
        ns = self.longhorn_namespace
        out: set[str] = set()
        for node in await self.kube.items(LH_NODES, ns):
            for entry in ((node.get("status") or {}).get("diskStatus") or {}).values():
                out.add(str((entry or {}).get("diskUUID") or "").lower())
        for bim in await self.kube.items(LH_BIMS, ns):
            out.add(str((bim.get("spec") or {}).get("diskUUID") or "").lower())
        for bi in await self.kube.items(LH_BACKING_IMAGES, ns):
            out.update(k.lower() for k in ((bi.get("spec") or {}).get("diskFileSpecMap") or {}))
            out.update(k.lower() for k in ((bi.get("status") or {}).get("diskFileStatusMap") or {}))
        for rep in await self.kube.items(LH_REPLICAS, ns):
            out.add(str((rep.get("spec") or {}).get("diskID") or "").lower())
        out.discard("")
        return out


__all__ = ["RewriteController", "Settings", "rollback_patch", "pointer_token", "termination"]
