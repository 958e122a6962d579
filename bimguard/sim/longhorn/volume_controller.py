"""The simulated longhorn-manager's volume, engine, attachment and volume-eviction controllers.

One :meth:`VolumeControllers.sync` per volume follows lm v1.7.2 controller/volume_controller.go
``syncVolume`` in its order (ReconcileEngineReplicaState :616, ReconcileVolumeState :1254,
cleanupReplicas :955) and writes what changed at the end, as its deferred update does. What it
keeps from Longhorn, because the repair relies on it:

- ``healthyAt`` only when the engine reports the replica ``RW`` (739-744); robustness from the
  ``RW`` count (778-834);
- eviction: one more replica at a time while the volume is healthy and fewer than
  ``numberOfReplicas`` non-evicting replicas are ``RW``, never while a never-healthy,
  never-failed replica exists (EvictReplicas 560-588: "Creating one more replica for
  eviction"); the evicting replica is deleted only by the clean-up of extra healthy replicas,
  i.e. once its replacement is healthy, and the last healthy one is kept (1065-1133: "Failed to
  evict replica %v for now since there is no other healthy replica");
- replacements (eviction and degraded rebuilds alike) only while the volume is ``attached``
  (replenishReplicas 2231-2337, the gate at 2247), one at a time, not while the engine is still
  rebuilding or its status has not caught up (2261-2267); no disk: ``Scheduled=False``
  ``ReplicaSchedulingFailure`` "precheck new replica failed;<errors>" and nothing created (2312-2325);
- attach/detach from ``spec.nodeID`` (1539-1670) with the dependent resources opened and closed
  (1826-1996), including "a rebuild cut short by a detach is marked failed" (1975-1996);
- the VolumeAttachment controller sets ``spec.nodeID`` from the highest-priority ticket and clears
  it when no ticket is left (volume_attachment_controller.go:543-680); the volume-eviction controller
  adds a ``volume-eviction-controller`` ticket while any replica of the volume has
  ``evictionRequested`` and removes it after (volume_eviction_controller.go:161-210; from v1.8.1
  only when every replica would find a disk, :206-242).

The engine is emulated by :meth:`VolumeControllers.sync_engine` (engine_controller.go:351-380,
888-965, 1775-2027): it starts with the replicas of its address map ``RW``, rebuilds one added
replica at a time (``WO`` for ``rebuild_seconds``, then ``RW``), drops replicas that left the map
and reports a replica whose instance stopped as ``ERR``. A rebuild is bounded in Longhorn only by
the ``long-grpc-timeout`` setting (the engine's ``ReplicaAdd``, engine_controller.go:1859-1863,1949;
86400 s by default, types/setting.go:1266-1277): ``SimCluster.set_rebuild_seconds`` makes rebuilds
that outlast a repair's time (a big volume, a slow network), also those already running.

Not emulated: migration, upgrades, data locality, auto-balance, auto-salvage, reuse of failed
replicas (CheckAndReuseFailedReplica), restore/clone/backup, snapshots, share managers, frontends,
expansion, the replenishment wait interval (it only applies when a failed replica could be
reused), offline rebuilding (v1.9), volume deletion.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from typing import TYPE_CHECKING, Any, Mapping

from bimguard.sim.clock import SimClock
from bimguard.sim.longhorn import volumes as vl
from bimguard.sim.longhorn.kube import AlreadyExists, Conflict, KubeError, NotFound
from bimguard.sim.longhorn.node_status import get_condition, set_condition

if TYPE_CHECKING:
    from bimguard.sim.longhorn.manager import LonghornManager

log = logging.getLogger("bimguard.sim.longhorn.volumes")

REBUILD_SECONDS = 15.0  # Longhorn seconds a replica stays WO while the engine rebuilds it
SCHEDULING_RETRY = 30.0  # lm volume_controller.go:1761 enqueueVolumeAfter(v, 30s)
VC = "controller.(*VolumeController)"


def _copy(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return copy.deepcopy(dict(obj)) if obj is not None else None


class VolumeControllers:
    """Volume, engine, VolumeAttachment and volume-eviction controllers of one manager."""

    def __init__(self, manager: "LonghornManager", rng: random.Random) -> None:
        self.m = manager
        self.rng = rng
        # (engine, replica) -> when its rebuild started (Longhorn s). It ends `cluster.rebuild_seconds`
        # after that, read at every sync: a test may slow a rebuild down or speed it up while it runs.
        self._rebuilds: dict[tuple[str, str], float] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def kube(self) -> Any:
        return self.m.kube

    @property
    def cache(self) -> Any:
        return self.m.cache

    def _log(self, level: str, msg: str, func: str, where: str, **fields: Any) -> None:
        self.m.log.emit(level, msg, func, where, controller="longhorn-volume", **fields)

    async def _event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        await self.kube.event(obj, kind, reason, message)

    def _owner(self, volume: Mapping[str, Any]) -> str:
        """The manager responsible for a volume: the node it is attached to when that manager runs,
        else the one that owns it already, else the leader (lm volume_controller.go:4392-4450
        isResponsibleFor prefers spec.nodeID)."""
        up = self.m.cluster.manager_up
        for candidate in ((volume.get("spec") or {}).get("nodeID"), (volume.get("status") or {}).get("ownerID")):
            if candidate and up(candidate):
                return str(candidate)
        return self.m.cluster.leader() or ""

    def responsible(self, volume: Mapping[str, Any]) -> bool:
        return self._owner(volume) == self.m.node_name

    async def _settings(self) -> dict[str, str]:
        return {s["metadata"]["name"]: str(s.get("value", "")) for s in await self.cache.list("settings")}

    # ------------------------------------------------------------------ volumes
    async def sync_all(self) -> None:
        for v in await self.cache.list("volumes"):
            if self.responsible(v):
                await self.sync(v)

    async def sync(self, cached: Mapping[str, Any]) -> None:
        volume = _copy(cached)
        assert volume is not None
        name = volume["metadata"]["name"]
        if volume["metadata"].get("deletionTimestamp"):
            return  # volume deletion is not emulated
        before = copy.deepcopy(volume)
        status = volume.setdefault("status", {}) or {}
        volume["status"] = status
        status["ownerID"] = self.m.node_name
        status.setdefault("conditions", [])
        if not status.get("currentImage"):
            status["currentImage"] = volume["spec"].get("image", vl.ENGINE_IMAGE)
        settings = await self._settings()
        engine = await self._engine(volume)
        replicas = {r["metadata"]["name"]: _copy(r) for r in await self.cache.list("replicas", f"longhornvolume={name}")}
        replicas = {k: v for k, v in replicas.items() if v is not None}
        originals = copy.deepcopy(replicas)
        created: list[dict[str, Any]] = []
        deleted: list[str] = []
        events: list[tuple[str, str, str]] = []
        now = SimClock.now_rfc3339()

        if not await self._attachment(volume):
            return
        self._engine_replica_state(volume, engine, replicas, now, events, created, settings)
        self._volume_state(volume, engine, replicas, now, events, created)
        self._schedule(volume, engine, replicas, created, settings)
        self._cleanup(volume, replicas, deleted)

        # Deferred writes: new replicas, changed replicas, the engine, deletions, the volume status.
        for r in created:
            try:
                await self.kube.create("replicas", r)
            except AlreadyExists:
                pass
            self._log("info", "Creating new Replica", f"{VC}.createReplica", "volume_controller.go:3694",
                      volume=name, replica=r["metadata"]["name"])
        for rname, r in replicas.items():
            if rname in deleted or any(c is r for c in created):
                continue
            if r != originals.get(rname):
                try:
                    await self.kube.replace("replicas", r)
                except (Conflict, NotFound):
                    self.m.loops["volume"].trigger()
        if engine is not None and engine.get("spec") != (self.cache.peek("engines", engine["metadata"]["name"]) or {}).get("spec"):
            try:
                await self.kube.replace("engines", engine)
            except (Conflict, NotFound):
                self.m.loops["volume"].trigger()
        for rname in deleted:
            await self._delete_replica(volume, replicas.get(rname) or originals[rname])
        if volume["status"] != (before.get("status") or {}):
            try:
                await self.kube.replace_status("volumes", volume)
            except (Conflict, NotFound):
                self.m.loops["volume"].trigger()
        for kind, reason, message in events:
            await self._event(volume, kind, reason, message)
        await self._eviction_ticket(volume, list(replicas.values()), settings)

    async def _engine(self, volume: Mapping[str, Any]) -> dict[str, Any] | None:
        """reconcileVolumeCreation (1673-1698): the volume's one engine, created if missing."""
        name = volume["metadata"]["name"]
        engines = await self.cache.list("engines", f"longhornvolume={name}")
        if engines:
            return _copy(engines[0])
        try:
            return await self.kube.create("engines", vl.engine_manifest(volume))
        except AlreadyExists:
            return None

    def _engine_replica_state(self, volume: dict[str, Any], engine: dict[str, Any] | None,
                              replicas: dict[str, dict[str, Any]], now: str, events: list[tuple[str, str, str]],
                              created: list[dict[str, Any]], settings: Mapping[str, str]) -> None:
        """ReconcileEngineReplicaState (lm v1.7.2 volume_controller.go:616-880)."""
        status = volume["status"]
        if status.get("robustness") != "degraded":
            status["lastDegradedAt"] = ""
        if engine is None:
            return
        estatus = engine.get("status") or {}
        modes = estatus.get("replicaModeMap")
        if estatus.get("currentState") != "running" or modes is None:
            return
        healthy = 0
        for rname, mode in modes.items():
            r = replicas.get(rname)
            if r is None:
                continue
            spec = r["spec"]
            if mode == vl.MODE_ERR:  # 721-736
                if not spec.get("failedAt"):
                    spec["failedAt"] = now
                    spec["lastFailedAt"] = now
                    self._log("warning", f"Replica {rname} is marked as failed, current state "
                              f"{(r.get('status') or {}).get('currentState', '')}, mode {mode}, engine name "
                              f"{engine['metadata']['name']}, active {spec.get('active', True)}",
                              f"{VC}.ReconcileEngineReplicaState", "volume_controller.go:731",
                              volume=volume["metadata"]["name"])
                spec["desireState"] = "stopped"
            elif mode == vl.MODE_RW:  # 737-757
                healthy += 1
                if not spec.get("healthyAt"):
                    spec["healthyAt"] = now
                    spec["rebuildRetryCount"] = 0
                transition = (estatus.get("replicaTransitionTimeMap") or {}).get(rname, "")
                if not spec.get("lastHealthyAt") or (transition and transition > spec["lastHealthyAt"]):
                    spec["lastHealthyAt"] = transition or now
        wanted = int(volume["spec"].get("numberOfReplicas") or 0)
        old = status.get("robustness", "")
        if healthy == 0:
            return
        if healthy >= wanted:
            status["robustness"] = "healthy"
            if old == "degraded":
                events.append(("Normal", "Healthy", f"volume {volume['metadata']['name']} became healthy"))
            self._evict_replicas(volume, engine, replicas, healthy, created, settings)
        else:
            status["robustness"] = "degraded"
            if old != "degraded":
                status["lastDegradedAt"] = now
                events.append(("Normal", "Degraded", f"volume {volume['metadata']['name']} became degraded"))
            self._replenish(volume, engine, replicas, created, settings)

    def _evict_replicas(self, volume: dict[str, Any], engine: Mapping[str, Any], replicas: dict[str, dict[str, Any]],
                        healthy: int, created: list[dict[str, Any]], settings: Mapping[str, str]) -> None:
        """EvictReplicas (lm v1.7.2 volume_controller.go:560-588)."""
        modes = (engine.get("status") or {}).get("replicaModeMap") or {}
        non_evicting = healthy
        has_new = False
        for rname in vl.go_map_order(replicas, self.rng):
            r = replicas[rname]
            if r["spec"].get("evictionRequested") and modes.get(rname) == vl.MODE_RW:
                non_evicting -= 1
            if vl.is_new(r):
                has_new = True
                break
        if non_evicting < int(volume["spec"].get("numberOfReplicas") or 0) and not has_new:
            self._log("info", "Creating one more replica for eviction", f"{VC}.EvictReplicas",
                      "volume_controller.go:578", volume=volume["metadata"]["name"])
            self._replenish(volume, engine, replicas, created, settings)

    def _replenish(self, volume: dict[str, Any], engine: Mapping[str, Any], replicas: dict[str, dict[str, Any]],
                   created: list[dict[str, Any]], settings: Mapping[str, str]) -> None:
        """replenishReplicas (lm v1.7.2 volume_controller.go:2231-2337) for an existing volume."""
        if settings.get("concurrent-replica-rebuild-per-node-limit", "5") == "0" and replicas:
            return  # 2232-2241
        if replicas and volume["status"].get("state") != "attached":
            return  # 2247-2249: replacements only while attached
        if not vl.engine_status_synced(engine, replicas.values()):
            return  # 2261
        if vl.rebuilding_count(engine) != 0:
            return  # 2265-2267
        count = vl.replenish_count(volume, replicas.values())
        if replicas:
            count = min(count, 1)  # 2279-2281: one at a time for an existing volume
        for _ in range(count):
            name = f"{volume['metadata']['name']}-r-{self.m.cluster.uuids.random_id()}"
            replica = vl.new_replica(volume, engine, name, rebuilding=bool(replicas))
            placement = vl.find_disk_candidates(volume, list(replicas.values()), self._nodes,
                                                vl.SchedulingSettings.from_settings(lambda k, d: settings.get(k, d)))
            if not placement.candidates:  # precheckCreateReplica (2312-2325, 3658-3669)
                self._log("warning", f"Unable to create new replica {name}", f"{VC}.replenishReplicas",
                          "volume_controller.go:2318", volume=volume["metadata"]["name"],
                          error=f"No available disk candidates to create a new replica of size {volume['spec'].get('size')}")
                volume["status"]["conditions"] = set_condition(
                    volume["status"]["conditions"], "Scheduled", "False", "ReplicaSchedulingFailure",
                    ";".join([vl.ERR_PRECHECK, placement.message()]), SimClock.now_rfc3339(), [], "Warning")
                continue
            self._log("info", f"A new replica {name} will be replenished during rebuilding", f"{VC}.createReplica",
                      "volume_controller.go:3686", volume=volume["metadata"]["name"])
            replicas[name] = replica
            created.append(replica)

    @property
    def _nodes(self) -> list[dict[str, Any]]:
        return list(self.cache.informers["nodes"].objects.values())

    def _volume_state(self, volume: dict[str, Any], engine: dict[str, Any] | None, replicas: dict[str, dict[str, Any]],
                      now: str, events: list[tuple[str, str, str]], created: list[dict[str, Any]]) -> None:
        """reconcileAttachDetachStateMachine (lm v1.7.2 volume_controller.go:1539-1670), first
        creation (reconcileVolumeCreation 1686-1691)."""
        status = volume["status"]
        name = volume["metadata"]["name"]
        if engine is None:
            return
        if not replicas:  # first time creation
            for _ in range(int(volume["spec"].get("numberOfReplicas") or 0)):
                rname = f"{name}-r-{self.m.cluster.uuids.random_id()}"
                r = vl.new_replica(volume, engine, rname, rebuilding=False)
                replicas[rname] = r
                created.append(r)
        if not status.get("state"):
            status["state"] = "creating" if created else "detached"
        target = volume["spec"].get("nodeID") or ""
        state = status["state"]
        if not target:
            if state in ("attached", "attaching", "creating"):
                self._close(volume, engine, replicas, now)
                status["state"] = "detaching"
            elif state == "detaching":
                self._close(volume, engine, replicas, now)
                if self._closed(engine, replicas):
                    status["state"] = "detached"
                    status["currentNodeID"] = ""
                    status["robustness"] = "unknown" if status.get("robustness") != "faulted" else "faulted"
                    events.append(("Normal", "Detached", f"volume {name} has been detached"))
            else:
                self._close(volume, engine, replicas, now)
                status["state"] = "detached"
            return
        if state in ("detached", "creating"):
            self._open(volume, engine, replicas)
            status["state"] = "attaching"
        elif state == "attaching":
            self._open(volume, engine, replicas)
            if self._opened(engine, replicas):
                status["currentNodeID"] = target
                status["state"] = "attached"
                events.append(("Normal", "Attached", f"volume {name} has been attached to {target}"))
        elif state == "attached":
            if status.get("currentNodeID") != target:
                self._close(volume, engine, replicas, now)
                status["state"] = "detaching"
            else:
                self._open(volume, engine, replicas)
        elif state == "detaching":
            self._close(volume, engine, replicas, now)
            if self._closed(engine, replicas):
                status["state"] = "detached"
                status["currentNodeID"] = ""
                events.append(("Normal", "Detached", f"volume {name} has been detached"))

    def _open(self, volume: dict[str, Any], engine: dict[str, Any], replicas: dict[str, dict[str, Any]]) -> None:
        """openVolumeDependentResources (lm v1.7.2 volume_controller.go:1826-1946)."""
        for rname, r in replicas.items():
            s = r["spec"]
            if not s.get("nodeID") or (r.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if self.m.cluster.manager_up(s["nodeID"]):
                if not s.get("failedAt") and (r.get("status") or {}).get("currentState", "stopped") == "stopped":
                    s["desireState"] = "running"
            elif volume["status"].get("state") != "attached":
                # 1857-1870: the instance manager cannot launch it and the volume is not attached.
                self._log("warning", f"Replica {rname} is marked as failed because the volume {volume['metadata']['name']} "
                          "is not attached and the instance manager is unable to launch the replica",
                          f"{VC}.openVolumeDependentResources", "volume_controller.go:1862")
                if not s.get("failedAt"):
                    s["failedAt"] = s["lastFailedAt"] = SimClock.now_rfc3339()
                s["desireState"] = "stopped"
        addresses: dict[str, str] = {}
        for rname, r in replicas.items():
            s, st = r["spec"], r.get("status") or {}
            if not s.get("nodeID") or s.get("failedAt") or s.get("engineName") != engine["metadata"]["name"]:
                continue
            if (r.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if st.get("currentState") != "running":
                return  # 1893-1896: wait until every scheduled replica runs
            if st.get("storageIP") and st.get("port"):
                addresses[rname] = f"tcp://{st['storageIP']}:{st['port']}"
        if not addresses:
            return  # "no healthy or scheduled replica for starting"
        engine["spec"].update(replicaAddressMap=addresses, nodeID=volume["spec"]["nodeID"], desireState="running")

    def _close(self, volume: dict[str, Any], engine: dict[str, Any], replicas: dict[str, dict[str, Any]], now: str) -> None:
        """closeVolumeDependentResources (lm v1.7.2 volume_controller.go:1948-1996)."""
        engine["spec"]["desireState"] = "stopped"
        engine["spec"]["nodeID"] = ""
        if (engine.get("status") or {}).get("currentState") not in (None, "", "stopped"):
            return
        if any(r["spec"].get("healthyAt") for r in replicas.values()):
            for r in replicas.values():  # 1975-1996: a rebuild cut short is a failed rebuild
                if vl.is_new(r) and r["spec"].get("nodeID"):
                    r["spec"]["failedAt"] = now
                    r["spec"]["lastFailedAt"] = now
        for r in replicas.values():
            r["spec"]["desireState"] = "stopped"

    @staticmethod
    def _opened(engine: Mapping[str, Any], replicas: Mapping[str, Mapping[str, Any]]) -> bool:
        """At least one replica and the engine running (1936-1946)."""
        return (engine.get("status") or {}).get("currentState") == "running" and any(
            (r.get("status") or {}).get("currentState") == "running" for r in replicas.values())

    @staticmethod
    def _closed(engine: Mapping[str, Any], replicas: Mapping[str, Mapping[str, Any]]) -> bool:
        """verifyVolumeDependentResourcesClosed (2007-2017)."""
        return (engine.get("status") or {}).get("currentState") in (None, "", "stopped") and all(
            (r.get("status") or {}).get("currentState", "stopped") == "stopped" for r in replicas.values())

    def _schedule(self, volume: dict[str, Any], engine: dict[str, Any] | None, replicas: dict[str, dict[str, Any]],
                  created: list[dict[str, Any]], settings: Mapping[str, str]) -> None:
        """reconcileVolumeCondition (lm v1.7.2 volume_controller.go:1712-1820): schedule every
        replica without a node, then the Scheduled condition."""
        status = volume["status"]
        sched = vl.SchedulingSettings.from_settings(lambda k, d: settings.get(k, d))
        scheduled = True
        errors: list[str] = []
        for rname, r in replicas.items():
            if r["spec"].get("nodeID"):
                continue
            if not r["spec"].get("healthyAt") and r["spec"].get("failedAt"):
                continue  # "Failed replica is not scheduled" (replica_scheduler.go:61-65)
            placement = vl.find_disk_candidates(volume, list(replicas.values()), self._nodes, sched)
            if not placement.candidates:
                self._log("error", f"There's no available disk for replica {rname}, size {r['spec'].get('volumeSize')}",
                          "scheduler.(*ReplicaScheduler).ScheduleReplica", "replica_scheduler.go:74")
                errors.extend(placement.errors)
                status["conditions"] = set_condition(status["conditions"], "Scheduled", "False",
                                                     "ReplicaSchedulingFailure", "", SimClock.now_rfc3339(), [], "Warning")
                scheduled = False
                asyncio.get_running_loop().call_later(self.m.cluster.clock.real(SCHEDULING_RETRY),
                                                      self.m.loops["volume"].trigger)
                continue
            where = vl.pick_disk(placement, self.rng)
            vl.place(r, where, f"{r['spec']['volumeName']}-{self.m.cluster.uuids.random_id()}")
            self._log("info", f"Schedule replica to node {where.node}", "scheduler.(*ReplicaScheduler).scheduleReplicaToDisk",
                      "replica_scheduler.go:536", replica=rname, disk=where.uuid, diskPath=where.path)
        if len(replicas) != int(volume["spec"].get("numberOfReplicas") or 0):
            scheduled = False
        if scheduled and vl.replenish_count(volume, replicas.values()) == 0:
            status["conditions"] = set_condition(status["conditions"], "Scheduled", "True", "", "",
                                                 SimClock.now_rfc3339(), [], "Normal")
            return
        if scheduled:
            return
        current = get_condition(status["conditions"], "Scheduled")
        if current.get("status") == "False":
            message = ";".join(sorted(set(errors or [vl.ERR_SCHEDULING_FAILED])))
            if current.get("reason") == "ReplicaSchedulingFailure" and current.get("message"):
                message = str(current["message"])
            status["conditions"] = set_condition(status["conditions"], "Scheduled", "False", str(current.get("reason")),
                                                 message, SimClock.now_rfc3339(), [], "Warning")

    def _cleanup(self, volume: dict[str, Any], replicas: dict[str, dict[str, Any]], deleted: list[str]) -> None:
        """cleanupReplicas (955-988): failed replacements that can never be reused
        (shouldCleanUpFailedReplica 4863-4893, rebuildRetryCount >= 5), then
        cleanupExtraHealthyReplicas -> cleanupEvictionRequestedReplicas (1065-1133)."""
        safe_as_last = any(vl.is_healthy_and_active(r) for r in replicas.values())
        for rname, r in replicas.items():
            s = r["spec"]
            if s.get("failedAt") and int(s.get("rebuildRetryCount") or 0) >= vl.FAILED_REPLICA_MAX_RETRY_COUNT:
                if s.get("lastHealthyAt") and not safe_as_last:
                    continue
                deleted.append(rname)
        healthy = sum(1 for r in replicas.values() if vl.is_healthy_and_active(r))
        if healthy <= int(volume["spec"].get("numberOfReplicas") or 0):
            return
        has_non_evicting_healthy = False
        evicting_healthy = ""
        order = vl.go_map_order(replicas, self.rng)
        for rname in order:
            r = replicas[rname]
            if not vl.is_available_healthy(r):
                continue
            if not r["spec"].get("evictionRequested"):
                has_non_evicting_healthy = True
                break
            evicting_healthy = rname
        for rname in order:
            r = replicas[rname]
            if not r["spec"].get("evictionRequested") or rname in deleted or r["metadata"].get("deletionTimestamp"):
                continue  # (a replica already being deleted is not deleted again: the emulator spares the log)
            if not has_non_evicting_healthy and rname == evicting_healthy:
                self._log("warning", f"Failed to evict replica {rname} for now since there is no other healthy replica",
                          f"{VC}.cleanupEvictionRequestedReplicas", "volume_controller.go:1113",
                          volume=volume["metadata"]["name"])
                continue
            deleted.append(rname)
            self._log("info", f"Evicted replica {rname} in disk {r['spec'].get('diskID')} of node {r['spec'].get('nodeID')} ",
                      f"{VC}.cleanupEvictionRequestedReplicas", "volume_controller.go:1128",
                      volume=volume["metadata"]["name"])
            return

    async def _delete_replica(self, volume: Mapping[str, Any], r: Mapping[str, Any]) -> None:
        """deleteReplica (4452-4461); the delete passes Longhorn's replica validator like any other."""
        try:
            await self.kube.delete("replicas", r["metadata"]["name"])
        except NotFound:
            pass
        except KubeError as exc:
            await self._event(volume, "Warning", "EvictionFailed",
                              f"volume {volume['metadata']['name']} failed to evict replica {r['metadata']['name']}")
            self._log("warning", f"Failed to delete replica {r['metadata']['name']}: {exc.message}",
                      f"{VC}.cleanupEvictionRequestedReplicas", "volume_controller.go:1119")

    # ------------------------------------------------------------------ attachment
    async def _attachment(self, volume: dict[str, Any]) -> bool:
        """handleVolumeAttachmentCreation (lm v1.7.2 volume_controller.go:495) and the
        VolumeAttachment controller's part (volume_attachment_controller.go:543-680): attach a
        fully detached volume to the node of its highest-priority ticket (ties: the smallest
        ticket ID), detach when no ticket wants the current node. False: come back later."""
        name = volume["metadata"]["name"]
        va = self.cache.peek("volumeattachments", name)
        if va is None:
            try:
                await self.kube.create("volumeattachments", vl.attachment_manifest(name))
            except AlreadyExists:
                pass
            return False
        tickets = list(((va.get("spec") or {}).get("attachmentTickets") or {}).values())
        target = volume["spec"].get("nodeID") or ""
        state = (volume.get("status") or {}).get("state", "")
        want = target
        if target and not any(t.get("nodeID") == target for t in tickets):
            want = ""
            self._log("info", f"Should detach volume {name} because there is no matching attachment ticket",
                      "controller.(*VolumeAttachmentController).shouldDoDetach", "volume_attachment_controller.go:595")
        elif not target and tickets and state == "detached" and (volume.get("status") or {}).get("robustness") != "faulted":
            best = sorted(tickets, key=lambda t: (-vl.TICKET_PRIORITY.get(t.get("type", ""), 0), t.get("id", "")))[0]
            want = best.get("nodeID", "")
        if want == target:
            return True
        body = copy.deepcopy(dict(self.cache.peek("volumes", name) or volume))
        body["spec"]["nodeID"] = want
        body["spec"]["lastAttachedBy"] = ""
        try:
            updated = await self.kube.replace("volumes", body)
        except (Conflict, NotFound):
            self.m.loops["volume"].trigger()
            return False
        volume["spec"] = updated["spec"]
        volume["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"]
        return True

    async def _eviction_ticket(self, volume: Mapping[str, Any], replicas: list[dict[str, Any]],
                               settings: Mapping[str, str]) -> None:
        """lm v1.7.2 volume_eviction_controller.go:161-210 (v1.8.1+: 206-242, only with candidates)."""
        name = volume["metadata"]["name"]
        va = _copy(self.cache.peek("volumeattachments", name))
        if va is None:
            return
        tickets = va["spec"].setdefault("attachmentTickets", {}) or {}
        va["spec"]["attachmentTickets"] = tickets
        tid = vl.ticket_id(vl.TICKET_EVICTION, name)
        evicting = any(r["spec"].get("evictionRequested") for r in replicas)
        if evicting and tid not in tickets:
            if self.m.cluster.release.eviction_ticket_needs_candidates and not self._candidates_for_all(volume, replicas, settings):
                self._log("warning", f"No disk candidates for evicting replica of volume {name!r}: evict replica failed",
                          "controller.(*VolumeEvictionController).reconcile", "volume_eviction_controller.go:229")
                return
            tickets[tid] = vl.ticket(vl.TICKET_EVICTION, name, (volume.get("status") or {}).get("ownerID", ""),
                                     {"disableFrontend": "any"})
        elif not evicting and tid in tickets:
            del tickets[tid]
        else:
            return
        try:
            await self.kube.replace("volumeattachments", va)
        except (Conflict, NotFound):
            self.m.loops["volume"].trigger()

    def _candidates_for_all(self, volume: Mapping[str, Any], replicas: list[dict[str, Any]],
                            settings: Mapping[str, str]) -> bool:
        """hasDiskCandidateForReplicaEviction (lm v1.8.1 volume_eviction_controller.go:219-242)."""
        sched = vl.SchedulingSettings.from_settings(lambda k, d: settings.get(k, d))
        return all(vl.find_disk_candidates(volume, replicas, self._nodes, sched).candidates for _ in replicas)

    # ------------------------------------------------------------------ engines
    async def sync_engines(self) -> None:
        for e in await self.cache.list("engines"):
            volume = self.cache.peek("volumes", (e.get("spec") or {}).get("volumeName", ""))
            if volume is not None and self.responsible(volume):
                await self.sync_engine(e)

    async def sync_engine(self, cached: Mapping[str, Any]) -> None:
        """The engine process and the engine controller's monitor, reduced (see module docstring)."""
        engine = _copy(cached)
        assert engine is not None
        ename = engine["metadata"]["name"]
        spec = engine["spec"]
        status = dict(engine.get("status") or {})
        before = copy.deepcopy(status)
        now = SimClock.now_rfc3339()
        clock = self.m.cluster.clock
        wanted = dict(spec.get("replicaAddressMap") or {})
        events: list[tuple[str, str, str]] = []
        if spec.get("desireState") != "running" or not wanted:
            status.update(currentState="stopped", replicaModeMap={}, currentReplicaAddressMap={}, started=False,
                          ip="", port=0)
            for key in [k for k in self._rebuilds if k[0] == ename]:
                del self._rebuilds[key]
        elif status.get("currentState") != "running":
            # The engine starts with the replicas of its address map (they hold the volume's data).
            status.update(currentState="running", started=True, ip="10.42.0.3", port=10001,
                          currentReplicaAddressMap=wanted, replicaModeMap={n: vl.MODE_RW for n in wanted},
                          replicaTransitionTimeMap={n: now for n in wanted}, endpoint="/dev/longhorn/" + spec.get("volumeName", ""))
        elif status.get("currentReplicaAddressMap") != wanted:
            status["currentReplicaAddressMap"] = wanted  # persisted first (engine_controller.go:351-356)
        else:
            modes = dict(status.get("replicaModeMap") or {})
            times = dict(status.get("replicaTransitionTimeMap") or {})
            for rname in list(modes):
                r = self.cache.peek("replicas", rname)
                if rname not in wanted or r is None or (r.get("metadata") or {}).get("deletionTimestamp"):
                    del modes[rname]  # removeUnknownReplica
                    times.pop(rname, None)
                    self._rebuilds.pop((ename, rname), None)
                elif (r.get("status") or {}).get("currentState") != "running" and modes[rname] != vl.MODE_ERR:
                    modes[rname] = vl.MODE_ERR
                    times[rname] = now
                    events.append(("Warning", "Faulted", f"Detected replica {rname} ({wanted[rname]}) in error"))
            for key, started in list(self._rebuilds.items()):
                done_at = started + self.m.cluster.rebuild_seconds
                if key[0] == ename and modes.get(key[1]) == vl.MODE_WO and clock.monotonic() >= done_at:
                    modes[key[1]] = vl.MODE_RW
                    times[key[1]] = now
                    del self._rebuilds[key]
                    events.append(("Normal", "Rebuilt", f"Detected replica {key[1]} ({wanted[key[1]]}) has been rebuilt"))
            if not any(m == vl.MODE_WO for m in modes.values()):  # one rebuild per engine (1775-1797)
                for rname in sorted(wanted):
                    if rname not in modes:
                        modes[rname] = vl.MODE_WO
                        times[rname] = now
                        self._rebuilds[(ename, rname)] = clock.monotonic()
                        asyncio.get_running_loop().call_later(clock.real(self.m.cluster.rebuild_seconds) + 0.01,
                                                              self.m.loops["engine"].trigger)
                        events.append(("Normal", "Rebuilding", f"Detected rebuilding replica {rname} ({wanted[rname]})"))
                        break
            status.update(replicaModeMap=modes, replicaTransitionTimeMap=times)
        if status == before:
            return
        engine["status"] = status
        try:
            await self.kube.replace_status("engines", engine)
        except (Conflict, NotFound):
            self.m.loops["engine"].trigger()
            return
        for kind, reason, message in events:
            await self._event(engine, kind, reason, message)
