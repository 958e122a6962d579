"""Continuous detection: the cluster's existing collision groups, kept current from the index.

The webhook prevents new collisions; clusters also have old ones (recorded before bimguard, or
while it was down or skipped a review). Every replica's list+watch index (webhook/index.py)
already holds what a scan reads -- every Longhorn Node's disks, Replicas, BackingImages, BIMs
and Settings, parsed by the scan's own parsers -- so the scan's analysis runs on it unchanged:
bimguard.collisions.find_groups groups the disks, bimguard.findings.analyze (the same
DependentsIndex and bimguard.plan.plan_group as `bimguard scan`) plans each group. Nothing is
copied.

- Trigger: every index change of a resource the analysis reads pokes the watch; it evaluates
  `debounce` seconds after the first poke (a burst of status writes is one evaluation), and only
  once the index is synced. Grouping the disks is cheap (4.5 ms for 4,000 disks); the whole
  analysis (~65 ms with 72,000 replicas, in a thread) runs only when the set of groups (or the
  Longhorn version) changed.
- Gauge `bimguard_collision_groups{kind}` (prefix, duplicate-uuid) on the metrics port, which
  does not depend on readiness: the groups a scan would report as needing repair, so 0 on
  Longhorn that names BIMs by the whole UUID (v1.9.2+), where groups are informational. Every
  replica exports it (each has the whole index); alert on max().
- Events, only from the leader: one Warning `DiskUUIDPrefixCollision` per group on each affected
  Longhorn Node, with the repair plan, named `<node>.bimguard-collision-<group id>` (a hash of
  the prefix, kind and every member's node, disk and UUID): a resync, a restart or a new leader
  creates the same name and gets 409, so a group is announced once. A group whose prefix no
  longer collides gets one Normal `DiskUUIDPrefixCollisionResolved` on its nodes (groups that
  vanished while no replica watched are not announced as resolved). The chart grants
  create/patch on Events only, so the Warning stays in the Event history until it expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from bimguard.collisions import CollisionGroup, find_groups
from bimguard.findings import Findings, analyze
from bimguard.kube import EVENTS, AlreadyExists, Kube, KubeError
from bimguard.plan import GroupPlan
from webhook.index import ClusterIndex
from webhook.metrics import Metrics

log = logging.getLogger("bimguard.webhook.detection")

REASON_COLLISION = "DiskUUIDPrefixCollision"
REASON_RESOLVED = "DiskUUIDPrefixCollisionResolved"
KINDS = ("prefix", "duplicate-uuid")
LABEL_GROUP = "bimguard.io/collision-group"
COMPONENT = "bimguard-webhook"
# What the analysis reads; changes to PrefixClaims (the index's other resource) do not matter.
RELEVANT = frozenset({"nodes", "replicas", "backingimages", "backingimagemanagers", "settings"})


def group_id(group: CollisionGroup) -> str:
    """Stable across replicas and restarts: the prefix, the kind and every member."""
    text = "|".join([group.prefix, group.kind, *(f"{d.node}/{d.name}/{d.uuid}" for d in group.disks)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def event_name(node: str, gid: str, what: str = "collision") -> str:
    return f"{node[:200]}.bimguard-{what}-{gid}"


def describe(plan: GroupPlan, findings: Findings) -> str:
    """The Warning's message: who collides, what breaks, and the scan's repair plan."""
    g = plan.group
    members = ", ".join(f"{d.node}/{d.name} ({d.uuid})" for d in g.disks)
    bim = findings.longhorn.expected_bim_name(g.disks[0].uuid) or f"backing-image-manager-<image>-{g.prefix}"
    if g.kind == "duplicate-uuid":
        what = f"Disks {members} include cloned disks (the same whole UUID)"
    else:
        what = f"Disks {members} share the UUID prefix {g.prefix}"
    steps = "; ".join(f"regenerate {r.disk.node}/{r.disk.name}: {r.reason}" for r in plan.regenerate)
    return (f"{what} and want the same backing image manager {bim}: Longhorn creates it for one disk only, "
            f"and backing-image copies on the others stay stuck. Repair plan: keep {plan.keep.node}/{plan.keep.name} "
            f"({plan.keep_reason}); {steps}. `bimguard scan` reports the same.")[:1024]


@dataclass(frozen=True)
class Seen:
    """A group as last evaluated."""

    prefix: str
    kind: str
    nodes: tuple[str, ...]
    message: str


class CollisionWatch:
    def __init__(self, index: ClusterIndex, metrics: Metrics, kube: Kube | None, longhorn_namespace: str, *,
                 ready: Callable[[], str | None], leading: Callable[[], bool] = lambda: True,
                 debounce: float = 2.0) -> None:
        self.index = index
        self.metrics = metrics
        self.kube = kube  # None: gauge only, no Events
        self.longhorn_namespace = longhorn_namespace
        self._ready = ready  # () -> why the index cannot be trusted yet, or None
        self._leading = leading
        self.debounce = debounce
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._key: tuple[frozenset[str], str | None] | None = None
        self.groups: dict[str, Seen] = {}  # group id -> the group, as last evaluated
        self.findings: Findings | None = None  # the last full analysis (None: no group)
        self._announced: set[str] = set()  # group ids whose Warnings exist
        self._resolved: dict[str, Seen] = {}  # groups gone, whose Normal Events are still to be created
        self.evaluations = 0
        self.analyses = 0
        index.listeners.append(self._on_change)

    # -- running -------------------------------------------------------------------------------
    def _on_change(self, plural: str) -> None:
        if plural in RELEVANT:
            self._dirty.set()

    def poke(self) -> None:
        """Evaluate again after the debounce (e.g. this replica just became the leader)."""
        self._dirty.set()

    def start(self) -> None:
        self._dirty.set()  # the first evaluation once the index is synced
        self._task = asyncio.create_task(self._run(), name="bimguard-collision-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce)
            self._dirty.clear()
            why_not = self._ready()
            if why_not is not None:
                log.debug("collision watch waits: %s", why_not)
                self._dirty.set()  # look again after the next debounce
                continue
            try:
                await self.evaluate()
            except Exception as err:  # noqa: BLE001 - detection must never take the webhook down
                log.exception("collision watch failed: %r", err)
                self._dirty.set()

    # -- one evaluation ----------------------------------------------------------------------------
    async def evaluate(self) -> None:
        self.evaluations += 1
        groups = find_groups(self.index.scan_disks())
        ids = {group_id(g): g for g in groups}
        key = (frozenset(ids), self.index.longhorn_version)
        leading = self._leading() and self.kube is not None
        if key != self._key:
            await self._analyse(groups)
            self._key = key
        if leading:
            await self._announce()
        else:
            self._resolved.clear()  # only the leader speaks; a later leader announces what is current

    async def _analyse(self, groups: list[CollisionGroup]) -> None:
        findings = None
        if groups:
            self.analyses += 1
            # The scan's analysis, on the same objects. The inventory is copied here, between two
            # index events; the analysis (pure, over immutable records: ~65 ms for 1,000 nodes x
            # 4 disks and 72,000 replicas) runs in a thread so reviews are not held up meanwhile.
            findings = await asyncio.to_thread(analyze, self.index.inventory())
        self.findings = findings
        actionable = findings is not None and not findings.informational
        plans = {group_id(p.group): p for p in findings.plans} if actionable and findings else {}
        counts = Counter(p.group.kind for p in plans.values())
        for kind in KINDS:
            self.metrics.collision_groups.labels(kind).set(counts.get(kind, 0))
        current = {gid: Seen(p.group.prefix, p.group.kind, tuple(sorted({d.node for d in p.group.disks})),
                             describe(p, findings)) for gid, p in plans.items() if findings}
        prefixes_now = {s.prefix for s in current.values()}
        for gid, seen in self.groups.items():
            if gid not in current and seen.prefix not in prefixes_now and gid in self._announced:
                self._resolved[gid] = seen
        for gid in current:
            self._resolved.pop(gid, None)
        self._announced &= set(current)
        self.groups = current
        if plans or self._resolved:
            log.info("collision groups: %d (%s)", len(plans), ", ".join(sorted(s.prefix for s in current.values())) or "none")

    async def _announce(self) -> None:
        failed = False
        for gid, seen in list(self.groups.items()):
            if gid in self._announced:
                continue
            ok = [await self._event(node, gid, "collision", "Warning", REASON_COLLISION, seen.message) for node in seen.nodes]
            if all(ok):
                self._announced.add(gid)
            failed = failed or not all(ok)
        for gid, seen in list(self._resolved.items()):
            message = (f"The disks that shared the UUID prefix {seen.prefix} ({seen.kind}) no longer collide.")
            ok = [await self._event(node, gid, "resolved", "Normal", REASON_RESOLVED, message) for node in seen.nodes]
            if all(ok):
                del self._resolved[gid]
            failed = failed or not all(ok)
        if failed:
            self._dirty.set()  # try again after the debounce

    async def _event(self, node: str, gid: str, what: str, event_type: str, reason: str, message: str) -> bool:
        """Create one Event; True when it exists now (created, or created before)."""
        assert self.kube is not None
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name(node, gid, what), "namespace": self.longhorn_namespace,
                         "labels": {"app.kubernetes.io/managed-by": "bimguard", LABEL_GROUP: gid}},
            "involvedObject": {"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "name": node,
                               "namespace": self.longhorn_namespace, "uid": self.index.node_uid(node)},
            "reason": reason, "message": message, "type": event_type,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            await self.kube.create(EVENTS, self.longhorn_namespace, body)
        except AlreadyExists:
            pass
        except KubeError as err:  # best effort, like client-go's recorder: retried after the debounce
            log.warning("event %s on node %s not recorded: %s", reason, node, err)
            return False
        return True
