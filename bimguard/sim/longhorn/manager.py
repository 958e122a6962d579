"""One simulated longhorn-manager: the per-node process with its monitor and controllers.

Longhorn runs one longhorn-manager pod per node; each runs every controller, and ownership rules
decide who acts: the node controller of every manager sets node-level conditions, only the
manager on the node touches that node's disks (``controller/node_controller.go:427-435 @v1.7.2``);
replicas, BIMs and orphans are handled by the manager of their ``nodeID``; a BackingImage by the
manager in its ``status.ownerID``.

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
import random
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bimguard.sim.clock import SimClock
from bimguard.sim.longhorn import Release, disks, node_status, orphans
from bimguard.sim.longhorn import backing_images as bil
from bimguard.sim.longhorn import replicas as rl
from bimguard.sim.longhorn import volumes as vl
from bimguard.sim.longhorn.informer import Caches
from bimguard.sim.longhorn.kube import (
    AlreadyExists,
    Conflict,
    KubeError,
    LonghornClient,
    NotFound,
)
from bimguard.sim.longhorn.logs import ManagerLog
from bimguard.sim.longhorn.monitor import DiskMonitor, HostDisks
from bimguard.sim.longhorn.volume_controller import VolumeControllers
from bimguard.sim.uuidgen import UuidGen

log = logging.getLogger("bimguard.sim.longhorn.manager")

RESYNC_PERIOD = 30.0  # Longhorn seconds
DOWNLOAD_SECONDS = 5.0  # Longhorn seconds a data source takes to download its file
ENGINE_MONITOR_PERIOD = 5.0  # lm v1.7.2 controller/engine_controller.go:58 EnginePollInterval
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
    release: Release
    rng: random.Random  # stands in for Go's map order and Longhorn's random choices
    rebuild_seconds: float

    def manager_up(self, node: str) -> bool: ...

    def leader(self) -> str | None: ...

    def host(self, node: str) -> HostDisks: ...

    def manager_crashed(self, node: str, panic: node_status.ManagerPanic) -> None: ...


class Requeue(Exception):
    """Reconcile again soon (409 Conflict and friends)."""


class Loop:
    """A level-triggered controller loop with resync and requeue."""

    def __init__(self, name: str, clock: SimClock, fn: Callable[[], Awaitable[None]], period: float = RESYNC_PERIOD,
                 on_panic: Callable[[node_status.ManagerPanic], None] | None = None) -> None:
        self.name = name
        self.on_panic = on_panic
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
            except node_status.ManagerPanic as panic:
                # runtime.HandleCrash re-panics (ReallyCrash=true): the whole process exits.
                if self.on_panic is not None:
                    self.on_panic(panic)
                return
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
    _start_failures: dict[str, str] = field(init=False, default_factory=dict)
    _downloads: dict[str, float] = field(init=False, default_factory=dict)  # data source -> done at (Longhorn s)
    volumes: VolumeControllers = field(init=False)
    status_writes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.kube = LonghornClient(self.cluster.url, component="longhorn-node-controller", host=self.node_name,
                                   shared=self.cluster.kube)
        self.cache = self.cluster.cache
        self.kube.after_write = self.cache.verify
        self.log = ManagerLog(self.node_name)
        self.monitor = DiskMonitor(
            self.node_name, self.cluster.host(self.node_name), self.cluster.uuids, self.cluster.clock,
            self._monitor_fetch, lambda: self.loops["node"].trigger(),
        )
        clock = self.cluster.clock
        self.loops = {
            "node": Loop(f"node-controller-{self.node_name}", clock, self.sync_nodes, on_panic=self._panicked),
            "replica": Loop(f"replica-controller-{self.node_name}", clock, self.sync_replicas),
            "backingimage": Loop(f"backing-image-controller-{self.node_name}", clock, self.sync_backing_images),
            "bim": Loop(f"backing-image-manager-controller-{self.node_name}", clock, self.sync_bims),
            "bids": Loop(f"backing-image-data-source-controller-{self.node_name}", clock, self.sync_data_sources),
            "orphan": Loop(f"orphan-controller-{self.node_name}", clock, self.sync_orphans),
            "volume": Loop(f"volume-controller-{self.node_name}", clock, self.sync_volumes),
            "engine": Loop(f"engine-controller-{self.node_name}", clock, self.sync_engines, period=ENGINE_MONITOR_PERIOD),
        }
        self.volumes = VolumeControllers(self, self.cluster.rng)

    # ------------------------------------------------------------------ lifecycle
    def _panicked(self, panic: node_status.ManagerPanic) -> None:
        self.log.panic(panic.message, "controller.(*NodeController).syncBackingImageEvictionRequested", panic.where)
        self.cluster.manager_crashed(self.node_name, panic)

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
        for node in self._handled_nodes():
            try:
                await self.sync_node(node, settings)
            except Requeue:
                requeue = True
        if requeue:
            raise Requeue()

    def _handled_nodes(self) -> list[dict[str, Any]]:
        """Every longhorn-manager syncs every Node, but all of them compute the same node-level
        conditions; only the owner touches disks (node_controller.go:433). To keep large clusters
        cheap the sim lets the owner sync its node and the leader sync nodes whose manager is down
        or missing -- the writes the API server sees are the same. Found without walking every
        Node per manager (with 500 nodes that walk, per event, was most of the CPU)."""
        own = self.cache.peek("nodes", self.node_name)
        handled = [own] if own is not None else []
        if self.cluster.leader() == self.node_name:
            handled += [n for n in self.cache.informers["nodes"].objects.values()
                        if not self.cluster.manager_up(n["metadata"]["name"])]
        return handled

    async def sync_node(self, node: dict[str, Any], settings: list[dict[str, Any]]) -> None:
        """lm v1.7.2 node_controller.go:363 syncNode with its deferred status write (line 396).

        ``node`` comes from the informer cache, so the PUT carries the cached resourceVersion.
        """
        name = node["metadata"]["name"]
        owner = name == self.node_name
        if node["metadata"].get("deletionTimestamp"):
            # lm node_controller.go:387: Event "Deleting node" and drop the finalizer.
            if node["metadata"].get("finalizers"):  # _handled_nodes picked exactly one manager
                await self.kube.event(node, "Warning", "Delete", f"Deleting node {name}")
                await self._drop_finalizers("nodes", node)
            return
        now = SimClock.now_rfc3339()
        sched = node_status.SchedulingSettings(
            int(_setting(settings, "storage-minimal-available-percentage", "25")),
            int(_setting(settings, "storage-over-provisioning-percentage", "100")),
        )
        reps: list[dict[str, Any]] = []
        bims: list[dict[str, Any]] = []
        bis: list[dict[str, Any]] = []
        if owner:
            reps = await self.cache.list("replicas")
            bims = await self.cache.list("backingimagemanagers")
            bis = await self.cache.list("backingimages")
        collected = self.monitor.collected if owner else None
        result = node_status.sync_node_status(
            node, collected, reps, bims, now, owner=owner,
            manager_up=self.cluster.manager_up(name), settings=sched, backing_images=bis,
            release=self.cluster.release,
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
                # lm node_controller.go:398-401: requeue on conflict, nothing else. Longhorn's retry
                # conflicts again until its informer holds the newer Node; waiting for the cache
                # first makes the same write without the futile ones, which in this one process
                # would starve the very watch that delivers that Node (a 500-node cluster stalled).
                await self.cache.wait_newer("nodes", node)
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
        grace = orphans.auto_deletion_grace(self.cluster.release, lambda n, d: _setting(settings, n, d))
        for o in await self.cache.list("orphans"):
            if (o.get("status") or {}).get("ownerID") != self.node_name:
                continue
            dc = node_status.get_condition((o.get("status") or {}).get("conditions"), "DataCleanable").get("status")
            if dc == "Unknown":
                continue
            auto = grace is not None and orphans.age(o, self.cluster.clock) >= grace
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
            await self._drop_finalizers("orphans", obj)
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
        flips, notes = node_status.backing_image_eviction_updates(node, status, bis, self.cluster.release)
        for note in notes:
            self.log.emit("warning", note, "controller.(*NodeController).syncBackingImageEvictionRequested",
                          "node_controller.go:1683", controller="longhorn-node")
        if notes:
            asyncio.get_running_loop().call_later(self.cluster.clock.real(REQUEUE_DELAY * 4), self.loops["node"].trigger)
        for bi_name, uuid, want in flips:
            bi = await self.cache.get_or_none("backingimages", bi_name)
            if bi is None or uuid not in ((bi.get("spec") or {}).get("diskFileSpecMap") or {}):
                continue
            bi["spec"]["diskFileSpecMap"][uuid]["evictionRequested"] = want
            try:
                await self.kube.replace("backingimages", bi)
            except Conflict:
                self.loops["node"].trigger()

    # ------------------------------------------------------------------ volume, engine controllers
    async def sync_volumes(self) -> None:
        await self.volumes.sync_all()

    async def sync_engines(self) -> None:
        await self.volumes.sync_engines()

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
                await self._drop_finalizers("replicas", r)
            return
        status = copy.deepcopy(r.get("status") or {})
        status["ownerID"] = self.node_name
        spec = r["spec"]
        now = SimClock.now_rfc3339()
        running = status.get("currentState") == "running"
        if spec.get("desireState") == "running" and not running:
            # InstanceHandler.ReconcileInstanceState -> createInstance (lm v1.7.2
            # controller/instance_handler.go:335-359,480-501): only a stopped replica is started.
            try:
                running = await self._create_instance(r, node, status, now)
            except _StartFailed as failed:
                # The error goes to a FailedStarting Event and the deferred status write is
                # skipped (replica_controller.go:289-292; instance_handler.go:490-493).
                if self._start_failures.get(name) != str(failed):
                    self._start_failures[name] = str(failed)
                    await self.kube.event(r, "Warning", "FailedStarting", f"Error starting {name}: {failed}")
                return
            self._start_failures.pop(name, None)
        elif spec.get("desireState") != "running" and running:
            running = False
        if running:
            status.update(currentState="running", started=True, instanceManagerName=node_status.instance_manager_name(self.node_name),
                          currentImage=spec.get("image", ""), ip="10.42.0.1", storageIP="10.42.0.1", port=10000)
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
                await self.kube.replace_status("replicas", body)
            except Conflict:
                raise Requeue() from None
            except NotFound:
                return

    async def _create_instance(self, r: dict[str, Any], node: Mapping[str, Any], status: dict[str, Any], now: str) -> bool:
        """ReplicaController.CreateInstance (lm v1.7.2 controller/replica_controller.go:331-355,
        394-450): whether the instance runs now. Never touches ``healthyAt``: only the volume
        controller does, when the engine reports the replica RW."""
        name = r["metadata"]["name"]
        spec = r["spec"]
        disk_uuid = spec.get("diskID", "")
        if not any(e.get("diskUUID") == disk_uuid for e in ((node.get("status") or {}).get("diskStatus") or {}).values()):
            # replica_controller.go:394 getDiskNameFromUUID
            raise _StartFailed(f"cannot find disk name for replica {name}")
        if vl.is_rebuilding(r) and not await self._can_start_rebuilding(r):
            return False
        if spec.get("backingImage"):
            ready = await self._backing_image_for_start(r, node, status, now)
            if not ready:
                return False
        ddir = self.host.dir(spec.get("diskPath", "")) / disks.REPLICA_DIRECTORY / spec.get("dataDirectoryName", "")
        meta = ddir / disks.VOLUME_META
        if not meta.exists():
            ddir.mkdir(parents=True, exist_ok=True)
            meta.write_text('{"Size":%s,"Head":"volume-head-000.img","Dirty":false}' % spec.get("volumeSize", "0"))
        return True

    async def _can_start_rebuilding(self, r: dict[str, Any]) -> bool:
        """CanStartRebuildingReplica (lm v1.7.2 replica_controller.go:452-514): at most
        ``concurrent-replica-rebuild-per-node-limit`` rebuilding replicas starting or running on a node."""
        settings = await self.cache.list("settings")
        try:
            limit = int(_setting(settings, "concurrent-replica-rebuild-per-node-limit", "5"))
        except ValueError:
            limit = 5
        if limit < 1:
            return True
        busy = {x["metadata"]["name"] for x in await self.cache.list("replicas")
                if (x.get("spec") or {}).get("nodeID") == self.node_name and vl.is_rebuilding(x)
                and (x.get("status") or {}).get("currentState") in ("starting", "running")}
        if r["metadata"]["name"] in busy or len(busy) < limit:
            return True
        self.log.emit("warning", f"Replica rebuildings for {sorted(busy)} are in progress on this node, which reaches "
                      f"or exceeds the concurrent limit value {limit}", "controller.(*ReplicaController).CanStartRebuildingReplica",
                      "replica_controller.go:505", controller="longhorn-replica", replica=r["metadata"]["name"])
        return False

    async def _backing_image_for_start(self, r: dict[str, Any], node: Mapping[str, Any], status: dict[str, Any],
                                       now: str) -> bool:
        """GetBackingImagePathForReplicaStarting (lm v1.7.2 replica_controller.go:407-446), the only
        place a replica re-adds its disk to ``spec.diskFileSpecMap``: while it starts."""
        name = r["metadata"]["name"]
        spec = r["spec"]
        bi_name, disk_uuid = spec["backingImage"], spec.get("diskID", "")
        bi = self.cache.peek("backingimages", bi_name)  # read-only; copied before mutating
        if bi is None:
            raise _StartFailed(f"backingimages.longhorn.io \"{bi_name}\" not found")
        state, cur = rl.backing_image_wait_state(r, bi)
        if state == "add-spec":
            # CanPutBackingImageOnDisk (lm datastore/longhorn.go:5589-5616): node and disk Ready.
            if not bil.disk_ready_on(node, disk_uuid):
                prefix = "The backing image" if not self.cluster.release.lowercase_backing_image_error else "backing image"
                raise _StartFailed(f"{prefix} {bi_name} can not be put on the disk {disk_uuid}")
            bi = copy.deepcopy(bi)
            spec_map = bi.setdefault("spec", {}).get("diskFileSpecMap")
            if spec_map is None:
                spec_map = bi["spec"]["diskFileSpecMap"] = {}
            spec_map[disk_uuid] = bil.spec_entry(self.cluster.release)
            self.log.emit("info", f"Asking backing image {bi_name} to download file to node {spec.get('nodeID')} disk {disk_uuid}",
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
                    f"Waiting for backing image {bi_name} to download file to node {spec.get('nodeID')} disk {disk_uuid}, the current state is {cur}",
                    "controller.(*ReplicaController).GetBackingImagePathForReplicaStarting", "replica_controller.go:442",
                    controller="longhorn-replica", replica=name,
                )
                self._waiting_logged[name] = cur
            status["conditions"] = node_status.set_condition(
                status.get("conditions"), "WaitForBackingImage", "True", "Waiting", "", now, [], "Normal")
            return False
        self._waiting_logged.pop(name, None)
        status["conditions"] = node_status.set_condition(
            status.get("conditions"), "WaitForBackingImage", "False", "", "", now, [], "Normal")
        return True

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
        nodes = await self.cache.list("nodes")
        bids = await self._handle_data_source(bi, nodes)
        spec_map = (bi.get("spec") or {}).get("diskFileSpecMap")
        if spec_map is None:
            return  # line 291-293
        try:
            await self._handle_bims(bi)
        except _BiSyncError as exc:
            raise _BiSyncError(f"failed to sync backing image for {key}: {exc}") from None
        now = SimClock.now_rfc3339()
        bims = await self.cache.list("backingimagemanagers")
        st["diskFileStatusMap"] = bil.file_status(bi, bids, bims, now)
        ready_files = [f for f in st["diskFileStatusMap"].values() if f.get("state") == "ready"]
        if ready_files:
            st["size"] = len(bil.BACKING_FILE_CONTENT)
            st["virtualSize"] = len(bil.BACKING_FILE_CONTENT)
            if self.cluster.release.backing_image_real_size and not st.get("realSize"):
                st["realSize"] = len(bil.BACKING_FILE_CONTENT)  # lm v1.8.1 backing_image_controller.go:1345-1348
            st.setdefault("checksum", "")
            if not st["checksum"]:
                st["checksum"] = hashlib.sha512(bil.BACKING_FILE_CONTENT).hexdigest()
        replicas = await self.cache.list("replicas")
        st["diskLastRefAtMap"] = bil.last_ref_map(bi, replicas, now)
        await self._replenish(bi, bids, nodes)
        drop, kept = bil.evicted_copies_to_drop(bi, replicas, self.cluster.rng, self.cluster.release)
        for u in drop:
            del bi["spec"]["diskFileSpecMap"][u]
        if kept:
            await self.kube.event(bi, "Warning", "FailedDeleting", f"Failed to evict backing image copy on disk {kept} "
                                  "for now since there is no other healthy backing image copy")
        # Deferred writes (lines 259-277): spec, then status on the same in-memory object, so a
        # pass that changed both gets a Conflict on the status write and lands it next time.
        if bi.get("spec") != existing.get("spec"):
            try:
                await self.kube.replace("backingimages", bi)
            except Conflict:
                raise Requeue() from None
        if bi.get("status") != existing.get("status"):
            try:
                await self.kube.replace_status("backingimages", bi)
            except Conflict:
                raise Requeue() from None

    async def _handle_data_source(self, bi: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
        """handleBackingImageDataSource (lm v1.7.2 backing_image_controller.go:492-690): create the
        BackingImageDataSource named after the BackingImage, mark the file transferred once the BIM
        on its disk holds it ready, move it while not transferred and its disk is not ready."""
        name = bi["metadata"]["name"]
        bids = self.cache.peek("backingimagedatasources", name)
        spec_map = (bi.get("spec") or {}).get("diskFileSpecMap") or {}
        file_status = (bi.get("status") or {}).get("diskFileStatusMap") or {}
        if bids is None:
            ready = [u for u in vl.go_map_order(spec_map, self.cluster.rng) if bil.ready_disk(nodes, u) is not None]
            transferred = next((u for u in ready if (file_status.get(u) or {}).get("state") == "ready"), None)
            disk = bil.ready_disk(nodes, transferred or (ready[0] if ready else ""))
            if disk is None:
                disk = bil.choose_disk_for_copy(bi, nodes, self.cluster.rng)
            if disk is None:
                return None
            try:
                return await self.kube.create("backingimagedatasources", bil.data_source_manifest(
                    bi, disk, transferred=transferred is not None))
            except AlreadyExists:
                return None
        bids = copy.deepcopy(bids)
        spec = bids["spec"]
        if spec.get("fileTransferred"):
            return bids
        changed = False
        if (bids.get("status") or {}).get("currentState") == "ready" and \
                (file_status.get(spec.get("diskUUID")) or {}).get("state") == "ready":
            spec["fileTransferred"] = True  # 641-646: the BIM on that disk took the file over
            changed = True
        else:
            disk = bil.ready_disk(nodes, spec.get("diskUUID", ""))
            if disk is None or disk.node != spec.get("nodeID") or disk.path != spec.get("diskPath"):
                moved = bil.choose_disk_for_copy(bi, nodes, self.cluster.rng)  # 660-683
                if moved is not None:
                    spec.update(nodeID=moved.node, diskUUID=moved.uuid, diskPath=moved.path)
                    changed = True
        if changed:
            try:
                bids = await self.kube.replace("backingimagedatasources", bids)
            except Conflict:
                raise Requeue() from None
        return bids

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
                        except (Conflict, NotFound):
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

    async def _replenish(self, bi: dict[str, Any], bids: Mapping[str, Any] | None, nodes: list[dict[str, Any]]) -> None:
        """replenishBackingImageCopies (lm v1.7.2 backing_image_controller.go:316-377): only once the
        data source's file is transferred, one copy per sync on a random eligible disk."""
        if bids is None or not (bids.get("spec") or {}).get("fileTransferred"):
            return
        settings = await self.cache.list("settings")
        if _setting(settings, "concurrent-backing-image-replenish-per-node-limit", "5") == "0":
            return
        spec_map = bi["spec"]["diskFileSpecMap"]
        status_map = bi["status"].get("diskFileStatusMap") or {}
        non_failed = [u for u in spec_map
                      if (status_map.get(u) or {}).get("state") not in ("failed", "failed-and-cleanup", "unknown")]
        if not non_failed:
            return
        non_evicting = len(non_failed) - sum(1 for s in spec_map.values() if (s or {}).get("evictionRequested"))
        if non_evicting >= int((bi.get("spec") or {}).get("minNumberOfCopies") or 0):
            return
        disk = bil.choose_disk_for_copy(bi, nodes, self.cluster.rng)
        if disk is None:
            self.log.emit("warning", "Failed to get the ready disk for replenishing backing image copies",
                          "controller.(*BackingImageController).replenishBackingImageCopies",
                          "backing_image_controller.go:368", controller="longhorn-backing-image",
                          backingImage=bi["metadata"]["name"])
            return
        spec_map[disk.uuid] = bil.spec_entry(self.cluster.release)

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
        """A BIM and its pod (lm backing_image_manager_controller.go, reduced): files it is asked for
        are fetched once a source has the file (the data source ready for transfer, or another BIM
        holding it ready) and take one sync; the file on the data source's own disk is taken over."""
        bim = copy.deepcopy(bim)
        spec = bim.get("spec") or {}
        wanted = dict(spec.get("backingImages") or {})
        if bim["metadata"].get("deletionTimestamp"):
            if bim["metadata"].get("finalizers"):
                await self._drop_finalizers("backingimagemanagers", bim)
            return
        if not wanted:
            # BIMs with no backing images left are deleted
            # (controller/backing_image_controller.go:480-485 @v1.7.2).
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
                release = self.cluster.release
                if backing.exists():
                    files[bi_name] = bil.bim_file_entry(bi_name, bi_uuid, "ready", 100, release)
                    continue
                if not await self._file_source(bi_name, bi_uuid):
                    files[bi_name] = bil.bim_file_entry(bi_name, bi_uuid, "pending", 0, release)
                    continue
                # The transfer takes one sync: in-progress now, ready next time (about one Longhorn
                # second later), so BackingImage and Replica pass through the states they do on a
                # real cluster.
                fdir.mkdir(parents=True, exist_ok=True)
                backing.write_bytes(bil.BACKING_FILE_CONTENT)
                files[bi_name] = bil.bim_file_entry(bi_name, bi_uuid, "in-progress", 50, release)
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

    async def _taken_over(self, bi_name: str, disk_uuid: str, bi_uuid: str) -> bool:
        for bim in await self.cache.list("backingimagemanagers", f"longhorn.io/disk-uuid={disk_uuid}"):
            f = ((bim.get("status") or {}).get("backingImageFileMap") or {}).get(bi_name) or {}
            if f.get("state") == "ready" and f.get("uuid") == bi_uuid:
                return True
        return False

    async def _file_source(self, bi_name: str, bi_uuid: str) -> bool:
        bids = self.cache.peek("backingimagedatasources", bi_name)
        if bids is not None and (bids.get("status") or {}).get("currentState") == "ready-for-transfer":
            return True
        return any(((((b.get("status") or {}).get("backingImageFileMap") or {}).get(bi_name) or {}).get("state") == "ready"
                    and (((b.get("status") or {}).get("backingImageFileMap") or {}).get(bi_name) or {}).get("uuid") == bi_uuid)
                   for b in await self.cache.list("backingimagemanagers"))

    # ------------------------------------------------------------------ backing image data source controller
    async def sync_data_sources(self) -> None:
        await self._sync_on_this_node("backingimagedatasources", self.sync_data_source)

    async def sync_data_source(self, cached: dict[str, Any], node: Mapping[str, Any]) -> None:
        """lm v1.7.2 controller/backing_image_data_source_controller.go, reduced: while the file is
        not transferred the data source keeps its disk in the BackingImage's spec (402-406) -- so
        eviction never drains it --, "downloads" for ``DOWNLOAD_SECONDS``, then is ready for the
        BIM on its disk to take the file over; once transferred it is ready (329-332); on a disk
        that is not ready it is unknown (334-345)."""
        bids = copy.deepcopy(cached)
        name = bids["metadata"]["name"]
        spec = bids.get("spec") or {}
        if bids["metadata"].get("deletionTimestamp"):
            if bids["metadata"].get("finalizers"):
                await self._drop_finalizers("backingimagedatasources", bids)
            return
        bi = self.cache.peek("backingimages", name)
        if bi is None:
            return
        uuid = str(spec.get("diskUUID") or "")
        if not spec.get("fileTransferred") and uuid and uuid not in ((bi.get("spec") or {}).get("diskFileSpecMap") or {}):
            body = copy.deepcopy(bi)
            body["spec"].setdefault("diskFileSpecMap", {})
            if body["spec"]["diskFileSpecMap"] is None:
                body["spec"]["diskFileSpecMap"] = {}
            body["spec"]["diskFileSpecMap"][uuid] = bil.spec_entry(self.cluster.release)
            try:
                await self.kube.replace("backingimages", body)
            except (Conflict, NotFound):
                raise Requeue() from None
        status = dict(bids.get("status") or {})
        status["ownerID"] = self.node_name
        state = status.get("currentState") or ""
        if spec.get("fileTransferred"):
            status.update(currentState="ready", progress=100, message="")
        elif not bil.disk_ready_on(node, uuid):
            status.update(currentState="unknown")
        elif bil.download_fails(bids):
            url = ((spec.get("parameters") or {}).get("url") or "")
            status.update(currentState="failed", progress=0,
                          message=f"failed to download {url}: dial tcp: lookup: no such host")
        elif state in ("", "pending", "unknown", "starting"):
            status.update(currentState="in-progress", progress=0, message="")
            self._downloads[name] = self.cluster.clock.monotonic() + DOWNLOAD_SECONDS
            asyncio.get_running_loop().call_later(self.cluster.clock.real(DOWNLOAD_SECONDS) + 0.01, self.loops["bids"].trigger)
        elif state == "ready-for-transfer" and await self._taken_over(name, uuid, str(spec.get("uuid") or "")):
            # The BIM on the data source's disk has the file: the pod reports the transfer done;
            # the BackingImage controller then marks the file transferred (backing_image_controller.go:641-646).
            status.update(currentState="ready")
        elif state == "in-progress" and self.cluster.clock.monotonic() >= self._downloads.get(name, 0.0):
            fdir = self.host.dir(spec.get("diskPath", "")) / disks.BACKING_IMAGE_DIRECTORY / f"{name}-{spec.get('uuid', '')}"
            fdir.mkdir(parents=True, exist_ok=True)
            (fdir / "backing").write_bytes(bil.BACKING_FILE_CONTENT)
            status.update(currentState="ready-for-transfer", progress=100, size=len(bil.BACKING_FILE_CONTENT),
                          checksum=hashlib.sha512(bil.BACKING_FILE_CONTENT).hexdigest())
            self._downloads.pop(name, None)
        if status != (bids.get("status") or {}):
            bids["status"] = status
            try:
                await self.kube.replace_status("backingimagedatasources", bids)
            except Conflict:
                raise Requeue() from None
            except NotFound:
                pass

    async def _drop_finalizers(self, plural: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Write `obj` back without finalizers (what each Longhorn controller does once its cleanup is
        done); returns the stored object, or None when it changed or went away meanwhile."""
        obj = copy.deepcopy(obj)
        obj["metadata"]["finalizers"] = []
        try:
            return await self.kube.replace(plural, obj)
        except (Conflict, NotFound):
            return None

    async def _delete_bim(self, bim: dict[str, Any]) -> None:
        if bim["metadata"].get("finalizers"):
            stored = await self._drop_finalizers("backingimagemanagers", bim)
            if stored is None:
                return
            bim = stored
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


class _StartFailed(Exception):
    """CreateInstance returned an error: an Event, no status write (replica_controller.go:289-292)."""


class _BiSyncError(Exception):
    """A BackingImage reconcile error: the deferred spec/status write is skipped (line 264)."""
