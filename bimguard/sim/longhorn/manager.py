"""One simulated longhorn-manager: the per-node process with its monitor and controllers.

Longhorn runs one longhorn-manager pod per node; each runs every controller, and ownership rules
decide who acts (BRIEF §1.3, §1.5): the node controller of every manager sets node-level
conditions, only the manager on the node touches that node's disks; replicas, BIMs and orphans are
handled by the manager of their ``nodeID``; a BackingImage by the manager in its ``status.ownerID``.

Controllers here are level-triggered loops: each wakes on an informer event it cares about
(routed by ``SimCluster._route``), on an explicit trigger (the disk monitor's ``enqueue``), on a
409 requeue, or on the 30 s resync (lm v1.7.2 node_controller.go:46, util/client/client.go:92),
and then reconciles every object it is responsible for. Reads come from the shared informer
cache (``informer.py``; never mutate what it returns without copying), writes go over HTTP through
:class:`LonghornClient` with the cached ``resourceVersion`` and wait for the cache to catch up.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Protocol

from bimguard.sim.clock import SimClock
from bimguard.sim.longhorn import backing_images as bil
from bimguard.sim.longhorn import disks, node_status, orphans, replicas as rl
from bimguard.sim.longhorn.informer import Caches
from bimguard.sim.longhorn.kube import AlreadyExists, Conflict, KubeError, LonghornClient, NotFound
from bimguard.sim.longhorn.logs import ManagerLog
from bimguard.sim.longhorn.monitor import DiskMonitor, HostDisks
from bimguard.sim.uuidgen import UuidGen

log = logging.getLogger("bimguard.sim.longhorn.manager")

RESYNC_PERIOD = 30.0  # Longhorn seconds
REQUEUE_DELAY = 0.5  # Longhorn seconds; client-go's rate limiter starts at 5 ms, we stay gentle
MAX_RETRIES = 3  # lm v1.7.2 controller/base_controller.go maxRetries
SERVICE_ACCOUNT = "system:serviceaccount:longhorn-system:longhorn-service-account"


class ClusterView(Protocol):
    """What a manager needs to know about the rest of the simulated cluster."""

    url: str
    root: Path
    clock: SimClock
    uuids: UuidGen
    bim_image: str
    token: str | None
    cache: Caches

    def manager_up(self, node: str) -> bool: ...

    def leader(self) -> str | None: ...

    def host(self, node: str) -> HostDisks: ...


class Requeue(Exception):
    """Reconcile again soon (409 Conflict and friends)."""


class Loop:
    """A level-triggered controller loop with resync and requeue."""

    def __init__(self, name: str, clock: SimClock, fn: Callable[[], Awaitable[None]], period: float = RESYNC_PERIOD) -> None:
        self.name = name
        self.clock = clock
        self.fn = fn
        self.period = period
        self._ev = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def trigger(self) -> None:
        self._ev.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)
        self.trigger()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A timer that sets the event instead of asyncio.wait_for(): on Python 3.11 a
            # cancellation racing with wait_for's own completion can be lost (gh-86296), which
            # left stop() waiting forever.
            resync = loop.call_later(self.clock.real(self.period), self._ev.set)
            try:
                await self._ev.wait()
            finally:
                resync.cancel()
            self._ev.clear()
            try:
                self.runs += 1
                await self.fn()
            except asyncio.CancelledError:
                raise
            except Requeue:
                asyncio.get_running_loop().call_later(self.clock.real(REQUEUE_DELAY), self._ev.set)
            except Exception:
                log.exception("controller loop %s failed; retrying", self.name)
                asyncio.get_running_loop().call_later(self.clock.real(REQUEUE_DELAY * 4), self._ev.set)

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait(self._task)
            self._task = None


async def cancel_and_wait(task: asyncio.Task[Any], timeout: float = 5.0) -> None:
    """Cancel a task and wait (bounded) until it is done."""
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)
    if not task.done():
        log.error("task %s did not stop within %.1fs", task.get_name(), timeout)


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


def _setting(settings: list[dict[str, Any]], name: str, default: str) -> str:
    for s in settings:
        if s["metadata"]["name"] == name:
            return str(s.get("value", default))
    return default


@dataclass
class _BiRetry:
    count: int = 0


@dataclass
class LonghornManager:
    """The longhorn-manager of one simulated node."""

    cluster: ClusterView
    node_name: str
    kube: LonghornClient = field(init=False)
    cache: Caches = field(init=False)
    log: ManagerLog = field(init=False)
    monitor: DiskMonitor = field(init=False)
    loops: dict[str, Loop] = field(init=False, default_factory=dict)
    _bi_retries: dict[str, _BiRetry] = field(init=False, default_factory=dict)
    _waiting_logged: dict[str, str] = field(init=False, default_factory=dict)
    _evict_failed_logged: set[str] = field(init=False, default_factory=set)
    status_writes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.kube = LonghornClient(
            self.cluster.url, component="longhorn-node-controller", host=self.node_name, token=self.cluster.token
        )
        self.cache = self.cluster.cache
        self.kube.after_write = self.cache.verify
        self.log = ManagerLog(self.node_name)
        self.monitor = DiskMonitor(
            self.node_name, self.cluster.host(self.node_name), self.cluster.uuids, self.cluster.clock,
            self._monitor_fetch, lambda: self.loops["node"].trigger(),
        )
        clock = self.cluster.clock
        self.loops = {
            "node": Loop(f"node-controller-{self.node_name}", clock, self.sync_nodes),
            "replica": Loop(f"replica-controller-{self.node_name}", clock, self.sync_replicas),
            "backingimage": Loop(f"backing-image-controller-{self.node_name}", clock, self.sync_backing_images),
            "bim": Loop(f"backing-image-manager-controller-{self.node_name}", clock, self.sync_bims),
            "orphan": Loop(f"orphan-controller-{self.node_name}", clock, self.sync_orphans),
            "volume": Loop(f"volume-controller-{self.node_name}", clock, self.sync_volumes),
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.monitor.start()
        for loop in self.loops.values():
            loop.start()

    async def stop(self) -> None:
        await self.monitor.stop()
        for loop in self.loops.values():
            await loop.stop()
        await self.kube.close()

    def wake(self, *loops: str) -> None:
        for name in loops:
            self.loops[name].trigger()

    @property
    def host(self) -> HostDisks:
        return self.cluster.host(self.node_name)

    async def _monitor_fetch(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        node = self.cache.peek("nodes", self.node_name)
        if node is None:
            raise NotFound(404, "NotFound", f"node {self.node_name} not in cache yet")
        reps = await self.cache.list("replicas")
        return node, reps

    # ------------------------------------------------------------------ node controller
    async def sync_nodes(self) -> None:
        requeue = False
        settings = await self.cache.list("settings")
        for node in await self.cache.list("nodes"):
            if not self._handles_node(node["metadata"]["name"]):
                continue
            try:
                await self.sync_node(node, settings)
            except Requeue:
                requeue = True
        if requeue:
            raise Requeue()

    def _handles_node(self, name: str) -> bool:
        """Every longhorn-manager syncs every Node, but all of them compute the same node-level
        conditions; only the owner touches disks (node_controller.go:433). To keep large clusters
        cheap the sim lets the owner sync its node and the leader sync nodes whose manager is down
        or missing -- the writes the API server sees are the same."""
        if name == self.node_name:
            return True
        return self.cluster.leader() == self.node_name and not self.cluster.manager_up(name)

    async def sync_node(self, node: dict[str, Any], settings: list[dict[str, Any]]) -> None:
        """lm v1.7.2 node_controller.go:363 syncNode with its deferred status write (line 396).

        ``node`` comes from the informer cache, so the PUT carries the cached resourceVersion.
        """
        name = node["metadata"]["name"]
        owner = name == self.node_name
        if node["metadata"].get("deletionTimestamp"):
            # lm node_controller.go:387: Event "Deleting node" and drop the finalizer.
            if node["metadata"].get("finalizers"):  # _handles_node picked exactly one manager
                await self.kube.event(node, "Warning", "Delete", f"Deleting node {name}")
                node = copy.deepcopy(node)
                node["metadata"]["finalizers"] = []
                try:
                    await self.kube.replace("nodes", node)
                except (Conflict, NotFound):
                    pass
            return
        now = SimClock.now_rfc3339()
        sched = node_status.SchedulingSettings(
            int(_setting(settings, "storage-minimal-available-percentage", "25")),
            int(_setting(settings, "storage-over-provisioning-percentage", "100")),
        )
        reps: list[dict[str, Any]] = []
        bims: list[dict[str, Any]] = []
        if owner:
            reps = await self.cache.list("replicas")
            bims = await self.cache.list("backingimagemanagers")
        collected = self.monitor.collected if owner else None
        result = node_status.sync_node_status(
            node, collected, reps, bims, now, owner=owner,
            manager_up=self.cluster.manager_up(name), settings=sched,
        )
        if result.disk_part_skipped:
            self.log.emit(
                "info", "Failed to sync with disk monitor due to mismatching disks", "controller.(*NodeController).syncNode",
                "node_controller.go:452", controller="longhorn-node", error="mismatching disks in node resource object and monitor collected data",
            )
        if owner and not result.disk_part_skipped:
            for rl_ in result.relinks:
                await self._relink(rl_)
            new_node = {**node, "status": result.status}
            await self._sync_orphans_for_node(new_node, settings)
            await self._sync_evictions(new_node, reps)
        if result.status != (node.get("status") or {}):
            body = copy.deepcopy(node)
            body["status"] = result.status
            try:
                await self.kube.replace_status("nodes", body)
                self.status_writes += 1
            except Conflict:
                # lm node_controller.go:398-401: requeue on conflict, nothing else.
                raise Requeue() from None
            except NotFound:
                return
        if result.events:
            await asyncio.gather(*(self.kube.event(node, ev.type, ev.reason, ev.message) for ev in result.events))

    async def _relink(self, r: node_status.Relink) -> None:
        """Re-link a Replica/BIM to the disk that now carries its UUID (lm node_controller.go:830-870)."""
        try:
            obj = await self.cache.get(r.kind, r.name)
            obj["spec"]["nodeID"] = r.node_id
            obj["spec"]["diskPath"] = r.disk_path
            if r.kind == "replicas":
                obj["metadata"].setdefault("labels", {})["longhornnode"] = r.node_id
            else:
                obj["metadata"].setdefault("labels", {})["longhorn.io/node"] = r.node_id
            if r.kind == "backingimagemanagers":  # only the BIM path logs (line 837); replicas are silent
                self.log.emit("info", f"Node Controller: updating Node & disk info in backing image manager {r.name}",
                              "controller.(*NodeController).updateDiskStatusSchedulableCondition", "node_controller.go:837",
                              controller="longhorn-node")
            await self.kube.replace(r.kind, obj)
        except (Conflict, NotFound):
            self.loops["node"].trigger()

    async def _sync_orphans_for_node(self, node: dict[str, Any], settings: list[dict[str, Any]]) -> None:
        """lm v1.7.2 node_controller.go:1502-1630 syncOrphans/createOrphan/deleteOrphans."""
        collected = self.monitor.collected or {}
        mine = [o for o in await self.cache.list("orphans") if (o.get("spec") or {}).get("nodeID") == self.node_name]
        for disk_name, info in collected.items():
            new, missing = orphans.orphan_diff(self.node_name, disk_name, info.disk_uuid, info.path, info.orphaned_dirs, mine)
            for data_dir in sorted(new):
                try:
                    await self.kube.create("orphans", orphans.orphan_manifest(node, disk_name, info.disk_uuid, data_dir))
                except AlreadyExists:
                    pass
            for oname in missing:
                await self._delete_orphan(oname, touch_data=False)
        auto = _setting(settings, "orphan-auto-deletion", "false").lower() == "true"
        for o in await self.cache.list("orphans"):
            if (o.get("status") or {}).get("ownerID") != self.node_name:
                continue
            dc = node_status.get_condition((o.get("status") or {}).get("conditions"), "DataCleanable").get("status")
            if dc == "Unknown":
                continue
            if auto or dc == "False":
                # Only an auto-deleted *cleanable* orphan takes its data along; one deleted because
                # DataCleanable=False must never touch the directory, even if its status has
                # flipped to True since we looked (orphan_controller.go:293).
                await self._delete_orphan(o["metadata"]["name"], touch_data=auto and dc == "True")

    async def _delete_orphan(self, name: str, *, touch_data: bool) -> None:
        """Delete an Orphan CR; with DataCleanable=True its directory goes too (orphan_controller.go:272).

        The sim deletes the data before the CR instead of in a finalizer, so the outcome is the same
        whether or not the emulated API server implements finalizers.
        """
        obj = await self.cache.get_or_none("orphans", name)
        if obj is None:
            return
        if touch_data and (obj.get("spec") or {}).get("nodeID") == self.node_name:
            if orphans.delete_orphan_data(self.host.dir, obj):
                params = obj["spec"]["parameters"]
                self.log.emit("info", f"Deleting orphan {name} replica data store {params.get('DataName')} in disk "
                              f"{params.get('DiskPath')} on node {self.node_name}",
                              "controller.(*OrphanController).deleteOrphanedReplica", "orphan_controller.go:314",
                              controller="longhorn-orphan")
        if obj["metadata"].get("finalizers"):
            obj["metadata"]["finalizers"] = []
            try:
                await self.kube.replace("orphans", obj)
            except (Conflict, NotFound):
                pass
        await self.kube.delete("orphans", name)

    async def _sync_evictions(self, node: dict[str, Any], reps: list[dict[str, Any]]) -> None:
        """lm v1.7.2 node_controller.go:1843 (replicas) and :1780 (backing-image copies)."""
        status = node["status"]
        for rname, want in node_status.eviction_updates(node, status, reps).items():
            r = await self.cache.get_or_none("replicas", rname)
            if r is None:
                continue
            r["spec"]["evictionRequested"] = want
            try:
                await self.kube.replace("replicas", r)
            except Conflict:
                self.loops["node"].trigger()
                continue
            verb = "Requesting" if want else "Cancelling"
            await self.kube.event(r, "Normal", "EvictionUserRequested" if want else "EvictionCanceled",
                                  f"{verb} replica {rname} eviction from node {self.node_name} and disk {r['spec'].get('diskID')}")
        bis = await self.cache.list("backingimages")
        for bi_name, uuid, want in node_status.backing_image_eviction_updates(node, status, bis):
            bi = await self.cache.get_or_none("backingimages", bi_name)
            if bi is None or uuid not in ((bi.get("spec") or {}).get("diskFileSpecMap") or {}):
                continue
            bi["spec"]["diskFileSpecMap"][uuid]["evictionRequested"] = want
            try:
                await self.kube.replace("backingimages", bi)
            except Conflict:
                self.loops["node"].trigger()

    # ------------------------------------------------------------------ replica controller
    async def sync_replicas(self) -> None:
        await self._sync_on_this_node("replicas", self.sync_replica)

    async def sync_replica(self, r: dict[str, Any], node: Mapping[str, Any]) -> None:
        r = copy.deepcopy(r)  # cached objects are shared (informer.py)
        name = r["metadata"]["name"]
        if r["metadata"].get("deletionTimestamp"):
            # lm v1.7.2 replica_controller.go:254-285: the owner deletes the data directory of an
            # active replica (the sim only runs active ones), then drops the finalizer.
            spec = r.get("spec") or {}
            data_dir = spec.get("dataDirectoryName", "")
            if spec.get("active", True) and "-" in data_dir:
                target = self.host.dir(spec.get("diskPath", "")) / disks.REPLICA_DIRECTORY / data_dir
                if target.exists():
                    self.log.emit("info", "Cleaning up replica", "controller.(*ReplicaController).syncReplica",
                                  "replica_controller.go:275", controller="longhorn-replica", replica=name)
                    shutil.rmtree(target, ignore_errors=True)
            if r["metadata"].get("finalizers"):
                r["metadata"]["finalizers"] = []
                try:
                    await self.kube.replace("replicas", r)
                except (Conflict, NotFound):
                    pass
            return
        status = copy.deepcopy(r.get("status") or {})
        status["ownerID"] = self.node_name
        disk_uuid = r["spec"].get("diskID", "")
        disk_entry = None
        for entry in ((node.get("status") or {}).get("diskStatus") or {}).values():
            if entry.get("diskUUID") == disk_uuid:
                disk_entry = entry
        now = SimClock.now_rfc3339()
        start = r["spec"].get("desireState") == "running"
        if start and disk_entry is None:
            # lm replica_controller.go:394 getDiskNameFromUUID
            self.log.emit("error", f"cannot find disk name for replica {name}", "controller.(*ReplicaController).CreateInstance",
                          "replica_controller.go:404", controller="longhorn-replica", replica=name)
            start = False
        if start and r["spec"].get("backingImage"):
            bi_name = r["spec"]["backingImage"]
            bi = self.cache.peek("backingimages", bi_name)  # read-only; copied before mutating
            state, cur = rl.backing_image_wait_state(r, bi)
            if state == "add-spec" and bi is not None:
                bi = copy.deepcopy(bi)
                bi.setdefault("spec", {}).setdefault("diskFileSpecMap", {})
                if bi["spec"]["diskFileSpecMap"] is None:
                    bi["spec"]["diskFileSpecMap"] = {}
                bi["spec"]["diskFileSpecMap"][disk_uuid] = {"evictionRequested": False}
                self.log.emit("info", f"Asking backing image {bi_name} to download file to node {r['spec'].get('nodeID')} disk {disk_uuid}",
                              "controller.(*ReplicaController).GetBackingImagePathForReplicaStarting", "replica_controller.go:431",
                              controller="longhorn-replica", replica=name)
                try:
                    await self.kube.replace("backingimages", bi)
                except Conflict:
                    raise Requeue() from None
            if state != "ready":
                if self._waiting_logged.get(name) != cur or state == "add-spec":
                    self.log.emit(
                        "info",
                        f"Waiting for backing image {bi_name} to download file to node {r['spec'].get('nodeID')} disk {disk_uuid}, the current state is {cur}",
                        "controller.(*ReplicaController).GetBackingImagePathForReplicaStarting", "replica_controller.go:442",
                        controller="longhorn-replica", replica=name,
                    )
                    self._waiting_logged[name] = cur
                status["conditions"] = node_status.set_condition(
                    status.get("conditions"), "WaitForBackingImage", "True", "Waiting", "", now, [], "Normal")
                start = False
            else:
                self._waiting_logged.pop(name, None)
                status["conditions"] = node_status.set_condition(
                    status.get("conditions"), "WaitForBackingImage", "False", "", "", now, [], "Normal")
        if start:
            ddir = self.host.dir(r["spec"].get("diskPath", "")) / disks.REPLICA_DIRECTORY / r["spec"].get("dataDirectoryName", "")
            meta = ddir / disks.VOLUME_META
            if not meta.exists():
                ddir.mkdir(parents=True, exist_ok=True)
                meta.write_text('{"Size":%s,"Head":"volume-head-000.img","Dirty":false}' % r["spec"].get("volumeSize", "0"))
            status.update(currentState="running", started=True, instanceManagerName=node_status.instance_manager_name(self.node_name),
                          currentImage=r["spec"].get("image", ""), ip="10.42.0.1", storageIP="10.42.0.1", port=10000)
        else:
            status.update(currentState="stopped", started=False, ip="", storageIP="", port=0, instanceManagerName="",
                          currentImage="")
        status.setdefault("conditions", [])
        status.setdefault("evictionRequested", False)
        status.setdefault("logFetched", False)
        status.setdefault("salvageExecuted", False)
        if status != (r.get("status") or {}):
            body = copy.deepcopy(r)
            body["status"] = status
            try:
                r = await self.kube.replace_status("replicas", body)
            except Conflict:
                raise Requeue() from None
            except NotFound:
                return
        if start and not r["spec"].get("healthyAt"):
            r["spec"]["healthyAt"] = now
            r["spec"]["lastHealthyAt"] = now
            try:
                await self.kube.replace("replicas", r)
            except Conflict:
                raise Requeue() from None

    # ------------------------------------------------------------------ backing image controller
    def _responsible_for_bi(self, bi: Mapping[str, Any]) -> bool:
        owner = (bi.get("status") or {}).get("ownerID", "")
        if owner and self.cluster.manager_up(owner):
            return owner == self.node_name
        return self.cluster.leader() == self.node_name

    async def sync_backing_images(self) -> None:
        requeue = False
        for bi in await self.cache.list("backingimages"):
            if not self._responsible_for_bi(bi):
                continue
            key = f"{self.kube.namespace}/{bi['metadata']['name']}"
            try:
                await self.sync_backing_image(bi)
                self._bi_retries.pop(key, None)
            except Requeue:
                requeue = True
            except _BiSyncError as exc:
                # lm v1.7.2 backing_image_controller.go:160 handleErr + utils.go:79 handleReconcileErrorLogging
                retry = self._bi_retries.setdefault(key, _BiRetry())
                msg = "Failed to sync Longhorn backing image" if retry.count < MAX_RETRIES else "Dropping Longhorn backing image out of the queue"
                self.log.emit("error", msg, "controller.handleReconcileErrorLogging", "utils.go:79",
                              BackingImage=key, controller="longhorn-backing-image", error=str(exc))
                if retry.count < MAX_RETRIES:
                    retry.count += 1
                    requeue = True
                else:
                    self._bi_retries.pop(key, None)  # Forget: back on the next event or resync
        if requeue:
            raise Requeue()

    async def sync_backing_image(self, bi: dict[str, Any]) -> None:
        """lm v1.7.2 backing_image_controller.go:186 syncBackingImage (no BIDS, no v2)."""
        bi = copy.deepcopy(bi)
        name = bi["metadata"]["name"]
        key = f"{self.kube.namespace}/{name}"
        if bi["metadata"].get("deletionTimestamp"):
            return
        status = bi.setdefault("status", {}) or {}
        bi["status"] = status
        if status.get("ownerID") != self.node_name:
            status["ownerID"] = self.node_name
            try:
                bi = await self.kube.replace_status("backingimages", bi)
            except Conflict:
                return  # "we don't mind others coming first"
        if not (bi.get("status") or {}).get("uuid"):
            bi["status"]["uuid"] = self.cluster.uuids.random_id()
            try:
                bi = await self.kube.replace_status("backingimages", bi)
            except Conflict:
                raise Requeue() from None
            await self.kube.event(bi, "Normal", "Update", f"Initialized UUID to {bi['status']['uuid']}")
        existing = copy.deepcopy(bi)
        st = bi["status"]
        if st.get("diskFileStatusMap") is None:
            st["diskFileStatusMap"] = {}
        if st.get("diskLastRefAtMap") is None:
            st["diskLastRefAtMap"] = {}
        spec_map = (bi.get("spec") or {}).get("diskFileSpecMap")
        if spec_map is None:
            return
        try:
            await self._handle_bims(bi)
        except _BiSyncError as exc:
            raise _BiSyncError(f"failed to sync backing image for {key}: {exc}") from None
        now = SimClock.now_rfc3339()
        bims = await self.cache.list("backingimagemanagers")
        st["diskFileStatusMap"] = bil.file_status_from_bims(bi, bims, now)
        ready_files = [f for f in st["diskFileStatusMap"].values() if f.get("state") == "ready"]
        if ready_files:
            st["size"] = len(bil.BACKING_FILE_CONTENT)
            st["virtualSize"] = len(bil.BACKING_FILE_CONTENT)
            st.setdefault("checksum", "")
            if not st["checksum"]:
                st["checksum"] = hashlib.sha512(bil.BACKING_FILE_CONTENT).hexdigest()
        st["diskLastRefAtMap"] = bil.last_ref_map(bi, await self.cache.list("replicas"), now)
        await self._replenish(bi)
        for u in bil.evicted_copies_to_drop(bi):
            del bi["spec"]["diskFileSpecMap"][u]
        # Deferred writes (lines 264-281): spec first, then status.
        if bi.get("spec") != existing.get("spec"):
            try:
                bi = {**(await self.kube.replace("backingimages", bi)), "status": bi["status"]}
            except Conflict:
                raise Requeue() from None
        if bi.get("status") != existing.get("status"):
            try:
                await self.kube.replace_status("backingimages", bi)
            except Conflict:
                raise Requeue() from None

    async def _handle_bims(self, bi: dict[str, Any]) -> None:
        """lm v1.7.2 backing_image_controller.go:693 handleBackingImageManagers, AlreadyExists and all."""
        name = bi["metadata"]["name"]
        image = self.cluster.bim_image
        bi_uuid = bi["status"]["uuid"]
        spec_map = bi["spec"]["diskFileSpecMap"] or {}
        # cleanupBackingImageManagers (line 442), reduced: drop this BI from BIMs of disks it left.
        for bim in await self.cache.list("backingimagemanagers"):
            bim = copy.deepcopy(bim)
            bis = (bim.get("spec") or {}).get("backingImages") or {}
            if name in bis and (bim.get("spec") or {}).get("diskUUID") not in spec_map:
                del bim["spec"]["backingImages"][name]
                try:
                    await self.kube.replace("backingimagemanagers", bim)
                except (Conflict, NotFound):
                    raise Requeue() from None
        nodes = await self.cache.list("nodes")
        for uuid in list(spec_map):
            found = False
            required: dict[str, str] = {}
            for bim in await self.cache.list("backingimagemanagers", f"longhorn.io/disk-uuid={uuid}"):
                bim = copy.deepcopy(bim)
                if not bim["metadata"].get("deletionTimestamp") and bim["spec"].get("image") == image:
                    if bim["spec"].get("backingImages", {}).get(name) != bi_uuid:
                        bim["spec"].setdefault("backingImages", {})[name] = bi_uuid
                        try:
                            await self.kube.replace("backingimagemanagers", bim)
                        except Conflict:
                            raise Requeue() from None
                    found = True
                    break
                required.update(bim["spec"].get("backingImages") or {})
            if found:
                continue
            self.log.emit("info", f"Creating default backing image manager for disk {uuid}",
                          "controller.(*BackingImageController).handleBackingImageManagers", "backing_image_controller.go:731",
                          backingImageName=name, controller="longhorn-backing-image")
            disk = next((d for d in bil.ready_disks(nodes) if d.uuid == uuid), None)
            if disk is None:
                self.log.emit("warning", "Disk is not ready hence backing image manager can not be created",
                              "controller.(*BackingImageController).handleBackingImageManagers", "backing_image_controller.go:738",
                              backingImageName=name, controller="longhorn-backing-image", diskUUID=uuid)
                continue
            required[name] = bi_uuid
            manifest = bil.bim_manifest(image, disk.node, uuid, disk.path, required)
            try:
                created = await self.kube.create("backingimagemanagers", manifest)
            except AlreadyExists:
                raise _BiSyncError(
                    f"failed to handle backing image managers: backingimagemanagers.longhorn.io "
                    f"\"{manifest['metadata']['name']}\" already exists"
                ) from None
            except KubeError as exc:
                raise _BiSyncError(f"failed to handle backing image managers: {exc.message}") from None
            await self.kube.event(bi, "Normal", "Create",
                                  f"created default backing image manager {created['metadata']['name']} in disk {uuid} on node {disk.node}")

    async def _replenish(self, bi: dict[str, Any]) -> None:
        """Simplified replenishBackingImageCopies (line 316): add random ready disks up to minNumberOfCopies."""
        spec_map = bi["spec"]["diskFileSpecMap"]
        want = int((bi.get("spec") or {}).get("minNumberOfCopies") or 0)
        healthy = [u for u, s in spec_map.items() if not (s or {}).get("evictionRequested")]
        if len(healthy) >= want:
            return
        nodes = await self.cache.list("nodes")
        for d in sorted(bil.ready_disks(nodes), key=lambda d: (d.node, d.disk_name)):
            if len(healthy) >= want:
                break
            if d.uuid in spec_map or d.evicting or not d.allow_scheduling or not d.schedulable:
                continue
            spec_map[d.uuid] = {"evictionRequested": False}
            healthy.append(d.uuid)

    # ------------------------------------------------------------------ BIM controller
    async def sync_bims(self) -> None:
        await self._sync_on_this_node("backingimagemanagers", self.sync_bim)

    async def _sync_on_this_node(
        self, plural: str, sync: Callable[[dict[str, Any], Mapping[str, Any]], Awaitable[None]]
    ) -> None:
        """Sync every cached object of `plural` whose spec.nodeID is this manager's node; one
        conflict requeues the whole pass, after the others had their turn."""
        node = self.cache.peek("nodes", self.node_name)  # read-only
        if node is None:
            return
        requeue = False
        for obj in await self.cache.list(plural):
            if (obj.get("spec") or {}).get("nodeID") != self.node_name:
                continue
            try:
                await sync(obj, node)
            except Requeue:
                requeue = True
        if requeue:
            raise Requeue()

    async def sync_bim(self, bim: dict[str, Any], node: Mapping[str, Any]) -> None:
        """A BIM "pod" that downloads instantly (lm backing_image_manager_controller.go, heavily reduced)."""
        bim = copy.deepcopy(bim)
        spec = bim.get("spec") or {}
        wanted = dict(spec.get("backingImages") or {})
        if bim["metadata"].get("deletionTimestamp"):
            if bim["metadata"].get("finalizers"):
                bim["metadata"]["finalizers"] = []
                try:
                    await self.kube.replace("backingimagemanagers", bim)
                except (Conflict, NotFound):
                    pass
            return
        if not wanted:
            # BIMs with no backing images left are deleted (BRIEF §5).
            await self._delete_bim(bim)
            return
        status = copy.deepcopy(bim.get("status") or {})
        status.update(ownerID=self.node_name, apiMinVersion=3, apiVersion=3)
        disk_ok = any(
            e.get("diskUUID") == spec.get("diskUUID")
            and node_status.get_condition(e.get("conditions"), "Ready").get("status") == "True"
            for e in ((node.get("status") or {}).get("diskStatus") or {}).values()
        )
        files: dict[str, Any] = {}
        if not disk_ok:
            # line 245 ff.: state unknown, files unknown, pod left alone
            status.update(currentState="unknown", ip="", storageIP="")
            for bi_name, f in (status.get("backingImageFileMap") or {}).items():
                files[bi_name] = {**f, "state": "unknown"}
        else:
            base = self.host.dir(spec.get("diskPath", "")) / disks.BACKING_IMAGE_DIRECTORY
            for bi_name, bi_uuid in wanted.items():
                fdir = base / f"{bi_name}-{bi_uuid}"
                backing = fdir / "backing"
                if backing.exists():
                    files[bi_name] = bil.bim_file_entry(bi_name, bi_uuid, "ready", 100)
                    continue
                # The "download" takes one sync: report in-progress now, ready next time (about
                # one Longhorn second later), so BackingImage and Replica pass through the same
                # states as on a real cluster.
                fdir.mkdir(parents=True, exist_ok=True)
                backing.write_bytes(bil.BACKING_FILE_CONTENT)
                files[bi_name] = bil.bim_file_entry(bi_name, bi_uuid, "in-progress", 50)
                asyncio.get_running_loop().call_later(self.cluster.clock.real(1.0), self.loops["bim"].trigger)
            if base.is_dir():
                keep = {f"{n}-{u}" for n, u in wanted.items()}
                for d in base.iterdir():
                    if d.is_dir() and d.name not in keep:
                        shutil.rmtree(d, ignore_errors=True)
            status.update(currentState="running", ip="10.42.0.2", storageIP="10.42.0.2")
        status["backingImageFileMap"] = files
        if status != (bim.get("status") or {}):
            body = copy.deepcopy(bim)
            body["status"] = status
            try:
                await self.kube.replace_status("backingimagemanagers", body)
            except Conflict:
                raise Requeue() from None
            except NotFound:
                pass

    async def _delete_bim(self, bim: dict[str, Any]) -> None:
        bim = copy.deepcopy(bim)
        if bim["metadata"].get("finalizers"):
            bim["metadata"]["finalizers"] = []
            try:
                bim = await self.kube.replace("backingimagemanagers", bim)
            except (Conflict, NotFound):
                return
        await self.kube.delete("backingimagemanagers", bim["metadata"]["name"])

    # ------------------------------------------------------------------ orphan controller
    async def sync_orphans(self) -> None:
        """lm v1.7.2 orphan_controller.go:201 reconcile for orphans of this node."""
        node = self.cache.peek("nodes", self.node_name)  # read-only
        now = SimClock.now_rfc3339()
        for o in await self.cache.list("orphans"):
            if (o.get("spec") or {}).get("nodeID") != self.node_name:
                continue
            if o["metadata"].get("deletionTimestamp"):
                # User deleted the Orphan: clean the data if cleanable, then drop the finalizer.
                await self._delete_orphan(o["metadata"]["name"], touch_data=True)
                continue
            status = orphans.orphan_status(o, node, self.cluster.manager_up(self.node_name), self.node_name, now)
            if status != (o.get("status") or {}):
                body = copy.deepcopy(o)
                body["status"] = status
                try:
                    await self.kube.replace_status("orphans", body)
                except (Conflict, NotFound):
                    raise Requeue() from None

    # ------------------------------------------------------------------ volume model (eviction)
    async def sync_volumes(self) -> None:
        if self.cluster.leader() != self.node_name:
            return
        reps = await self.cache.list("replicas")
        nodes = await self.cache.list("nodes")
        ready = bil.ready_disks(nodes)
        for r in reps:
            if not r["spec"].get("evictionRequested") or r["metadata"].get("deletionTimestamp"):
                continue
            name = r["metadata"]["name"]
            volume = _labels(r).get("longhornvolume", r["spec"].get("volumeName", ""))
            vol_reps = rl.replicas_of_volume(reps, volume)
            replacement = next((x for x in vol_reps if (x["metadata"].get("annotations") or {}).get(rl.REPLACES_ANNOTATION) == name), None)
            if replacement is None:
                target = rl.choose_eviction_target(vol_reps, ready)
                if target is None:
                    if name not in self._evict_failed_logged:
                        self._evict_failed_logged.add(name)
                        self.log.emit("warning", f"Failed to evict replica {name}: no other disk fits (replica anti-affinity)",
                                      "controller.(*VolumeController).ReconcileVolumeState", "volume_controller.go:1093",
                                      controller="longhorn-volume", volume=volume)
                    continue
                self._evict_failed_logged.discard(name)
                suffix = self.cluster.uuids.random_id()
                manifest = rl.replica_manifest(
                    f"{volume}-r-{suffix}", volume, target.node, target.path, target.uuid,
                    int(r["spec"].get("volumeSize") or 0), f"{volume}-{self.cluster.uuids.random_id()}",
                    r["spec"].get("backingImage") or None,
                )
                manifest["metadata"]["annotations"] = {rl.REPLACES_ANNOTATION: name}
                await self.kube.create("replicas", manifest)
                self.log.emit("info", f"Creating replacement replica {manifest['metadata']['name']} for evicting replica {name}",
                              "controller.(*VolumeController).replenishReplicas", "volume_controller.go:1093",
                              controller="longhorn-volume", volume=volume)
                continue
            others_running = [x for x in vol_reps if x is not r and rl.is_running(x) and not x["spec"].get("evictionRequested")]
            if others_running:
                await self._delete_replica(r)

    async def _delete_replica(self, r: dict[str, Any]) -> None:
        """Delete the evicted Replica; its owner's replica controller cleans the data directory and
        drops the finalizer (see sync_replica), as in Longhorn."""
        await self.kube.delete("replicas", r["metadata"]["name"])


class _BiSyncError(Exception):
    """A BackingImage reconcile error: the deferred spec/status write is skipped (line 264)."""
