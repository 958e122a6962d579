"""The webhook's rewrite controller: drives `origin: webhook` DiskRewrite records to a final phase.

The admission webhook creates a DiskRewrite (phase unset = Pending, `spec.newUUID` set) and a
PrefixClaim, then patches the recorded UUID in the Longhorn Node's status. That patch can still
fail to land (409, a retried write, a timeout). This controller, running only in the leader
replica, finishes the job (the Prevention flow and invariants 2, 4 and 8 of docs/design.md) with
the shared rewrite engine (bimguard.rewrite.engine, which also says how records are split between
this controller and the repair Job):

    Pending    stored status holds newUUID? -> data check -> engine.begin (Rewriting + pod)
               still oldUUID (or gone, or a third value) after `pending_grace` -> Abandoned
    Rewriting  engine.advance: swapped -> Done (+ Normal Event on the Longhorn Node); failures
               -> rolled back or abandoned by the engine
    Abandoned  (never had a pod) if the admission patch lands late after all -> roll back

Every final phase leaves status and cfg agreeing: Done (both new), Abandoned (status kept old,
cfg untouched), RolledBack (status old again, cfg not rewritten).

All state lives in the API server (invariant 8). A controller killed at any point and restarted
(or replaced by another leader) re-reads and converges to the same outcome. PrefixClaims of
abandoned and rolled-back records are released; claims of UUIDs no longer recorded or referenced
anywhere are collected after `gc_grace`. Final records are the audit trail and are kept unless
`retention` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Callable, Iterable, Protocol

from kubernetes_asyncio import client

from bimguard import records
from bimguard.decision import cfg_differs, json_pointer, rewrite_patch
from bimguard.kube import PODS, Conflict, Invalid, Kube, KubeError, NotFound, Resource
from bimguard.repair.steps import job_record_name
from bimguard.rewrite.engine import (
    CLAIMS,
    LH_BACKING_IMAGES,
    LH_BIMS,
    LH_NODES,
    LH_REPLICAS,
    REASON_ABANDONED,
    REASON_DONE,
    REWRITES,
    SWAPPED,
    RewriteEngine,
    Settings,
    phase_of,
    termination,
)
from bimguard.rewrite.pod import LABEL_ATTEMPT, LABEL_RECORD, SELECTOR

log = logging.getLogger("bimguard.controller")
COMPONENT = "bimguard-controller"


def unfinished(recs: Iterable[dict[str, Any]], still_recorded: Callable[[str, str, str], bool],
               phase: Callable[[dict[str, Any]], str] = phase_of) -> Counter[str]:
    """The records that still wait for something, by phase: every record in a phase that is not
    final (a rewrite or a repair under way), and the Blocked ones whose disk is still blocked: it
    still records the UUID it was blocked with (`still_recorded(node, disk, uuid)`, the index), and
    for a webhook's record, no repair record of the same disk and UUID has taken over (the Job's
    record is counted by itself). Blocked records are kept as the audit trail after the disk was
    repaired, removed or given another UUID; those, and Done, Abandoned and RolledBack, are history."""
    recs = list(recs)
    names = {r["metadata"]["name"] for r in recs}
    out: Counter[str] = Counter()
    for rec in recs:
        p = phase(rec)
        if p not in records.FINAL_PHASES:
            out[p] += 1
            continue
        if p != "Blocked":
            continue
        spec = rec.get("spec") or {}
        node, disk, old = str(spec.get("node") or ""), str(spec.get("disk") or ""), str(spec.get("oldUUID") or "")
        if spec.get("origin") == "webhook" and job_record_name(node, disk, old) in names:
            continue
        if still_recorded(node, disk, old):
            out[p] += 1
    return out


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...


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
        self._records: list[dict[str, Any]] = []  # the last pass's records
        self.transitions: Counter[str] = Counter()  # phase changes made by this process, by new phase
        self.errors = 0  # passes or records that failed with an unexpected error
        self._failing = ""  # the last failed pass's reason, logged once while it lasts
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_gc = -float("inf")
        self.engine = RewriteEngine(self.kube, namespace, longhorn_namespace, image, settings=self.settings,
                                    component=COMPONENT, act=self._act, on_transition=self._transition)

    def _transition(self, record: str, old_phase: str, new_phase: str) -> None:
        self._phases[record] = new_phase
        if new_phase != old_phase:
            self.transitions[new_phase] += 1
            if self.on_transition is not None:
                self.on_transition(record, old_phase, new_phase)

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

    def unfinished(self, still_recorded: Callable[[str, str, str], bool]) -> Counter[str]:
        """`unfinished` over the last pass's records, in the phases they have now."""
        return unfinished(self._records, still_recorded,
                          lambda rec: self._phases.get(rec["metadata"]["name"]) or phase_of(rec))

    def wake(self) -> None:
        """Run a pass now (e.g. from the elector's on_started_leading)."""
        self._wake.set()

    async def run(self) -> None:
        self._stop.clear()
        watches = [asyncio.create_task(self._watch(REWRITES, None), name="watch-diskrewrites"),
                   asyncio.create_task(self._watch(PODS, SELECTOR, self.engine.pod_namespace),
                                       name="watch-rewriter-pods")]
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if self._leading():
                    try:
                        await self.reconcile_once()
                        if self._failing:
                            log.info("rewrite controller passes succeed again")
                            self._failing = ""
                    except asyncio.CancelledError:
                        raise
                    except _NotLeader:
                        pass
                    except KubeError as exc:  # the API server's answer says it all: one line, no traceback
                        self.errors += 1
                        why = f"{exc.message or exc}{' (are bimguard CRDs installed?)' if isinstance(exc, NotFound) else ''}"
                        # Said once while it lasts (every pass would repeat it each resync); counted in errors.
                        log.log(logging.DEBUG if why == self._failing else logging.ERROR,
                                "rewrite controller pass failed: %s", why)
                        self._failing = why
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

    async def _watch(self, res: Resource, selector: str | None, namespace: str | None = None) -> None:
        """Wake the loop on any change; the periodic pass is what guarantees progress."""
        while not self._stop.is_set():
            try:
                ns = namespace or self.namespace
                listed = await self.kube.list(res, ns, selector)
                rv = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                async for kind, _obj in self.kube.watch(res, ns, rv, label_selector=selector):
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
        self._records = recs
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
            except KubeError as exc:  # the API server's answer says it all: one line; the next pass retries
                self.errors += 1
                log.error("record %s: reconcile failed: %s", rec["metadata"]["name"], exc)
            except Exception:
                self.errors += 1
                log.exception("record %s: reconcile failed", rec["metadata"]["name"])
        await self._clean_pods(recs)
        if time.monotonic() - self._last_gc >= self.settings.gc_interval:
            self._last_gc = time.monotonic()
            await self._revert_stray_new_uuids(recs)
            await self._record_new_again(recs)
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
            if await self.engine.advance(rec) == SWAPPED:
                await self._done(rec)
        else:
            if phase == "Abandoned":
                await self._late_landing(rec)
            if phase in ("Abandoned", "RolledBack"):
                await self.engine.release_claim(rec, claims)

    # ------------------------------------------------------------------ Pending
    async def _pending(self, rec: dict[str, Any]) -> None:
        spec = rec["spec"]
        node, entry = await self.engine.disk(spec)
        current = (entry or {}).get("diskUUID") or ""
        if entry is not None and current == spec["newUUID"]:
            assert node is not None
            held = await self.engine.data_under_old_uuid(node, spec)
            if held:
                # The disk was not new: Longhorn re-recorded a UUID that objects still refer to
                # (a re-created Node or re-added disk: Longhorn re-links Replicas and BIMs by UUID,
                # controller/node_controller.go:831-864 @v1.7.2). Changing it would orphan that
                # data (invariant 3); putting the old UUID back makes status == cfg again.
                await self.engine.roll_back(rec, f"the disk holds data under {spec['oldUUID']} ({held}); not rewriting")
                return
            # Data under the *new* UUID (nothing should schedule there: the webhook marked the
            # disk unschedulable, but a race is possible) refers to the new UUID, so finishing
            # the rewrite is what keeps it valid; rolling back would orphan it.
            await self.engine.begin(rec, f"stored status holds {spec['newUUID']}; rewriting the cfg")
            return
        # Ages on the API server's clock (bimguard.kube.ServerClock): the record's
        # creationTimestamp is the server's, and this pod's clock may be far off it.
        age = self.kube.clock.age(rec["metadata"].get("creationTimestamp"))
        if age is None or age < self.settings.pending_grace:
            return  # the admission write may still be in flight
        if node is None:
            why = f"Longhorn node {spec['node']} not found"
        elif entry is None:
            why = f"disk {spec['disk']} is not in the status of node {spec['node']}"
        elif current == spec["oldUUID"]:
            why = f"the stored status kept {spec['oldUUID']}: the admission patch did not land"
        else:
            why = f"the stored status holds {current or 'no UUID'}, neither {spec['oldUUID']} nor {spec['newUUID']}"
        await self.engine.finish(rec, "Abandoned", f"{why}; cfg untouched", "Warning", REASON_ABANDONED)

    async def _late_landing(self, rec: dict[str, Any]) -> None:
        """An Abandoned record's patch can still land (a slow write, a retried review): roll it back."""
        st = rec.get("status") or {}
        if int(st.get("attempts") or 0) > 0:
            return  # abandoned after a pod existed: the cfg may hold either UUID, never guess
        since = self.kube.clock.age(st.get("finishedAt"))
        if since is None or since > self.settings.late_landing_window:
            return
        spec = rec["spec"]
        _, entry = await self.engine.disk(spec)
        if entry is not None and entry.get("diskUUID") == spec["newUUID"]:
            await self.engine.roll_back(rec, "the admission patch landed after the record was abandoned; the cfg was never rewritten")

    async def _stored_entries(self, recs: list[dict[str, Any]], phases: tuple[str, ...]
                              ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(record, its disk's stored status entry) for the webhook's records in these phases that
        made a rewrite, whose disk is in its stored Node's status (one list of the Nodes)."""
        chosen = [r for r in recs if phase_of(r) in phases and (r.get("spec") or {}).get("origin") == "webhook"
                  and (r.get("spec") or {}).get("newUUID")]
        if not chosen:
            return []
        nodes = {n["metadata"]["name"]: n for n in await self.kube.items(LH_NODES, self.longhorn_namespace)}
        out = []
        for rec in chosen:
            spec = rec["spec"]
            entry = (((nodes.get(spec["node"]) or {}).get("status") or {}).get("diskStatus") or {}).get(spec["disk"])
            if entry:
                out.append((rec, entry))
        return out

    async def _revert_stray_new_uuids(self, recs: list[dict[str, Any]]) -> None:
        """A final, not-Done record's new UUID back in the stored status (any age): e.g. the disk
        was re-recorded and a review reused the record's answer. Nothing will write it to the cfg,
        so put the old UUID back -- but only on Longhorn's word that the cfg does not hold it
        (Ready=False, DiskFilesystemChanged): if an ambiguous failure did leave the new UUID in the
        cfg and Longhorn re-recorded that, status and cfg agree and must be left alone. Records
        that never had a pod need no such word: their cfg was never touched (`_late_landing`)."""
        for rec, entry in await self._stored_entries(recs, ("Abandoned", "RolledBack")):
            spec = rec["spec"]
            if entry.get("diskUUID") != spec["newUUID"]:
                continue
            ready = next((c for c in entry.get("conditions") or [] if c.get("type") == "Ready"), {})
            never_ran = int((rec.get("status") or {}).get("attempts") or 0) == 0
            if never_ran or (ready.get("status") == "False" and ready.get("reason") == "DiskFilesystemChanged"):
                await self.engine.roll_back(rec, f"the stored status holds {spec['newUUID']} again although this record is "
                                           f"{phase_of(rec)} and the cfg does not (a re-recorded disk?)")

    async def _record_new_again(self, recs: list[dict[str, Any]]) -> None:
        """A Done record's old UUID back in the stored status while the cfg holds the new one (its
        pod's compare-and-swap said so; Longhorn says the cfg does not match): the Longhorn Node was
        deleted and created again around the swap, and Longhorn recorded what its disk monitor had
        collected before it (polls fail while the Node is missing, controller/monitor/
        disk_monitor.go:98-101,132-136; node_controller.go:450-456,745 @v1.7.2). Longhorn never
        corrects a recorded UUID, so the new one is recorded again -- tested: the old UUID still
        there and nothing scheduled on the disk (NotReady since, so nothing can have been)."""
        for rec, entry in await self._stored_entries(recs, ("Done",)):
            spec = rec["spec"]
            if entry.get("diskUUID") != spec["oldUUID"] or not cfg_differs(entry):
                continue
            base = json_pointer("status", "diskStatus", spec["disk"])
            ops: list[dict[str, Any]] = [{"op": "test", "path": base + "/diskUUID", "value": spec["oldUUID"]}]
            if "scheduledReplica" in entry:
                ops.append({"op": "test", "path": base + "/scheduledReplica", "value": {}})
            # Longhorn's verdict as read (a rollback replaces it with bimguard's own, engine.rollback_patch).
            ops.append({"op": "test", "path": base + "/conditions", "value": entry.get("conditions")})
            message = (f"bimguard records {spec['newUUID']} again for disk {spec['disk']}: longhorn-disk.cfg holds it "
                       f"(DiskRewrite {rec['metadata']['name']})")
            ops += rewrite_patch(spec["disk"], spec["newUUID"], entry.get("conditions") or [], message,
                                 self.kube.clock.rfc3339())
            self._act()
            try:
                await self.kube.json_patch_status(LH_NODES, self.longhorn_namespace, spec["node"], ops)
            except (Invalid, NotFound):
                continue  # changed meanwhile: looked at again next time
            log.warning("record %s: Longhorn recorded %s again for %s/%s although the cfg holds %s (a re-created "
                        "Longhorn Node?); recorded %s again", rec["metadata"]["name"], spec["oldUUID"], spec["node"],
                        spec["disk"], spec["newUUID"], spec["newUUID"])

    async def _done(self, rec: dict[str, Any]) -> None:
        spec = rec["spec"]
        pod = await self.kube.get_or_none(PODS, self.engine.pod_namespace, (rec.get("status") or {}).get("pod") or "")
        _, message = termination(pod or {})
        _, entry = await self.engine.disk(spec)
        note = ""
        if entry is None:
            note = "; the disk is not in the node status now: Longhorn records the cfg's UUID when it returns"
        elif entry.get("diskUUID") != spec["newUUID"]:
            note = f"; note: the stored status now holds {entry.get('diskUUID')}"
        text = (f"disk {spec['disk']} ({spec['diskPath']}) on node {spec['node']}: diskUUID {spec['oldUUID']} -> "
                f"{spec['newUUID']} (record {rec['metadata']['name']}){note}")
        await self.engine.finish(rec, "Done", (message or "cfg rewritten") + note, "Normal", REASON_DONE, event_message=text)

    # ------------------------------------------------------------------ clean-up
    async def _clean_pods(self, recs: list[dict[str, Any]]) -> None:
        """Rewriter pods of final or vanished records, and of superseded attempts.

        `recs` is the snapshot from the start of the pass: a pod created during the pass has an
        attempt number above the snapshot's, so it is never mistaken for a superseded one.
        """
        by_name = {r["metadata"]["name"]: r for r in recs}
        for pod in await self.kube.items(PODS, self.engine.pod_namespace, SELECTOR):
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
            await self.kube.delete(PODS, self.engine.pod_namespace, pod["metadata"]["name"])

    async def _record_gone(self, name: str) -> bool:
        return not name or await self.kube.get_or_none(REWRITES, self.namespace, name) is None

    async def _collect_garbage(self, recs: list[dict[str, Any]], claims: dict[str, dict[str, Any]]) -> None:
        s = self.settings
        clock = self.kube.clock
        if s.retention is not None:
            for rec in recs:
                since = clock.age((rec.get("status") or {}).get("finishedAt"))
                if phase_of(rec) in records.FINAL_PHASES and since is not None and since > s.retention:
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
        names = {r["metadata"]["name"] for r in recs}
        for name, claim in list(claims.items()):
            uuid = str((claim.get("spec") or {}).get("uuid") or "").lower()
            age = clock.age(claim["metadata"].get("creationTimestamp"))
            if uuid in in_use or age is None:
                continue
            record = str((claim.get("spec") or {}).get("record") or "")
            # A claim for a new UUID whose record never came to exist (its webhook died in between,
            # webhook/admission.py) is garbage once the record could no longer be on its way. The
            # record is looked up again: `recs` is as old as this pass.
            orphaned = (bool(record) and record not in names and age >= records.CLAIM_RECORD_GRACE_SECONDS
                        and await self._record_gone(record))
            if age < s.gc_grace and not orphaned:
                continue
            self._act()
            try:
                await self.kube.delete(CLAIMS, self.namespace, name, resource_version=claim["metadata"]["resourceVersion"])
                log.info("prefix claim %s (%s): no disk or object refers to it any more; deleted", name, uuid)
            except Conflict:
                pass

    async def _uuids_in_use(self) -> set[str]:
        """Every disk UUID a Longhorn object records or refers to: Node status.diskStatus[*].diskUUID,
        BIM spec.diskUUID, BackingImage diskFileSpecMap / diskFileStatusMap keys, Replica spec.diskID
        (k8s/pkg/apis/longhorn/v1beta2/ node.go:116, backingimagemanager.go:45, backingimage.go:53,87,
        replica.go:59 @v1.7.2)."""
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


__all__ = ["RewriteController"]
