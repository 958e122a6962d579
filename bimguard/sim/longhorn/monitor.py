"""The disk monitor of one simulated longhorn-manager (lm v1.7.2 controller/monitor/disk_monitor.go).

``collect_disk_data`` is the body of one poll: for every filesystem disk in ``node.spec.disks`` read
the cfg, generate it when missing, "statfs" the directory and find orphaned replica directories.
:class:`DiskMonitor` runs it every 30 Longhorn seconds (first poll one period after start,
``Start`` polls with ``immediate=false``, disk_monitor.go:97) and calls ``on_change`` only when the
result differs from the previous one (disk_monitor.go:132 ``run``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

from bimguard.sim.clock import SimClock
from bimguard.sim.longhorn import disks
from bimguard.sim.uuidgen import UuidGen

log = logging.getLogger("bimguard.sim.longhorn.monitor")

MONITOR_SYNC_PERIOD = 30.0  # Longhorn seconds, lm v1.7.2 disk_monitor.go:28 NodeMonitorSyncPeriod
REASON_NO_DISK_INFO = "NoDiskInfo"

#: Simulated capacity of every disk unless the cluster says otherwise (bytes).
DEFAULT_DISK_SIZE = 200 * 1024**3


@dataclass(frozen=True)
class DiskInfo:
    """lm ``monitor.CollectedDiskInfo``: what one poll learnt about one spec disk."""

    disk_name: str  # from the cfg ("diskName"), or the spec key when there is no cfg
    disk_uuid: str  # from the cfg; "" when unknown
    path: str  # spec path (host path)
    disk_driver: str
    node_or_disk_evicted: bool
    stat: disks.DiskStat | None
    orphaned_dirs: frozenset[str] = frozenset()
    error_reason: str = ""
    error_message: str = ""

    @property
    def has_error(self) -> bool:
        return bool(self.error_message)


@dataclass
class HostDisks:
    """Where the simulated node's disks live and how big they pretend to be."""

    root: Path
    node: str
    sizes: dict[str, int] = field(default_factory=dict)  # host path -> capacity
    used: dict[str, int] = field(default_factory=dict)  # host path -> bytes in use

    def dir(self, host_path: str) -> Path:
        return disks.host_dir(self.root, self.node, host_path)

    def stat(self, host_path: str) -> disks.DiskStat:
        d = self.dir(host_path)
        if not d.is_dir():
            raise OSError(f"no such file or directory: {host_path}")
        size = self.sizes.get(host_path, DEFAULT_DISK_SIZE)
        used = self.used.get(host_path, size // 20)
        return disks.DiskStat(disks.simulated_fsid(d), size, max(size - used, 0))


def _evicted(node: Mapping[str, Any], disk_spec: Mapping[str, Any]) -> bool:
    return bool(node.get("spec", {}).get("evictionRequested")) or bool(disk_spec.get("evictionRequested"))


def _ready_status(cond_list: Sequence[Mapping[str, Any]] | None) -> str:
    for c in cond_list or []:
        if c.get("type") == "Ready":
            return str(c.get("status", "Unknown"))
    return "Unknown"


def can_collect_disk_data(node: Mapping[str, Any], disk_name: str, disk_uuid: str, path: str) -> bool:
    """Orphan scan only on a settled disk (lm v1.7.2 disk_monitor.go:356 canCollectDiskData)."""
    spec = node.get("spec", {})
    dspec = (spec.get("disks") or {}).get(disk_name) or {}
    dstat = ((node.get("status") or {}).get("diskStatus") or {}).get(disk_name)
    return (
        not spec.get("evictionRequested")
        and not dspec.get("evictionRequested")
        and dspec.get("path") == path
        and dstat is not None
        and dstat.get("diskUUID", "") == disk_uuid
        and _ready_status(dstat.get("conditions")) == "True"
    )


def orphaned_directories(
    candidates: set[str], disk_uuid: str, path: str, replicas: Sequence[Mapping[str, Any]], disk_dir: Path
) -> frozenset[str]:
    """Replica dirs matched by no Replica CR of this UUID and path, and holding ``volume.meta``.

    lm v1.7.2 disk_monitor.go getOrphanedReplicaDirectoryNames: replicas are selected by label
    ``longhorndiskuuid`` (ListReplicasByDiskUUID), then matched on spec.diskPath and
    spec.dataDirectoryName; directories without a ``volume.meta`` are ignored
    (``controller/monitor/disk_monitor.go:423-440 @v1.7.2``).
    """
    left = set(candidates)
    for r in replicas:
        if (r.get("metadata", {}).get("labels") or {}).get("longhorndiskuuid") != disk_uuid:
            continue
        rspec = r.get("spec", {})
        if rspec.get("diskPath") == path:
            left.discard(rspec.get("dataDirectoryName", ""))
    return frozenset(d for d in left if (disk_dir / disks.REPLICA_DIRECTORY / d / disks.VOLUME_META).is_file())


def collect_disk_data(
    node: Mapping[str, Any], host: HostDisks, uuids: UuidGen, replicas: Sequence[Mapping[str, Any]]
) -> dict[str, DiskInfo]:
    """One monitor pass over the filesystem disks of ``node`` (lm v1.7.2 disk_monitor.go:216)."""
    name = node["metadata"]["name"]
    out: dict[str, DiskInfo] = {}
    status_disks = (node.get("status") or {}).get("diskStatus") or {}
    for disk_name, dspec in (node.get("spec", {}).get("disks") or {}).items():
        path = dspec.get("path", "")
        evicted = _evicted(node, dspec)
        driver = (status_disks.get(disk_name) or {}).get("diskDriver", "") or ""
        prefix = f"Disk {disk_name}({path}) on node {name} is not ready"

        def failed(message: str, uuid: str = "") -> DiskInfo:
            return DiskInfo(disk_name, uuid, path, driver, evicted, None, frozenset(), REASON_NO_DISK_INFO, message)

        if dspec.get("diskType", "filesystem") != "filesystem":
            # Block disks need the v2 instance manager's disk service: not simulated.
            out[disk_name] = DiskInfo(
                disk_name, "", path, driver, evicted, None, frozenset(), "DiskServiceUnreachable",
                f"Disk {disk_name} ({path}) on node {name} is not ready: data engine is disabled",
            )
            continue

        ddir = host.dir(path)
        cfg_path = ddir / disks.DISK_CONFIG_FILE
        cfg: disks.DiskConfig | None = None
        try:
            # stat first: ANY stat error counts as "not found": go-common-libs io.ReadFileContent wraps a
            # failed os.Stat as "cannot find file" (vendor/github.com/longhorn/go-common-libs/io/file.go:202-203
            # @v1.7.2), which types.ErrorIsNotFound (types/types.go:750-751 @v1.7.2) takes for a missing cfg
            # and the monitor generates a new one (controller/monitor/disk_monitor.go:264-290 @v1.7.2).
            cfg_path.stat()
            found = True
        except OSError:
            found = False
        if found:
            try:
                raw = cfg_path.read_bytes()
            except OSError as exc:
                err = f"failed to read host disk config file {disks.DISK_CONFIG_FILE}: {exc}"
                out[disk_name] = failed(f"{prefix}: failed to get disk config: error: failed to get disk config for {path}: {err}")
                continue
            try:
                cfg = disks.decode_cfg(raw)
            except ValueError as exc:
                # lm v1.7.2 disk_monitor.go:269 -- decode failure: NoDiskInfo, no regeneration
                # (disk_utils.go:75 wraps "failed to unmarshal host <file> content: <output>").
                err = f"failed to unmarshal host {cfg_path_str(path)} content: {_safe(raw)}: {exc}"
                out[disk_name] = failed(f"{prefix}: failed to get disk config: error: failed to get disk config for {path}: {err}")
                continue
        else:
            # Not found -> generate a NEW random UUID (disk_utils.go:133); the recorded status UUID
            # is not reused for filesystem disks.
            try:
                if not ddir.is_dir():
                    raise OSError(f"no such file or directory: {path}")
                cfg = disks.DiskConfig(disk_name, uuids.disk_uuid(name, disk_name), "")
                disks.write_cfg_exclusive(ddir, cfg)
                log.info("Generated disk config for disk %s(%s) on node %s: %s", disk_name, path, name, cfg.disk_uuid)
            except FileExistsError:
                # The file reappeared between the two checks: Longhorn gets (nil, nil) here
                # (controller/monitor/disk_utils.go:149-150 @v1.7.2) and crashes on the nil config
                # (controller/monitor/disk_monitor.go:308 @v1.7.2). The sim reports it instead of crashing
                # and retries next poll.
                log.error("disk config on %s reappeared during generation (longhorn-manager would panic here)", path)
                out[disk_name] = failed(f"{prefix}: failed to generate disk config: error: disk cfg on {cfg_path_str(path)} exists, cannot override")
                continue
            except OSError as exc:
                out[disk_name] = failed(f"{prefix}: failed to generate disk config: error: failed to generate disk config for {path}: {exc}")
                continue

        try:
            stat = host.stat(path)
        except OSError as exc:
            # lm v1.7.2 disk_monitor.go:303
            out[disk_name] = failed(f"{prefix}: Get disk information error: {exc}")
            continue

        orphans: frozenset[str] = frozenset()
        if can_collect_disk_data(node, disk_name, cfg.disk_uuid, path):
            orphans = orphaned_directories(disks.possible_replica_directories(ddir), cfg.disk_uuid, path, replicas, ddir)
        out[disk_name] = DiskInfo(cfg.disk_name, cfg.disk_uuid, path, cfg.disk_driver, evicted, stat, orphans)
    return out


def cfg_path_str(path: str) -> str:
    return path.rstrip("/") + "/" + disks.DISK_CONFIG_FILE


def _safe(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


class DiskMonitor:
    """Poll loop around :func:`collect_disk_data`; keeps the last snapshot for the node controller."""

    def __init__(
        self,
        node_name: str,
        host: HostDisks,
        uuids: UuidGen,
        clock: SimClock,
        fetch: Callable[[], Awaitable[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]],
        on_change: Callable[[], None],
    ) -> None:
        self.node_name = node_name
        self.host = host
        self.uuids = uuids
        self.clock = clock
        self._fetch = fetch
        self._on_change = on_change
        self._collected: dict[str, DiskInfo] | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one pass at a time, like the single poll goroutine

    @property
    def collected(self) -> dict[str, DiskInfo] | None:
        """Last snapshot (None before the first poll, like an empty map in Longhorn)."""
        return None if self._collected is None else dict(self._collected)

    async def run_once(self) -> bool:
        """One poll; returns True (and calls on_change) when the snapshot changed."""
        async with self._lock:
            node, replicas = await self._fetch()
            data = await asyncio.to_thread(collect_disk_data, node, self.host, self.uuids, replicas)
            if data == self._collected:
                return False
            self._collected = data
        self._on_change()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"disk-monitor-{self.node_name}")

    async def _loop(self) -> None:
        while True:
            await self.clock.sleep(MONITOR_SYNC_PERIOD)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed poll is logged and retried, like Start's poll loop
                log.exception("disk monitor poll failed on node %s", self.node_name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)
            self._task = None
