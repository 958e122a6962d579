"""A whole simulated Longhorn cluster (v1.7.2 by default) on top of the emulated API server.

:class:`SimCluster` creates what a fresh Longhorn install has (namespace, Settings, one Longhorn
Node per node with its disks), lays the nodes' disks out as real directories under ``root_dir``
(``<root>/<node>/<disk host path>``), and runs one :class:`LonghornManager` per node plus the
shared watches that wake them. Helpers let tests and the demo add/remove disks (optionally with a
forced UUID or prefix), create BackingImages and volume replicas, and wait for the cluster to
settle. Everything talks to the API server over HTTP.

Typical use::

    api = ApiServer(); url = await api.start()
    cluster = SimCluster(api, tmp_path, nodes=2, disks_per_node=2, seed=1)
    await cluster.start(); await cluster.wait_until_ready()
    ...
    await cluster.stop()
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from kubernetes_asyncio.client.rest import ApiException

from bimguard.sim.clock import DEFAULT_TIME_SCALE, SimClock
from bimguard.sim.kubelet import SimKubelet
from bimguard.sim.longhorn import NAMESPACE, Release, disks
from bimguard.sim.longhorn import volumes as vl
from bimguard.sim.longhorn.backing_images import bim_name
from bimguard.sim.longhorn.informer import Caches
from bimguard.sim.longhorn.kube import AlreadyExists, Conflict, Forbidden, LonghornClient
from bimguard.sim.longhorn.manager import SERVICE_ACCOUNT, LonghornManager, cancel_and_wait
from bimguard.sim.longhorn.monitor import HostDisks
from bimguard.sim.longhorn.node_status import ManagerPanic, get_condition
from bimguard.sim.longhorn.volume_controller import REBUILD_SECONDS
from bimguard.sim.longhorn.webhook import LonghornWebhook
from bimguard.sim.uuidgen import UuidGen

log = logging.getLogger("bimguard.sim.longhorn.cluster")

DEFAULT_BIM_IMAGE = "longhornio/backing-image-manager:v1.7.2"
DEFAULT_DISK_PATH = "/var/lib/longhorn/"
WATCHED = ("nodes", "replicas", "backingimages", "backingimagemanagers", "backingimagedatasources", "orphans",
           "settings", "volumes", "engines", "volumeattachments")
CRASH_BACKOFF = 10.0  # Longhorn seconds before a crashed manager's pod runs again (kubelet back-off, scaled)


def default_settings(version: str, bim_image: str) -> dict[str, str]:
    """Settings a fresh install of ``version`` has that the emulation reads (lm types/setting.go defaults)."""
    out = {
        "default-backing-image-manager-image": bim_image,
        "current-longhorn-version": version,
        "storage-minimal-available-percentage": "25",
        "storage-over-provisioning-percentage": "100",
        "disable-scheduling-on-cordoned-node": "true",
        "backing-image-cleanup-wait-interval": "60",
        "concurrent-replica-rebuild-per-node-limit": "5",
        "concurrent-backing-image-replenish-per-node-limit": "5",
        "replica-soft-anti-affinity": "false",
        "replica-zone-soft-anti-affinity": "true",
        "replica-disk-soft-anti-affinity": "true",
    }
    if Release(version).orphan_auto_deletion_setting == "orphan-auto-deletion":
        out["orphan-auto-deletion"] = "false"
    else:  # lm v1.9.0 types/setting.go:1063-1090
        out["orphan-resource-auto-deletion"] = ""
        out["orphan-resource-auto-deletion-grace-period"] = "300"
    return out


@dataclass(frozen=True)
class Crash:
    """A simulated longhorn-manager exited with a panic."""

    node: str
    message: str
    where: str


class LonghornCrashed(AssertionError):
    """Raised by :meth:`SimCluster.stop` when a manager panicked and no test acknowledged it: a
    state that crashes Longhorn must never pass unnoticed."""


class SimCluster:
    """Simulated Longhorn nodes, disks and managers; see the module docstring."""

    def __init__(
        self,
        api: Any = None,
        root_dir: str | Path = ".",
        nodes: int | Iterable[str] = 3,
        disks_per_node: int = 1,
        seed: int | None = None,
        time_scale: float = DEFAULT_TIME_SCALE,
        longhorn_version: str = "v1.7.2",
        bim_image: str | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        disk_size: int | None = None,
        rebuild_seconds: float = REBUILD_SECONDS,
    ) -> None:
        self.api = api
        self._url = url
        self.root = Path(root_dir)
        self.node_names = [f"worker-{i + 1}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        self.disks_per_node = disks_per_node
        self.seed = seed
        self.clock = SimClock(time_scale)
        self.uuids = UuidGen(seed)
        # Own stream for disk names: sharing UuidGen's seed would make default-disk-<hex> names
        # repeat the hex digits of other disks' UUIDs.
        self._rng = random.Random(None if seed is None else f"sim-disk-names-{seed}")
        self.longhorn_version = longhorn_version
        self.release = Release(longhorn_version)
        # Go's map order and Longhorn's random choices (disk for a copy, tie-breaks): seeded.
        self.rng = random.Random(None if seed is None else f"sim-longhorn-{seed}")
        self.rebuild_seconds = rebuild_seconds
        self.crashes: list[Crash] = []
        self._restarts: set[asyncio.Task[None]] = set()
        self.webhook: LonghornWebhook | None = None
        # The chart renders the BIM image of the release (lm app/daemon.go:43,117; BIM names hash it).
        self.bim_image = bim_image or f"longhornio/backing-image-manager:{longhorn_version}"
        self.token = token
        self.disk_size = disk_size
        self.managers: dict[str, LonghornManager] = {}
        self.down: set[str] = set()
        self._hosts: dict[str, HostDisks] = {}
        self._paths: dict[tuple[str, str], str] = {}  # (node, disk) -> host path, as laid out here
        self.cache: Caches | None = None
        self.kube: LonghornClient | None = None
        self.kubelet: SimKubelet | None = None

    # ---------------------------------------------------------------- ClusterView for managers
    @property
    def url(self) -> str:
        if self._url:
            return self._url
        for attr in ("url", "base_url"):
            value = getattr(self.api, attr, None)
            if isinstance(value, str) and value:
                return value
        raise RuntimeError("SimCluster needs the API server's URL: pass url= or a started ApiServer")

    def manager_up(self, node: str) -> bool:
        return node in self.managers and node not in self.down

    def leader(self) -> str | None:
        return min((n for n in self.managers if n not in self.down), default=None)

    def host(self, node: str) -> HostDisks:
        if node not in self._hosts:
            self._hosts[node] = HostDisks(self.root, node)
        return self._hosts[node]

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.token is None and hasattr(self.api, "add_user"):
            # All managers authenticate as Longhorn's service account (longhorn/longhorn
            # chart/templates/daemonset-sa.yaml:154 @v1.7.2), so a webhook sees the same userInfo as on
            # a real cluster.
            self.token = "sim-longhorn-service-account"
            self.api.add_user(self.token, SERVICE_ACCOUNT,
                              ["system:serviceaccounts", "system:serviceaccounts:longhorn-system", "system:authenticated"])
        self.kube = LonghornClient(self.url, component="bimguard-sim", token=self.token)
        await self._ensure_namespace()
        for name, value in default_settings(self.longhorn_version, self.bim_image).items():
            await self.set_setting(name, value, create_only=True)
        for node in self.node_names:
            await self._create_node(node)
        # One informer cache per resource, shared by every manager (see informer.py).
        self.cache = Caches(LonghornClient(self.url, component="bimguard-sim-informers", token=self.token),
                            WATCHED, self.clock, self._route)
        self.cache.start()
        await self.cache.wait_synced()
        if hasattr(self.api, "webhook_hosts") and hasattr(self.api, "store"):
            # Longhorn's validating webhook (served by every manager in Longhorn; one server here).
            self.webhook = LonghornWebhook(self.cache, self.release)
            await self.webhook.start()
            self.webhook.register(self.api)
        for node in self.node_names:
            self._start_manager(node)

    async def start_kubelet(self, images: list[str] | None = None) -> SimKubelet:
        """Run a simulated kubelet for this cluster's nodes (same root, clock and down-set)."""
        if self.kubelet is None:
            self.kubelet = SimKubelet(self.url, self.root, set(self.node_names),
                                      images=images if images is not None else ["bimguard"],
                                      clock=self.clock, token=None, down=self.down)
            await self.kubelet.start()
        return self.kubelet

    async def stop(self) -> None:
        """Stop everything; raises :class:`LonghornCrashed` if a manager panicked unacknowledged."""
        for task in list(self._restarts):
            await cancel_and_wait(task)
        if self.kubelet is not None:
            await self.kubelet.stop()
            self.kubelet = None
        for m in list(self.managers.values()):
            await m.stop()
        self.managers.clear()
        if self.webhook is not None:
            await self.webhook.stop()
            self.webhook = None
        if self.cache is not None:
            await self.cache.stop()
            for inf in self.cache.informers.values():
                await inf.client.close()
                break  # all informers share one client
            self.cache = None
        if self.kube:
            await self.kube.close()
            self.kube = None
        if self.crashes:
            crashes, self.crashes = self.crashes, []
            raise LonghornCrashed("longhorn-manager panicked: " + "; ".join(
                f"{c.node}: {c.message} ({c.where})" for c in crashes))

    def acknowledge_crashes(self) -> list[Crash]:
        """The crashes so far, forgotten: for tests that provoke one on purpose."""
        crashes, self.crashes = self.crashes, []
        return crashes

    def manager_crashed(self, node: str, panic: ManagerPanic) -> None:
        """A manager panicked: its process is gone until the kubelet restarts the pod."""
        self.crashes.append(Crash(node, panic.message, panic.where))
        task = asyncio.get_running_loop().create_task(self._restart(node), name=f"restart-manager-{node}")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, node: str) -> None:
        m = self.managers.pop(node, None)
        if m is not None:
            await m.stop()
        await self.clock.sleep(CRASH_BACKOFF)
        if node not in self.down and node not in self.managers and self.cache is not None:
            self._start_manager(node)

    async def __aenter__(self) -> "SimCluster":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def _start_manager(self, node: str) -> None:
        m = LonghornManager(self, node)
        self.managers[node] = m
        m.start()

    async def set_node_down(self, node: str, down: bool = True) -> None:
        """A down node has no running longhorn-manager (and the kubelet runs none of its pods)."""
        if down and node not in self.down:
            self.down.add(node)
            m = self.managers.pop(node, None)
            if m:
                await m.stop()
        elif not down and node in self.down:
            self.down.discard(node)
            self._start_manager(node)
        self._wake_all("nodes")

    async def set_manager_down(self, node: str, down: bool = True) -> None:
        """Stop (or start again) only the longhorn-manager of ``node``: the node and its kubelet
        keep running (a crash-looping or evicted manager pod). Nobody updates that node's disk
        status meanwhile (only the owner does, lm ``controller/node_controller.go:433``); the
        other managers report the node not Ready."""
        if node in self.down:
            raise ValueError(f"{node} is down; set_node_down({node!r}, False) first")
        if down:
            m = self.managers.pop(node, None)
            if m:
                await m.stop()
        elif node not in self.managers:
            self._start_manager(node)
        self._wake_all("nodes")

    def _wake_all(self, plural: str) -> None:
        self._route(plural, None)

    def _route(self, plural: str, obj: dict[str, Any] | None) -> None:
        """Wake the controller loops an informer event concerns (the event handlers registered in
        lm v1.7.2 NewNodeController node_controller.go:88, backing_image_controller.go:50, ...).
        ``obj`` None (a relist) wakes everything that watches ``plural``."""
        every = {
            "nodes": ("node", "replica", "backingimage", "bim", "bids", "orphan", "volume"),
            "replicas": ("node", "replica", "backingimage", "volume", "engine"),
            "backingimages": ("backingimage", "replica", "node", "bids"),
            "backingimagemanagers": ("backingimage", "bim", "node"),
            "backingimagedatasources": ("backingimage", "bids", "bim"),
            "orphans": ("orphan", "node"),
            "settings": ("node", "volume", "replica"),
            "volumes": ("volume", "engine"),
            "engines": ("volume", "engine"),
            "volumeattachments": ("volume",),
        }.get(plural, ())
        managers = self.managers
        if obj is None:
            for m in managers.values():
                m.wake(*every)
            return
        spec = obj.get("spec") or {}
        leader = managers.get(self.leader() or "")
        if plural == "nodes":
            owner = managers.get(obj["metadata"]["name"])
            if owner:
                owner.wake("node", "replica", "bim", "bids", "orphan")
            if leader:
                leader.wake("node")
            for m in managers.values():
                m.wake("backingimage", "volume")  # ready disks feed BIM creation and scheduling
        elif plural == "replicas":
            owner = managers.get(spec.get("nodeID", ""))
            if owner:
                owner.wake("node", "replica")
            self._wake_volume_owner(spec.get("volumeName") or (obj["metadata"].get("labels") or {}).get("longhornvolume", ""))
            for m in managers.values():
                m.wake("backingimage")
        elif plural in ("volumes", "engines", "volumeattachments"):
            name = obj["metadata"]["name"] if plural != "engines" else spec.get("volumeName", "")
            self._wake_volume_owner(name if plural != "volumeattachments" else spec.get("volume", name))
        elif plural == "backingimagedatasources":
            owner = managers.get(spec.get("nodeID", ""))
            if owner:
                owner.wake("bids")
            for m in managers.values():
                m.wake("backingimage", "bim")
        elif plural == "backingimages":
            for m in managers.values():
                m.wake("backingimage", "replica", "node")  # node: eviction of copies reads BI status
        elif plural == "backingimagemanagers":
            owner = managers.get(spec.get("nodeID", ""))
            if owner:
                owner.wake("bim", "node")
            for m in managers.values():
                m.wake("backingimage")
        elif plural == "orphans":
            owner = managers.get(spec.get("nodeID", ""))
            if owner:
                owner.wake("orphan", "node")
        else:
            for m in managers.values():
                m.wake(*every)

    def _wake_volume_owner(self, volume: str) -> None:
        v = self.cache.peek("volumes", volume) if self.cache is not None and volume else None
        if v is None:
            return
        for m in self.managers.values():
            if m.volumes.responsible(v):
                m.wake("volume", "engine")

    # ---------------------------------------------------------------- setup objects
    async def _ensure_namespace(self) -> None:
        assert self.kube is not None
        try:
            await self.kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def set_setting(self, name: str, value: str, *, create_only: bool = False) -> None:
        assert self.kube is not None
        body = {"kind": "Setting", "metadata": {"name": name}, "value": value}
        try:
            await self.kube.create("settings", body)
            return
        except AlreadyExists:
            if create_only:
                return
        for _ in range(10):
            cur = await self.kube.get("settings", name)
            cur["value"] = value
            try:
                await self.kube.replace("settings", cur)
                return
            except Conflict:
                continue

    def _disk_layout(self, node: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(self.disks_per_node):
            if i == 0:
                out[f"default-disk-{self._rng.getrandbits(64):016x}"] = DEFAULT_DISK_PATH
            else:
                out[f"disk-{i}"] = f"/mnt/disk{i}"
        return out

    @staticmethod
    def disk_spec(path: str, *, storage_reserved: int = 0, allow_scheduling: bool = True) -> dict[str, Any]:
        return {"allowScheduling": allow_scheduling, "diskDriver": "", "diskType": "filesystem",
                "evictionRequested": False, "path": path, "storageReserved": storage_reserved, "tags": []}

    async def _create_node(self, node: str) -> None:
        assert self.kube is not None
        layout = self._disk_layout(node)
        for disk_name, path in layout.items():
            self._paths[(node, disk_name)] = path
            self.host(node).dir(path).mkdir(parents=True, exist_ok=True)
            if self.disk_size:
                self.host(node).sizes[path] = self.disk_size
        body = {
            "kind": "Node",
            "metadata": {"name": node, "finalizers": ["longhorn.io"]},
            "spec": {"name": node, "allowScheduling": True, "evictionRequested": False, "tags": [],
                     "instanceManagerCPURequest": 0,
                     "disks": {d: self.disk_spec(p) for d, p in layout.items()}},
        }
        try:
            await self.kube.create("nodes", body)
        except AlreadyExists:
            pass

    # ---------------------------------------------------------------- helpers for tests / demo
    async def get_node(self, node: str) -> dict[str, Any]:
        assert self.kube is not None
        return await self.kube.get("nodes", node)

    async def update_node_spec(self, node: str, mutate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """GET, mutate(obj) in place, PUT; retried on 409, and on Longhorn's 403 while the Node's
        spec and status disk sets differ ("being syncing and please retry later", lm
        webhook/resources/node/validator.go:115-117), like any well-behaved client. Longhorn's
        other refusals (422) are raised."""
        assert self.kube is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            obj = await self.kube.get("nodes", node)
            mutate(obj)
            try:
                return await self.kube.replace("nodes", obj)
            except Conflict:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)
            except Forbidden:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(self.clock.real(1.0))

    async def recreate_node(self, node: str, timeout: float = 10.0) -> None:
        """Delete the Longhorn Node object and create it again with the same spec.

        Longhorn then re-records whatever UUIDs the cfg files hold -- a ``"" -> X`` write for an
        *old* UUID that Replicas and BIMs still reference and are re-linked by
        (``controller/node_controller.go:831-864 @v1.7.2``; longhorn/longhorn
        ``enhancements/20201106-disk-reconnection.md``). Issue #8021 uses this as a workaround.
        """
        await self.restore_node(node, await self.delete_node(node, timeout))

    async def delete_node(self, node: str, timeout: float = 10.0) -> dict[str, Any]:
        """Delete the Longhorn Node object (`kubectl delete nodes.longhorn.io <node>`; Longhorn's
        validator has no DELETE rule, webhook/resources/node/validator.go:40-43 @v1.7.2) and wait
        until its finalizer is dropped (node_controller.go:387). Its manager and kubelet keep
        running, the disks, their cfg files and every object naming them stay; nothing creates
        the Node again until `restore_node` (Longhorn itself only creates a missing Node, with just
        the default disk, when its manager starts: app/daemon.go:324-335). Returns its spec."""
        assert self.kube is not None
        old = await self.kube.get("nodes", node)
        await self.kube.delete("nodes", node)

        async def gone() -> bool:
            assert self.kube is not None
            return await self.kube.get_or_none("nodes", node) is None

        await self.wait_for(gone, timeout, f"node {node} deleted")
        return dict(old["spec"])

    async def restore_node(self, node: str, spec: dict[str, Any]) -> None:
        """Create the Longhorn Node object again with `spec` (an operator putting back the one
        they deleted): its manager records the UUIDs the cfg files hold ("" -> X)."""
        assert self.kube is not None
        body = {"kind": "Node", "metadata": {"name": node, "finalizers": ["longhorn.io"]}, "spec": spec}
        await self.kube.create("nodes", body)
        self._wake_all("nodes")

    async def add_disk(self, node: str, disk_name: str, path: str | None = None, force_uuid: str | None = None,
                       *, create_dir: bool = True) -> str:
        """Add ``disk_name`` to ``spec.disks`` of ``node``; returns the host path.

        ``force_uuid`` (a full UUID or a hex prefix) is what the monitor will draw when it
        generates this disk's cfg -- only used if the directory has no cfg yet.
        """
        path = path or f"/mnt/{disk_name}"
        self._paths[(node, disk_name)] = path
        if create_dir:
            self.host(node).dir(path).mkdir(parents=True, exist_ok=True)
        if self.disk_size:
            self.host(node).sizes[path] = self.disk_size
        if force_uuid:
            self.uuids.force(force_uuid, node=node, disk=disk_name)

        def mutate(obj: dict[str, Any]) -> None:
            obj["spec"].setdefault("disks", {})[disk_name] = self.disk_spec(path)

        await self.update_node_spec(node, mutate)
        return path

    async def remove_disk(self, node: str, disk_name: str) -> None:
        """Remove the disk from ``spec.disks`` the way Longhorn lets one: scheduling off first, then
        the entry (its validator judges the *stored* allowScheduling and refuses while
        ``storageScheduled`` is not 0, lm webhook/resources/node/validator.go:192-199; that 422 is
        raised). Longhorn then deletes the status entry (node_controller.go:1663)."""
        node_obj = await self.get_node(node)
        if ((node_obj["spec"].get("disks") or {}).get(disk_name) or {}).get("allowScheduling"):
            await self.set_disk_flags(node, disk_name, allow_scheduling=False)

        def mutate(obj: dict[str, Any]) -> None:
            (obj["spec"].get("disks") or {}).pop(disk_name, None)

        await self.update_node_spec(node, mutate)

    async def rename_disk(self, node: str, old: str, new: str) -> None:
        """Rename a disk entry: one spec write replaces ``old`` by ``new`` with the same path and
        settings. Scheduling goes off on ``old`` first, because Longhorn's validator refuses to
        remove a disk whose *stored* ``allowScheduling`` is on (lm
        ``webhook/resources/node/validator.go:192-199``); ``new`` gets the original flag back. The
        cfg keeps the ``diskName`` it was created with: Longhorn does not compare it for filesystem
        disks (``controller/monitor/disk_monitor.go:216-300``)."""
        node_obj = await self.get_node(node)
        allow = bool(((node_obj["spec"].get("disks") or {}).get(old) or {}).get("allowScheduling"))
        if allow:
            await self.set_disk_flags(node, old, allow_scheduling=False)

        def mutate(obj: dict[str, Any]) -> None:
            disks_ = obj["spec"]["disks"]
            disks_[new] = {**disks_.pop(old), "allowScheduling": allow}

        await self.update_node_spec(node, mutate)
        self._paths[(node, new)] = self._paths.pop((node, old))

    async def set_disk_flags(self, node: str, disk_name: str, *, allow_scheduling: bool | None = None,
                             eviction_requested: bool | None = None) -> None:
        def mutate(obj: dict[str, Any]) -> None:
            d = obj["spec"]["disks"][disk_name]
            if allow_scheduling is not None:
                d["allowScheduling"] = allow_scheduling
            if eviction_requested is not None:
                d["evictionRequested"] = eviction_requested

        await self.update_node_spec(node, mutate)

    async def set_node_flags(self, node: str, *, allow_scheduling: bool | None = None,
                             eviction_requested: bool | None = None) -> None:
        def mutate(obj: dict[str, Any]) -> None:
            if allow_scheduling is not None:
                obj["spec"]["allowScheduling"] = allow_scheduling
            if eviction_requested is not None:
                obj["spec"]["evictionRequested"] = eviction_requested

        await self.update_node_spec(node, mutate)

    def disks_of(self, node: str) -> list[str]:
        """Disk names of ``node`` as laid out by this SimCluster (creation order)."""
        return [d for (n, d) in self._paths if n == node]

    def host_path(self, node: str, disk_name: str) -> str:
        """The disk's host path (``spec.disks[disk].path``) as laid out by this SimCluster."""
        try:
            return self._paths[(node, disk_name)]
        except KeyError:
            raise KeyError(f"unknown disk {node}/{disk_name}") from None

    def disk_dir(self, node: str, disk_name: str) -> Path:
        """Real directory of a disk: ``<root>/<node>/<host path>``."""
        return self.host(node).dir(self.host_path(node, disk_name))

    def cfg_path(self, node: str, disk_name: str) -> Path:
        return self.disk_dir(node, disk_name) / disks.DISK_CONFIG_FILE

    def read_cfg(self, node: str, disk_name: str) -> disks.DiskConfig:
        return disks.decode_cfg(self.cfg_path(node, disk_name).read_bytes())

    async def disk_uuid(self, node: str, disk_name: str) -> str:
        """The recorded ``status.diskStatus[disk].diskUUID`` ("" if none yet)."""
        obj = await self.get_node(node)
        return ((obj.get("status") or {}).get("diskStatus") or {}).get(disk_name, {}).get("diskUUID", "") or ""

    async def set_status_disk_uuid(self, node: str, disk_name: str, uuid: str) -> None:
        """Write a disk's recorded UUID through the status subresource (what the product does)."""
        assert self.kube is not None
        for _ in range(20):
            obj = await self.kube.get("nodes", node)
            obj["status"]["diskStatus"][disk_name]["diskUUID"] = uuid
            try:
                await self.kube.replace_status("nodes", obj)
                return
            except Conflict:
                await asyncio.sleep(0.01)
        raise RuntimeError("persistent conflicts")

    async def create_backing_image(self, name: str, *, min_copies: int = 1,
                                   disks_: Iterable[tuple[str, str]] = (),
                                   url: str = "https://longhorn-backing-image.s3-us-west-1.amazonaws.com/parrot.raw") -> dict[str, Any]:
        """Create a BackingImage; ``disks_`` = initial copies as (node, disk) (must be recorded)."""
        assert self.kube is not None
        spec_map: dict[str, Any] = {}
        for node, disk in disks_:
            uuid = await self.disk_uuid(node, disk)
            if not uuid:
                raise RuntimeError(f"disk {node}/{disk} has no recorded UUID yet")
            spec_map[uuid] = {"evictionRequested": False}
        body = {
            "kind": "BackingImage",
            "metadata": {"name": name, "finalizers": ["longhorn.io"]},
            "spec": {"checksum": "", "diskFileSpecMap": spec_map, "diskSelector": [], "disks": {},
                     "minNumberOfCopies": min_copies, "nodeSelector": [], "secret": "", "secretNamespace": "",
                     "sourceParameters": {"url": url}, "sourceType": "download"},
        }
        return await self.kube.create("backingimages", body)

    async def create_volume(self, volume: str, placements: Iterable[tuple[str, str]] = (), *,
                            backing_image: str | None = None, size: int = 1073741824,
                            replicas: int | None = None, attach_to: str | None = "",
                            anti_affinity: str = "ignored") -> list[str]:
        """A Volume with its engine and one Replica per (node, disk), as Longhorn's scheduler leaves
        them (``replicas`` defaults to one per placement; without placements Longhorn's own
        scheduler places them). ``attach_to``: a workload's attachment ticket on that node (""
        = the first placement's node), or None for a detached volume. Returns the replica names."""
        assert self.kube is not None
        placements = list(placements)
        body = vl.volume_manifest(volume, size, replicas if replicas is not None else max(1, len(placements)),
                                  backing_image, anti_affinity=anti_affinity)
        # Engine and replicas first: the volume controller creates replicas for a volume it finds
        # without any (first creation), and the placed ones must already be there.
        engine = await self.kube.create("engines", vl.engine_manifest(body))
        names: list[str] = []
        for node, disk in placements:
            uuid = await self.disk_uuid(node, disk)
            if not uuid:
                raise RuntimeError(f"disk {node}/{disk} has no recorded UUID yet")
            name = f"{volume}-r-{self.uuids.random_id()}"
            r = vl.new_replica(body, engine, name, rebuilding=False)
            vl.place(r, vl.Candidate(node, disk, uuid, self.host_path(node, disk), 0), f"{volume}-{self.uuids.random_id()}")
            await self.kube.create("replicas", r)
            names.append(name)
        if placements:
            await self.wait_for(lambda: len(self.cache.informers["replicas"].list(f"longhornvolume={volume}")) == len(names),
                                10, f"replicas of {volume} in the managers' cache")
        await self.kube.create("volumes", body)
        if attach_to is not None:
            await self.set_attachment(volume, attach_to or (placements[0][0] if placements else self.node_names[0]))
        return names

    async def set_attachment(self, volume: str, node: str | None) -> None:
        """Attach the volume for a workload on ``node`` (a CSI ticket), or drop every workload ticket (None)."""
        assert self.kube is not None
        for _ in range(200):
            va = await self.kube.get_or_none("volumeattachments", volume)  # the volume controller creates it
            if va is None:
                await asyncio.sleep(self.clock.real(1.0))
                continue
            tickets = va["spec"].setdefault("attachmentTickets", {})
            for tid in [k for k, t in tickets.items() if t.get("type") == vl.TICKET_CSI]:
                del tickets[tid]
            if node is not None:
                t = vl.ticket(vl.TICKET_CSI, f"csi-{volume}", node, {"disableFrontend": "false"})
                tickets[t["id"]] = t
            try:
                await self.kube.replace("volumeattachments", va)
                return
            except Conflict:
                await asyncio.sleep(0.01)
        raise RuntimeError(f"could not update the attachment of {volume}")

    def expected_bim_name(self, disk_uuid: str) -> str:
        return bim_name(self.bim_image, disk_uuid)

    async def ready_disks(self) -> tuple[int, int]:
        """(disks recorded and Ready, disks) over every node that is up."""
        assert self.kube is not None
        ready = total = 0
        for n in await self.kube.list("nodes"):
            if n["metadata"]["name"] in self.down:
                continue
            st = (n.get("status") or {}).get("diskStatus") or {}
            for d in (n.get("spec", {}).get("disks") or {}):
                total += 1
                e = st.get(d)
                ready += bool(e and e.get("diskUUID")
                              and get_condition(e.get("conditions"), "Ready").get("status") == "True")
        return ready, total

    async def all_disks_ready(self) -> bool:
        ready, total = await self.ready_disks()
        return ready == total

    async def wait_until_ready(self, timeout: float = 30.0,
                               progress: Callable[[int, int], None] | None = None) -> None:
        """Wait (real seconds) until every disk of every up node is recorded and Ready; `progress`
        hears (ready, total) every few seconds meanwhile."""
        loop = asyncio.get_running_loop()
        deadline, told = loop.time() + timeout, loop.time()
        # Each look lists every Node: on a big cluster looking as often as wait_for does would
        # take the CPU the managers need to get there.
        pause = max(0.05, len(self.node_names) / 2000)
        while True:
            ready, total = await self.ready_disks()
            if ready == total:
                return
            if progress is not None and loop.time() - told >= 5:
                progress(ready, total)
                told = loop.time()
            if loop.time() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for all disks recorded and Ready "
                                   f"({ready} of {total})")
            await asyncio.sleep(pause)

    async def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
        """Poll an async or sync predicate until truthy; returns its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if loop.time() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(min(0.05, self.clock.real(1)))

    async def disk_table(self) -> list[dict[str, Any]]:
        """One row per spec disk (for the demo and for humans): node, disk, path, recorded UUID,
        cfg UUID ("" if no cfg, "?" if unreadable), Ready and Schedulable status and reason."""
        assert self.kube is not None
        rows: list[dict[str, Any]] = []
        for n in sorted(await self.kube.list("nodes"), key=lambda o: o["metadata"]["name"]):
            name = n["metadata"]["name"]
            st = (n.get("status") or {}).get("diskStatus") or {}
            for d, spec in sorted((n.get("spec", {}).get("disks") or {}).items()):
                e = st.get(d) or {}
                cfg_file = self.host(name).dir(spec.get("path", "")) / disks.DISK_CONFIG_FILE
                try:
                    cfg_uuid = disks.decode_cfg(cfg_file.read_bytes()).disk_uuid
                except FileNotFoundError:
                    cfg_uuid = ""
                except (OSError, ValueError):
                    cfg_uuid = "?"
                ready = get_condition(e.get("conditions"), "Ready")
                sched = get_condition(e.get("conditions"), "Schedulable")
                rows.append({
                    "node": name, "disk": d, "path": spec.get("path", ""), "diskUUID": e.get("diskUUID", ""),
                    "cfgUUID": cfg_uuid, "ready": ready.get("status"), "readyReason": ready.get("reason", ""),
                    "schedulable": sched.get("status"), "scheduledReplicas": len(e.get("scheduledReplica") or {}),
                })
        return rows

    def manager_log(self, node: str) -> str:
        m = self.managers.get(node)
        return m.log.text() if m else ""

    def all_log_lines(self) -> list[str]:
        return [line for m in self.managers.values() for line in m.log.lines]

    def set_rebuild_seconds(self, seconds: float) -> None:
        """How long (Longhorn seconds) the engine takes to rebuild a replica, from now on and for the
        rebuilds already running (measured from their start): a long one is a rebuild that outlasts
        a repair -- a big volume over a slow network; Longhorn bounds it only by the long-grpc-timeout
        setting, 24 h by default (module docstring of volume_controller.py)."""
        self.rebuild_seconds = seconds
        for m in list(self.managers.values()):
            m.loops["engine"].trigger()

    async def wake(self) -> None:
        """Poke every monitor and loop now (tests use this to skip waiting for a poll)."""
        for m in list(self.managers.values()):
            await m.monitor.run_once()
            for loop in m.loops.values():
                loop.trigger()


__all__ = ["SimCluster", "DEFAULT_BIM_IMAGE", "default_settings"]
