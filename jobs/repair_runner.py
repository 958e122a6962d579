"""The repair Job's I/O: preflight, the Lease, records and claims, and the passes that carry out
what ``bimguard.repair.steps.decide`` names for each record.

Each pass reads every resource it needs once (one list per resource, whatever the number of
disks: reads do not grow with the cluster's size per disk), decides the next step of every
record, and carries the steps out; records are written before the cluster is changed (intent
first), so a Job killed at any moment leaves records a re-run continues from. The identity change
itself is the shared rewrite engine's (bimguard.rewrite.engine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kubernetes_asyncio import client

from bimguard import records
from bimguard.bim import LonghornInfo, parse_version, prefix_naming
from bimguard.decision import rewrite_patch
from bimguard.findings import Findings, analyze
from bimguard.kube import PODS, AlreadyExists, Conflict, Forbidden, Invalid, Kube, KubeError, NotFound, Resource
from bimguard.prefixes import PrefixSpaceExhausted, allocate_uuid
from bimguard.repair import steps
from bimguard.repair.world import World, name_of
from bimguard.rewrite.engine import (
    CLAIMS,
    FINAL,
    LH_NODES,
    REASON_DONE,
    REWRITES,
    SWAPPED,
    RewriteEngine,
    Settings,
    disk_path_refusal,
    now_rfc3339,
    pointer_token,
    termination,
)
from bimguard.rewrite.pod import LABEL_MANAGED_BY, LABEL_RECORD, inspector_pod, pod_name, rewriter_pod
from webhook.index import ClusterIndex
from webhook.leader import LeaderElector

log = logging.getLogger("bimguard.repair")

LH = "longhorn.io", "v1beta2"
LONGHORN = {p: Resource(*LH, p) for p in ("nodes", "replicas", "backingimages", "backingimagemanagers",
                                          "backingimagedatasources", "orphans", "volumes", "settings")}
COMPONENT = "bimguard-repair"
LEASE_NAME = "bimguard-repair"
REASON_BLOCKED = "DiskUUIDRepairBlocked"
ACTIVE = (steps.PENDING, steps.PREPARING, steps.DRAINING, steps.REWRITING, steps.RESTORING)


class RepairError(Exception):
    """Bad input, a refused preflight, an unreachable cluster: one line, exit 2."""


class _LostLease(Exception):
    pass


@dataclass(frozen=True)
class Options:
    namespace: str = "bimguard"
    longhorn_namespace: str = "longhorn-system"
    apply: bool = False
    evict: bool = False
    only: tuple[str, ...] = ()
    max_parallel: int = 1
    timeout: float = 1800.0
    image: str = "bimguard"
    longhorn_version: str | None = None
    identity: str = ""
    lease_duration: float = 30.0
    poll: float = 2.0
    settings: Settings = field(default_factory=Settings)
    seed: int | None = None


@dataclass
class Victim:
    """A disk the plan regenerates."""

    node: str
    disk: str
    disk_name: str
    path: str
    uuid: str
    prefix: str
    reason: str
    clone: bool
    holds: str  # what the scan saw on it ("" if nothing)
    keep: str  # node/disk of the disk that keeps the prefix


@dataclass
class Outcome:
    """A record at the end of a run, for the report."""

    record: str
    node: str
    disk: str
    old: str
    new: str
    phase: str
    detail: str


@dataclass
class Report:
    longhorn: LonghornInfo | None = None
    victims: list[Victim] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # victims not started (node not Ready, ...)
    nothing_to_do: str = ""  # why, when there is nothing to do
    reads: int = 0  # every request the run sent (bimguard.kube.count_requests)
    writes: int = 0
    checks: int = 0  # access reviews and dry runs
    elapsed: float = 0.0
    stuck_before: list[str] = field(default_factory=list)  # backing images with stuck copies before the run
    recovered: list[str] = field(default_factory=list)  # ... whose stuck copies are gone after it
    still_stuck: list[str] = field(default_factory=list)


def plan_victims(findings: Findings, only: tuple[str, ...] = (),
                 disk_name: Callable[[str, str], str] = lambda node, disk: disk) -> list[Victim]:
    """The scan's plan (bimguard.findings, bimguard.plan), as the disks to regenerate;
    `disk_name(node, disk)` is the diskName Longhorn recorded from the cfg."""
    out: list[Victim] = []
    for p in findings.plans:
        for r in p.regenerate:
            d = r.disk
            deps = p.dependents[p.group.disks.index(d)]
            out.append(Victim(d.node, d.name, disk_name(d.node, d.name), d.path, d.recorded_uuid or d.uuid,
                              p.group.prefix, r.reason, p.group.kind == "duplicate-uuid" and d.uuid == p.keep.uuid,
                              deps.describe() if deps.holds_data else "", f"{p.keep.node}/{p.keep.name}"))
    if only:
        out = [v for v in out if v.prefix in only or f"{v.node}/{v.disk}" in only]
    return out


class Runner:
    def __init__(self, api_client: client.ApiClient, opts: Options,
                 progress: Callable[[str, str, str], None] = lambda *a: None) -> None:
        self.api_client = api_client
        self.kube = Kube(api_client)
        self.opts = opts
        self.progress = progress  # (node/disk, phase, detail)
        self.report = Report()
        self._deadline = time.monotonic() + opts.timeout
        self._rng = random.Random(opts.seed)
        self._elector: LeaderElector | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._steps: dict[str, str] = {}  # record -> last step shown
        self._counts_bi = False
        self._info: LonghornInfo | None = None
        self.engine = RewriteEngine(self.kube, opts.namespace, opts.longhorn_namespace, opts.image,
                                    settings=opts.settings, component=COMPONENT, act=self._act,
                                    wait_for_node=self._node_not_ready)

    # ------------------------------------------------------------------ reading
    async def snapshot(self) -> World:
        ns = self.opts.longhorn_namespace
        lists = await asyncio.gather(*(self.kube.items(r, ns) for r in LONGHORN.values()),
                                     self.kube.items(PODS, self.engine.pod_namespace, f"{LABEL_MANAGED_BY}=bimguard"))
        by = dict(zip(list(LONGHORN) + ["pods"], lists))
        return World.from_lists(nodes=by["nodes"], replicas=by["replicas"], backing_images=by["backingimages"],
                                bims=by["backingimagemanagers"], data_sources=by["backingimagedatasources"],
                                orphans=by["orphans"], volumes=by["volumes"], settings=by["settings"], pods=by["pods"])

    async def _records(self) -> dict[str, dict[str, Any]]:
        return {r["metadata"]["name"]: r for r in await self.kube.items(REWRITES, self.opts.namespace)
                if (r.get("spec") or {}).get("origin") == "job"}

    # ------------------------------------------------------------------ the run
    async def plan(self) -> tuple[World, Findings, list[Victim]]:
        world = await self.snapshot()
        findings = analyze(world.inventory)
        victims = plan_victims(findings, self.opts.only,
                               lambda n, d: str((world.disk_status(n, d) or {}).get("diskName") or d))
        self._info = findings.longhorn
        self.report.longhorn, self.report.victims = findings.longhorn, victims
        return world, findings, victims

    def longhorn_verdict(self, info: LonghornInfo) -> str:
        """"" when the repair applies; else why there is nothing to do. Raises RepairError when the
        version is unknown and --apply was asked without --longhorn-version."""
        version = self.opts.longhorn_version or info.version
        parsed = parse_version(version) if version else None
        if parsed is None:
            if info.affected is False:
                return f"Longhorn names BIMs after the whole disk UUID ({info.version_source}); nothing to repair"
            if self.opts.apply:
                raise RepairError("the Longhorn version is unknown (no Setting current-longhorn-version, no BIM image "
                                  "tag): pass --longhorn-version vX.Y.Z to confirm it before --apply")
            return ""
        self._counts_bi = parsed >= (1, 8, 0)
        if not prefix_naming(parsed):
            return (f"Longhorn {version} names BIMs after the whole disk UUID (v1.9.2 and later): colliding prefixes "
                    "cannot break anything; nothing to repair")
        return ""

    async def apply(self, world: World, victims: list[Victim]) -> Report:
        await self._acquire_lease()
        try:
            await self._preflight(world, victims)
            while True:
                try:
                    recs = await self._ensure_records(world, victims)  # idempotent: a retry finds what it made
                    break
                except _LostLease:
                    await self._retake_lease()
            await self._passes(recs)
        finally:
            await self._release_lease()
        return self.report

    # ------------------------------------------------------------------ preflight
    async def _preflight(self, world: World, victims: list[Victim]) -> None:
        missing = await self._missing_permissions()
        if missing:
            raise RepairError("missing permission" + ("s" if len(missing) > 1 else "") + ": " + ", ".join(missing))
        for node in sorted({v.node for v in victims if world.node_ready(v.node)}):
            v = next(x for x in victims if x.node == node)
            probe = {"metadata": {"name": "preflight", "uid": ""}, "spec": {
                "node": node, "disk": v.disk, "diskName": v.disk_name, "diskPath": v.path,
                "oldUUID": v.uuid, "newUUID": v.uuid}}
            s = self.opts.settings
            pods = self.engine.pod_namespace
            body = rewriter_pod(probe, attempt=0, namespace=pods, image=self.opts.image,
                                service_account=s.service_account, command=s.command,
                                priority_class_name=s.priority_class_name, image_pull_secrets=s.image_pull_secrets,
                                tolerations=s.tolerations)
            body["metadata"]["name"] = pod_name("bimguard-preflight", 0)
            try:
                await self.kube.create(PODS, pods, body, dry_run=True)
            except AlreadyExists:
                pass
            except KubeError as exc:
                raise RepairError(f"the API server refuses the on-node rewriter pod in namespace {pods} "
                                  f"(node {node}): {exc.message}") from None

    #: Every call a run makes: (verb, API group, resource, where: "lh" is Longhorn's namespace, "own"
    #: bimguard's and "pods" the on-node pods' (--rewriter-namespace), object name or "" for any). The preflight asks about each; the chart grants
    #: exactly these (tests/chart/test_repair_chart.py), and the end-to-end tests check that every
    #: request a run sends is one of them (tests/e2e/repair_env.py).
    PERMISSIONS: tuple[tuple[str, str, str, str, str], ...] = (
        # Runner.snapshot reads everything each pass; nodes: disk flags (scheduling, eviction)
        *(("list", "longhorn.io", plural, "lh", "") for plural in (
            "nodes", "replicas", "backingimages", "backingimagemanagers", "backingimagedatasources", "orphans",
            "volumes", "settings")),
        ("get", "longhorn.io", "nodes", "lh", ""), ("update", "longhorn.io", "nodes", "lh", ""),
        ("patch", "longhorn.io", "nodes/status", "lh", ""),  # the status compare-and-swap, or its rollback
        ("delete", "longhorn.io", "replicas", "lh", ""),  # stuck replicas that never held data
        ("get", "longhorn.io", "backingimages", "lh", ""), ("update", "longhorn.io", "backingimages", "lh", ""),
        ("create", "", "events", "lh", ""),  # on the Longhorn Node
        ("list", "bimguard.io", "diskrewrites", "own", ""), ("get", "bimguard.io", "diskrewrites", "own", ""),
        ("create", "bimguard.io", "diskrewrites", "own", ""),
        ("update", "bimguard.io", "diskrewrites", "own", ""),  # a Blocked record taken up again
        ("update", "bimguard.io", "diskrewrites/status", "own", ""),
        ("list", "bimguard.io", "prefixclaims", "own", ""), ("get", "bimguard.io", "prefixclaims", "own", ""),
        ("create", "bimguard.io", "prefixclaims", "own", ""), ("delete", "bimguard.io", "prefixclaims", "own", ""),
        ("list", "", "pods", "pods", ""), ("get", "", "pods", "pods", ""), ("create", "", "pods", "pods", ""),
        ("delete", "", "pods", "pods", ""),  # the on-node rewriter and inspector pods
        # one run at a time (webhook/leader.py); RBAC cannot limit create to a name
        ("create", "coordination.k8s.io", "leases", "own", ""),
        ("get", "coordination.k8s.io", "leases", "own", LEASE_NAME),
        ("update", "coordination.k8s.io", "leases", "own", LEASE_NAME),
    )

    async def _missing_permissions(self) -> list[str]:
        authz = client.AuthorizationV1Api(self.api_client)

        async def ask(verb: str, group: str, resource: str, where: str, name: str) -> str:
            res, _, sub = resource.partition("/")
            ns = {"lh": self.opts.longhorn_namespace, "pods": self.engine.pod_namespace}.get(where, self.opts.namespace)
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": res,
                                                    "subresource": sub, "namespace": ns, "name": name}}}
            try:
                resp = await authz.create_self_subject_access_review(body, _request_timeout=30)
            except client.exceptions.ApiException as exc:
                if exc.status == 404:
                    return ""  # no authorization API to ask: the calls themselves will tell
                raise RepairError(f"could not check permissions: {exc.status} {exc.reason}") from None
            allowed = bool(resp.status and resp.status.allowed)
            return "" if allowed else f"{verb} {resource}{'.' + group if group else ''}{' ' + name if name else ''} in {ns}"

        results = await asyncio.gather(*(ask(*p) for p in self.PERMISSIONS))
        return [r for r in results if r]

    # ------------------------------------------------------------------ the Lease
    async def _acquire_lease(self) -> None:
        d = self.opts.lease_duration
        self._elector = LeaderElector(self.api_client, self.opts.namespace, LEASE_NAME, self.opts.identity or None,
                                      lease_duration=d, renew_deadline=d * 2 / 3, retry_period=d / 6)
        try:
            won = await self._elector.try_acquire_or_renew()
        except KubeError as exc:
            raise RepairError(f"could not take the Lease {self.opts.namespace}/{LEASE_NAME}: {exc.message}") from None
        if not won:
            raise RepairError(f"another repair is running: the Lease {self.opts.namespace}/{LEASE_NAME} is held by "
                              f"{self._elector.holder or 'someone else'}; try again when it has finished")
        self._lease_task = self._elector.start()

    async def _release_lease(self) -> None:
        if self._elector is not None:
            await self._elector.stop()

    async def _retake_lease(self) -> None:
        """Renewals ran late (an overloaded API server): carry on only if the Lease is still ours to
        take, else stop; every step so far is recorded, and a re-run continues from there."""
        if self._elector is None or not await self._elector.renew_now():
            holder = (self._elector.holder if self._elector else "") or "another repair"
            raise RepairError(f"lost the repair Lease {self.opts.namespace}/{LEASE_NAME} to {holder}; stopping "
                              "(a re-run continues from the records)")
        log.warning("the repair Lease was not renewed in time; taken back, continuing")

    def _act(self) -> None:
        if self._elector is not None and not self._elector.is_leader:
            raise _LostLease()

    # ------------------------------------------------------------------ records and claims
    async def _ensure_records(self, world: World, victims: list[Victim]) -> dict[str, dict[str, Any]]:
        recs = await self._records()
        claims = {c["metadata"]["name"]: c for c in await self.kube.items(CLAIMS, self.opts.namespace)}
        index = ClusterIndex()
        for plural in ("nodes", "replicas", "backingimages", "backingimagemanagers"):
            index.replace_all(plural, list(getattr(world, {"nodes": "nodes", "replicas": "replicas",
                                                          "backingimages": "backing_images",
                                                          "backingimagemanagers": "bims"}[plural]) if plural != "nodes"
                                           else world.nodes.values()))
        index.replace_all("backingimagedatasources", list(world.data_sources))
        index.replace_all("orphans", list(world.orphans))
        occupied = set(index.occupied()) | set(claims)
        for v in victims:
            if not world.node_ready(v.node):
                self.report.skipped.append(f"{v.node}/{v.disk}: node {v.node} is not Ready")
                continue
            name = steps.job_record_name(v.node, v.disk, v.uuid)
            rec = recs.get(name)
            if rec is None:
                # A run killed between claiming and recording left a claim naming this record: take it up.
                left = next((c["spec"]["uuid"] for c in claims.values() if (c.get("spec") or {}).get("record") == name
                             and c["spec"].get("uuid")), "")
                rec = await self._create_record(world, v, name, occupied, left)
            elif (rec.get("status") or {}).get("phase") == steps.BLOCKED:
                rec = await self._reopen(rec, world, occupied)
            recs[name] = rec
        return recs

    async def _claim(self, v_node: str, v_disk: str, name: str, occupied: set[str], wanted: str = "") -> str:
        """A new UUID whose prefix this record now holds (the webhook's PrefixClaims: neither can
        hand the same prefix out twice)."""
        for attempt in range(16):
            if wanted and attempt == 0:
                new = wanted
            else:
                try:
                    new = allocate_uuid(occupied, self._rng)
                except PrefixSpaceExhausted:
                    raise RepairError("every one of the 65,536 prefixes is taken: no UUID can be allocated") from None
            try:
                await self.kube.create(CLAIMS, self.opts.namespace, records.claim_manifest(
                    prefix=new[:4], namespace=self.opts.namespace, node=v_node, disk=v_disk, uuid=new, record=name))
                occupied.add(new[:4])
                return new
            except AlreadyExists:
                claim = await self.kube.get_or_none(CLAIMS, self.opts.namespace, new[:4])
                if claim is not None and (claim.get("spec") or {}).get("record") == name:
                    return str(claim["spec"].get("uuid") or new)  # ours, from a run that was killed
                occupied.add(new[:4])
        raise RepairError("could not claim a free prefix after 16 tries (prefix claims keep colliding)")

    async def _create_record(self, world: World, v: Victim, name: str, occupied: set[str],
                             claimed: str = "") -> dict[str, Any]:
        self._act()
        new = await self._claim(v.node, v.disk, name, occupied, claimed)
        dspec = world.disk_spec(v.node, v.disk) or {}
        manifest = records.rewrite_manifest(
            name=name, namespace=self.opts.namespace, node=v.node, disk=v.disk, disk_name=v.disk_name,
            disk_path=v.path, old_uuid=v.uuid, new_uuid=new, origin="job",
            reason=f"prefix {v.prefix} is kept by {v.keep}; {v.reason}",
            original={"allowScheduling": bool(dspec.get("allowScheduling")),
                      "evictionRequested": bool(dspec.get("evictionRequested"))})
        try:
            rec = await self.kube.create(REWRITES, self.opts.namespace, manifest)
        except AlreadyExists:
            rec = await self.kube.get(REWRITES, self.opts.namespace, name)
        self._show(rec, steps.PENDING, f"recorded; new UUID {rec['spec']['newUUID']} claimed")
        return rec

    async def _reopen(self, rec: dict[str, Any], world: World, occupied: set[str]) -> dict[str, Any]:
        """A record Blocked by an earlier run is looked at again (the operator may have fixed what
        blocked it, or passed --evict now): its new UUID is claimed again if the claim lapsed."""
        spec = rec["spec"]
        new = await self._claim(spec["node"], spec["disk"], rec["metadata"]["name"], occupied, spec["newUUID"])
        if new != spec["newUUID"]:
            body = dict(rec)
            body["spec"] = {**spec, "newUUID": new}
            rec = await self.kube.replace(REWRITES, self.opts.namespace, body)
        # The earlier run restored what it set (or crashed before): what is still set stays
        # recorded as set by the Job, what is back to its value is forgotten.
        dspec = world.disk_spec(spec["node"], spec["disk"]) or {}
        old_flags = (rec.get("status") or {}).get("setFlags") or {}
        flags = {f: v for f, v in old_flags.items() if not f.endswith("Restored") and dspec.get(f) == v}
        fresh = {**rec, "status": {**{k: v for k, v in (rec.get("status") or {}).items()
                                      if k not in ("inspection", "finalInspection", "finishedAt", "setFlags")},
                                   "setFlags": flags}}
        return await self._write(fresh, phase=steps.PENDING, step="looked at again by a new run")

    # ------------------------------------------------------------------ passes
    async def _passes(self, planned: dict[str, dict[str, Any]]) -> None:
        """Passes until nothing is left to do in this run or its time is up. Every Job record is
        looked at (those of earlier runs too: a killed run's records are continued, a finished
        one's flags restored); the report covers the records that had something to do."""
        seen: set[str] = set(planned)
        failures = 0
        while True:
            try:
                world = await self.snapshot()
                recs = await self._records()
            except KubeError as exc:
                failures = self._transient(exc, failures)
                await asyncio.sleep(self.opts.poll)
                continue
            ctx = self._context(world, recs)
            decided: list[tuple[str, steps.Action]] = []
            for name in sorted(recs):
                action = steps.decide(recs[name], world, ctx)
                if action.kind == "none":
                    continue
                seen.add(name)
                decided.append((name, action))
                if action.kind == "set-flag" and action.field == "evictionRequested" and action.value:
                    # the later records of this pass count it against --max-parallel
                    ctx = dataclasses.replace(ctx, evicting=ctx.evicting + 1)
            busy = False
            results = await self._execute_all(recs, decided, world)
            if any(isinstance(r, _LostLease) for r in results):
                await self._retake_lease()  # the steps cut short are decided again on the next pass
            for result in results:
                if isinstance(result, _LostLease):
                    busy = True
                elif isinstance(result, Conflict):
                    busy = True  # someone wrote in between: decided again on the next pass
                elif isinstance(result, KubeError):
                    failures = self._transient(result, failures)
                    busy = True
                elif isinstance(result, BaseException):
                    raise result
                else:
                    busy |= result
                    failures = 0
            if not busy or time.monotonic() > self._deadline:
                break
            await asyncio.sleep(self.opts.poll)
        final = await self._records()
        for name in sorted(seen & set(final)):
            r = final[name]
            st = r.get("status") or {}
            phase = st.get("phase") or steps.PENDING
            detail = (st.get("message") if phase in steps.FINAL or phase == steps.BLOCKED else st.get("step")) or ""
            self.report.outcomes.append(Outcome(name, r["spec"]["node"], r["spec"]["disk"], r["spec"]["oldUUID"],
                                                r["spec"]["newUUID"], phase, detail))

    STEPS_AT_ONCE = 8  # records whose steps of a pass run side by side

    async def _execute_all(self, recs: dict[str, dict[str, Any]], decided: list[tuple[str, steps.Action]],
                           world: World) -> list[bool | BaseException]:
        """Each record's step of this pass, side by side: records are independent (their own disk,
        record, claim and pods), and two that write the same Longhorn object (two disks of one
        Node, one BackingImage) meet a 409 and are decided again on the next pass. A pass's time
        is then the slowest step's, not the sum of fifty."""
        limit = asyncio.Semaphore(self.STEPS_AT_ONCE)

        async def one(name: str, action: steps.Action) -> bool:
            async with limit:
                return await self._execute(recs[name], action, world)

        return await asyncio.gather(*(one(n, a) for n, a in decided), return_exceptions=True)

    TRANSIENT = frozenset({429, 500, 502, 503, 504})
    MAX_FAILURES = 20  # consecutive failed steps or reads before the run gives up

    def _transient(self, exc: KubeError, failures: int) -> int:
        """An API error the next pass may not see again (overload, a restarting API server) is
        retried; anything else, or too many in a row, ends the run (every step so far is recorded
        and a re-run continues from there)."""
        if exc.status not in self.TRANSIENT:
            raise RepairError(f"the API server refused a step: {exc.status} {exc.reason}: {exc.message[:300]}") from None
        failures += 1
        if failures >= self.MAX_FAILURES:
            raise RepairError(f"the API server keeps failing ({failures} times in a row, last: {exc.status} "
                              f"{exc.reason}); stopping, a re-run continues from the records") from None
        log.warning("transient API error (%s %s), retrying on the next pass", exc.status, exc.reason)
        return failures

    def _context(self, world: World, recs: dict[str, dict[str, Any]]) -> steps.Context:
        active = [r for r in recs.values() if ((r.get("status") or {}).get("phase") or steps.PENDING) in ACTIVE]
        victims = frozenset((r["spec"]["node"], r["spec"]["disk"]) for r in active)
        uuids: dict[str, int] = {}
        for d in world.v1_disks():
            uuids[d.uuid] = uuids.get(d.uuid, 0) + 1
        clones = frozenset((r["spec"]["node"], r["spec"]["disk"]) for r in active
                           if uuids.get(r["spec"]["oldUUID"].lower(), 0) > 1)
        before_drain = [(r["spec"]["node"], r["spec"]["disk"]) for r in active
                        if ((r.get("status") or {}).get("phase") or steps.PENDING) in (steps.PENDING, steps.PREPARING)]
        unschedulable = all(not (world.disk_spec(*v) or {}).get("allowScheduling") for v in before_drain
                            if world.node_ready(v[0]))
        # A disk counts against --max-parallel from the Job's evictionRequested until the Job puts it back
        # (after the identity change), which is what anyone watching the Longhorn Nodes sees.
        evicting = sum(1 for r in recs.values() if ((r.get("status") or {}).get("setFlags") or {}).get("evictionRequested")
                       and (world.disk_spec(r["spec"]["node"], r["spec"]["disk"]) or {}).get("evictionRequested"))
        s = self.opts.settings
        left = self._deadline - time.monotonic()
        return steps.Context(
            evict=self.opts.evict, max_parallel=self.opts.max_parallel, counts_backing_images=self._counts_bi,
            bim_image=(self._info.bim_image if self._info else "") or "", victims=victims, clones=clones,
            all_unschedulable=unschedulable, evicting=evicting,
            time_for_rewrite=left > s.pod_start_timeout + s.active_deadline + self.opts.poll,
            soft_anti_affinity=world.settings.get("replica-soft-anti-affinity", "false").lower() == "true")

    async def _execute(self, rec: dict[str, Any], action: steps.Action, world: World) -> bool:
        """Carry out one step; True while the record still has work in this run."""
        kind = action.kind
        if kind == "none":
            return False
        if kind in ("wait", "pending"):
            phase = action.phase or (rec.get("status") or {}).get("phase") or steps.PENDING
            await self._step(rec, phase, ("pending: " if kind == "pending" else "") + action.detail)
            return kind == "wait"
        if kind == "set-flag":
            flags = {**((rec.get("status") or {}).get("setFlags") or {}), action.field: action.value}
            rec = await self._write(rec, phase=action.phase, step=action.detail, setFlags=flags)  # intent first
            await self._set_disk_flag(rec, action.field, action.value)
            return True
        if kind == "restore-flag":
            await self._set_disk_flag(rec, action.field, action.value)
            flags = {**((rec.get("status") or {}).get("setFlags") or {}), f"{action.field}Restored": True}
            await self._write(rec, step=action.detail, setFlags=flags)
            return True
        if kind == "delete-replicas":
            deleted = sorted(set(((rec.get("status") or {}).get("deleted") or [])) | {f"replica/{n}" for n in action.names})
            rec = await self._write(rec, phase=action.phase, step=action.detail, deleted=deleted)
            for r in world.replicas:
                if name_of(r) in action.names:
                    await self._delete_stuck_replica(r)
            return True
        if kind == "drop-spec-entries":
            deleted = sorted(set(((rec.get("status") or {}).get("deleted") or [])) |
                             {f"backingimage/{n}/{rec['spec']['oldUUID']}" for n in action.names})
            rec = await self._write(rec, phase=action.phase, step=action.detail, deleted=deleted)
            for bi in action.names:
                await self._drop_spec_entry(bi, rec["spec"]["oldUUID"])
            return True
        if kind == "inspect":
            return await self._inspect(rec, action, world)
        if kind == "block":
            await self.engine.event(rec, "Warning", REASON_BLOCKED,
                                    f"bimguard repair did not change disk {rec['spec']['disk']} ({rec['spec']['oldUUID']}) "
                                    f"on node {rec['spec']['node']}: {action.detail}")
            await self._write(rec, phase=steps.BLOCKED, step=action.detail, message=action.detail, finishedAt=now_rfc3339())
            self._show(rec, steps.BLOCKED, action.detail)
            return True  # its flags are restored on the next passes
        if kind == "rewrite":
            return await self._rewrite(rec, world)
        if kind == "restatus":
            rec = await self._write(rec, phase=action.phase, step=action.detail)
            await self._status_to_new(rec, world, action.phase, "the cfg already holds it", verdict=True)
            return True
        if kind == "follow-rewrite":
            if ((rec.get("status") or {}).get("phase")) != steps.REWRITING:
                await self.engine.begin(rec, f"stored status holds {rec['spec']['newUUID']}; rewriting the cfg")
                self._show(rec, steps.REWRITING, "status changed; rewriter pod started")
                return True
            outcome = await self.engine.advance(rec)
            if outcome == SWAPPED:
                await self._write(rec, phase=steps.RESTORING, step="cfg rewritten; waiting for Longhorn to report the disk Ready")
            elif outcome == FINAL:
                fresh = await self.kube.get(REWRITES, self.opts.namespace, rec["metadata"]["name"])
                self._show(fresh, (fresh.get("status") or {}).get("phase", ""), (fresh.get("status") or {}).get("message", ""))
            return True
        if kind == "done":
            spec = rec["spec"]
            text = (f"disk {spec['disk']} ({spec['diskPath']}) on node {spec['node']}: diskUUID {spec['oldUUID']} -> "
                    f"{spec['newUUID']} by the repair Job (record {rec['metadata']['name']})")
            await self.engine.finish(rec, steps.DONE, action.detail, "Normal", REASON_DONE, event_message=text)
            await self._delete_pods(rec)
            self._show(rec, steps.DONE, action.detail)
            return False
        raise AssertionError(f"unknown action {kind}")

    # ------------------------------------------------------------------ steps that touch Longhorn
    async def _set_disk_flag(self, rec: dict[str, Any], fld: str, value: bool) -> None:
        """spec.disks[disk].<fld> := value on the Longhorn Node, through Longhorn's validator:
        409 and its 403 "being syncing" are retried (lm webhook/resources/node/validator.go:115-117)."""
        spec = rec["spec"]
        for _ in range(5):
            node = await self.kube.get(LH_NODES, self.opts.longhorn_namespace, spec["node"])
            disk = ((node.get("spec") or {}).get("disks") or {}).get(spec["disk"])
            if disk is None or disk.get(fld) == value:
                return
            disk[fld] = value
            self._act()
            try:
                await self.kube.replace(LH_NODES, self.opts.longhorn_namespace, node)
                return
            except (Conflict, Forbidden):
                await asyncio.sleep(min(1.0, self.opts.poll))
        # Still refused: the next pass tries again.

    async def _delete_stuck_replica(self, r: dict[str, Any]) -> None:
        """Delete exactly the replica judged stuck: the resourceVersion it had then is a precondition."""
        self._act()
        try:
            await self.kube.delete(LONGHORN["replicas"], self.opts.longhorn_namespace, name_of(r),
                                   resource_version=r["metadata"].get("resourceVersion"))
        except (NotFound, Conflict):
            pass  # gone already, or changed since: judged again next pass
        except KubeError as exc:  # Longhorn's validator refused (it never should for these)
            log.warning("replica %s not deleted: %s", name_of(r), exc.message)

    async def _drop_spec_entry(self, bi_name: str, uuid: str) -> None:
        """Delete one spec.diskFileSpecMap entry, only while the BackingImage's status still lacks it
        (re-checked on the object written, which carries its resourceVersion)."""
        res = LONGHORN["backingimages"]
        bi = await self.kube.get_or_none(res, self.opts.longhorn_namespace, bi_name)
        if bi is None:
            return
        spec_map = (bi.get("spec") or {}).get("diskFileSpecMap") or {}
        if uuid not in spec_map or uuid in ((bi.get("status") or {}).get("diskFileStatusMap") or {}):
            return
        del spec_map[uuid]
        self._act()
        try:
            await self.kube.replace(res, self.opts.longhorn_namespace, bi)
        except Conflict:
            pass

    async def _inspect(self, rec: dict[str, Any], action: steps.Action, world: World) -> bool:
        key = "finalInspection" if (rec.get("status") or {}).get("inspection") is not None else "inspection"
        attempt = 2 if key == "finalInspection" else 1
        pname = pod_name(rec["metadata"]["name"], attempt, "in")
        pod = world.pods.get(pname)
        if pod is None:
            why = disk_path_refusal(world.nodes.get(rec["spec"]["node"]), rec["spec"])
            if why:  # the same check as for the rewriter pods (bimguard.rewrite.engine)
                await self._step(rec, action.phase, f"no inspector pod: {why}")
                return False
            rec = await self._step(rec, action.phase, action.detail)
            self._act()
            s = self.opts.settings
            try:
                await self.kube.create(PODS, self.engine.pod_namespace, inspector_pod(
                    rec, attempt=attempt, namespace=self.engine.pod_namespace, image=self.opts.image,
                    service_account=s.service_account, priority_class_name=s.priority_class_name,
                    image_pull_secrets=s.image_pull_secrets, tolerations=s.tolerations))
            except AlreadyExists:
                pass
            return True
        phase = (pod.get("status") or {}).get("phase")
        code, message = termination(pod)
        if phase == "Succeeded" or (phase == "Failed" and code == 0):
            try:
                found = json.loads(message)
            except ValueError:
                found = None
            if not isinstance(found, dict):
                await self._step(rec, action.phase, f"pending: inspector pod {pname} said {message[:200]!r}")
                return False
            await self._write(rec, phase=action.phase, step=f"{key}: {len(found.get('replicas') or [])} replica and "
                              f"{len(found.get('backingImages') or [])} backing-image directories", **{key: found})
            self._act()
            await self.kube.delete(PODS, self.engine.pod_namespace, pname)
            return True
        if phase == "Failed":
            detail = f"inspector pod {pname} failed" + (f" (exit {code})" if code is not None else "") + (
                f": {message}" if message else "")
            self._act()
            await self.kube.delete(PODS, self.engine.pod_namespace, pname)  # the next pass runs a fresh one
            await self._step(rec, action.phase, detail)
            return True
        await self._step(rec, action.phase, f"waiting for inspector pod {pname} on node {rec['spec']['node']}")
        return True

    async def _rewrite(self, rec: dict[str, Any], world: World) -> bool:
        """The status half of the identity change, then the rewriter pod for the cfg."""
        spec = rec["spec"]
        rec = await self._write(rec, phase=steps.DRAINING, step="changing the recorded UUID")
        if not await self._status_to_new(rec, world, steps.DRAINING, "waiting for longhorn-disk.cfg to be rewritten"):
            return True
        await self.engine.begin(rec, f"stored status holds {spec['newUUID']}; rewriting the cfg")
        self._show(rec, steps.REWRITING, f"status {spec['oldUUID']} -> {spec['newUUID']}; rewriter pod started")
        return True

    async def _status_to_new(self, rec: dict[str, Any], world: World, phase: str, then: str, *,
                             verdict: bool = False) -> bool:
        """A JSON Patch on the Node's status that tests what the decision saw (the old UUID; nothing
        scheduled on the disk; with `verdict`, the conditions holding Longhorn's "doesn't match"
        verdict the decision rests on) and sets the new UUID with the disk NotReady. False (and the
        step noted) when a test failed: something changed since this pass read it."""
        spec = rec["spec"]
        entry = world.disk_status(spec["node"], spec["disk"]) or {}
        base = "/status/diskStatus/" + pointer_token(spec["disk"])
        ops: list[dict[str, Any]] = [{"op": "test", "path": base + "/diskUUID", "value": spec["oldUUID"]}]
        if (spec["node"], spec["disk"]) not in self._context(world, {rec["metadata"]["name"]: rec}).clones:
            for key in ("scheduledReplica", "scheduledBackingImage"):
                if key in entry:
                    ops.append({"op": "test", "path": f"{base}/{key}", "value": {}})
        if verdict:
            ops.append({"op": "test", "path": f"{base}/conditions", "value": entry.get("conditions")})
        message = (f"bimguard repair changes the UUID of disk {spec['disk']} from {spec['oldUUID']} to "
                   f"{spec['newUUID']}; {then} (DiskRewrite {rec['metadata']['name']})")
        ops += rewrite_patch(spec["disk"], spec["newUUID"], entry.get("conditions") or [], message, now_rfc3339())
        self._act()
        try:
            await self.kube.json_patch_status(LH_NODES, self.opts.longhorn_namespace, spec["node"], ops)
        except Invalid as exc:
            await self._step(rec, phase, f"the status changed meanwhile ({exc.message[:120]}); looking again")
            return False
        return True

    async def _delete_pods(self, rec: dict[str, Any]) -> None:
        for pod in await self.kube.items(PODS, self.engine.pod_namespace, f"{LABEL_MANAGED_BY}=bimguard,"
                                                                           f"{LABEL_RECORD}={rec['metadata']['name']}"):
            self._act()
            await self.kube.delete(PODS, self.engine.pod_namespace, pod["metadata"]["name"])

    def _node_not_ready(self, node: dict[str, Any] | None) -> bool:
        """The Job never gives up on a pod whose node is unreachable: its kubelet may yet run it."""
        if node is None:
            return False
        ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
        return ready.get("status") != "True"

    # ------------------------------------------------------------------ record writes
    async def _write(self, rec: dict[str, Any], **fields: Any) -> dict[str, Any]:
        fields = {k: v for k, v in fields.items() if k != "phase" or v}
        updated = await self.engine.write_status(rec, **fields)
        if fields.get("step"):
            self._show(updated, (updated.get("status") or {}).get("phase") or steps.PENDING, fields["step"])
        return updated

    async def _step(self, rec: dict[str, Any], phase: str, detail: str) -> dict[str, Any]:
        """Write the step only when it changed: waits cost no writes."""
        st = rec.get("status") or {}
        if st.get("step") == detail and (st.get("phase") or steps.PENDING) == (phase or st.get("phase") or steps.PENDING):
            return rec
        self._show(rec, phase or st.get("phase") or steps.PENDING, detail)
        return await self._write(rec, phase=phase, step=detail)

    def _show(self, rec: dict[str, Any], phase: str, detail: str) -> None:
        key = f"{rec['spec']['node']}/{rec['spec']['disk']}"
        line = f"{phase}: {detail}"
        if self._steps.get(key) != line:
            self._steps[key] = line
            self.progress(key, phase, detail)


__all__ = ["Runner", "Options", "Report", "RepairError", "plan_victims", "Victim", "Outcome"]
