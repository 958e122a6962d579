"""The webhook's view of the cluster: every referenced disk UUID, kept by list + watch.

Occupied prefixes are every disk's UUID (v1 and v2), every UUID still referenced by Longhorn
objects (Replica spec.diskID / label, BackingImage map keys, BIM spec.diskUUID / label and the
disk part of its name, BackingImageDataSource spec.diskUUID, Orphan parameters.DiskUUID: a disk
that is briefly absent comes back with its old UUID and its data, and Longhorn re-links Replicas
and BIMs to it by that UUID, controller/node_controller.go:831-864 @v1.7.2), and bimguard's own
PrefixClaims. Counts are kept per UUID (`PrefixIndex`); each object's last contribution is kept
so that a MODIFIED or DELETED event can be undone exactly.

Each resource is listed page by page, then watched from the list's resourceVersion with
bookmarks; a `410 Gone` or a dropped stream re-lists that resource and replaces its
contributions.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from bimguard import model, records
from bimguard import objects as wire
from bimguard.bim import SETTING_VERSION, parse_version, prefix_naming
from bimguard.decision import RecordedDisk
from bimguard.dependents import Dependents
from bimguard.inventory import Inventory
from bimguard.kube import Kube, KubeError
from bimguard.kube import Resource as KubeResource
from bimguard.model import SPEC_ONLY, DiskType, prefix_of
from bimguard.prefixes import PrefixIndex

log = logging.getLogger("bimguard.webhook.index")

_BIM_NAME_RE = re.compile(r"^backing-image-manager-[0-9a-f]{4}-(?P<prefix>[0-9a-f]{4})$")
LONGHORN = ("longhorn.io", "v1beta2")


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    plural: str
    namespace_attr: str  # "longhorn" or "own": which namespace it lives in


RESOURCES = (
    Resource(*LONGHORN, "nodes", "longhorn"),
    Resource(*LONGHORN, "replicas", "longhorn"),
    Resource(*LONGHORN, "backingimages", "longhorn"),
    Resource(*LONGHORN, "backingimagemanagers", "longhorn"),
    Resource(*LONGHORN, "backingimagedatasources", "longhorn"),
    Resource(*LONGHORN, "orphans", "longhorn"),
    Resource(*LONGHORN, "settings", "longhorn"),
    Resource(records.GROUP, records.VERSION, records.CLAIMS, "own"),
)


@dataclass(frozen=True, slots=True)
class _Contribution:
    """What one object adds to the index; removed as a whole when the object changes."""

    uuids: tuple[str, ...] = ()
    disks: tuple[RecordedDisk, ...] = ()
    replicas: tuple[tuple[str, str], ...] = ()  # (node, uuid)
    bims: tuple[tuple[str, str], ...] = ()  # (node, uuid)
    copies: tuple[tuple[str, str], ...] = ()  # (uuid, state)
    claim: tuple[str, str, str, str] | None = None  # prefix, node, disk, uuid
    version: str | None = None
    # What a scan would read of the object (bimguard.model records, parsed by the scan's own
    # parsers): disks of a Node, a Replica, BackingImage or BIM, a Setting's (name, value).
    # webhook/detection.py runs the scan's analysis over them.
    scan: tuple[Any, ...] = ()
    uid: str = ""  # a Node's metadata.uid, for Events about it


def _lower(value: Any) -> str:
    return str(value or "").lower()


def _ready(conditions: Any) -> bool:
    """A Ready condition with status True in a Longhorn v1beta2 condition list."""
    return isinstance(conditions, list) and any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def contribution(plural: str, obj: dict[str, Any]) -> _Contribution:
    """Pure: the UUID references of one object."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if plural == "nodes":
        node = meta.get("name", "")
        disks, uuids = [], []
        try:
            scan_disks = tuple(model.parse_node(msgspec.convert(obj, wire.Node), "watch")[0])
        except msgspec.ValidationError:  # the admission half below still reads what it can
            scan_disks = ()
        spec_disks = spec.get("disks") or {}
        # The Node's own Ready: a down node's disk entries keep whatever its manager last wrote
        # (only the owner updates them, controller/node_controller.go:433 @v1.7.2).
        node_ready = _ready(status.get("conditions"))
        for name, st in (status.get("diskStatus") or {}).items():
            u = _lower((st or {}).get("diskUUID"))
            if not u:
                continue
            uuids.append(u)
            dtype = st.get("diskType") or (spec_disks.get(name) or {}).get("diskType")
            path = str(st.get("diskPath") or (spec_disks.get(name) or {}).get("path") or "")
            disks.append(RecordedDisk(node, name, u, _ready(st.get("conditions")) and DiskType.parse(dtype) is not None,
                                      path, node_ready))
        return _Contribution(uuids=tuple(uuids), disks=tuple(disks), scan=scan_disks, uid=str(meta.get("uid") or ""))
    # Replicas, BackingImages and BIMs are read by the same parsers as a scan's (bimguard.model),
    # so both halves agree on which UUIDs an object refers to.
    if plural == "replicas":
        r = model.parse_replica(msgspec.convert(obj, wire.Replica))
        return _Contribution(uuids=r.disk_uuids, replicas=tuple((r.node, u) for u in r.disk_uuids), scan=(r,))
    if plural == "backingimages":
        bi = model.parse_backing_image(msgspec.convert(obj, wire.BackingImage))
        copies = bi.copies()
        return _Contribution(uuids=tuple(copies), copies=tuple(copies.items()), scan=(bi,))
    if plural == "backingimagemanagers":
        b = model.parse_bim(msgspec.convert(obj, wire.BackingImageManager))
        refs = set(b.disk_uuids)
        m = _BIM_NAME_RE.match(b.name)
        if m and m["prefix"] not in {prefix_of(u) for u in b.disk_uuids}:
            refs.add(m["prefix"])  # the name holds a prefix even if its disk's UUID is unknown
        return _Contribution(uuids=tuple(refs), bims=tuple((b.node, u) for u in b.disk_uuids), scan=(b,))
    if plural == "backingimagedatasources":
        u = _lower(spec.get("diskUUID"))
        return _Contribution(uuids=(u,) if u else ())
    if plural == "orphans":
        u = _lower((spec.get("parameters") or {}).get("DiskUUID"))
        return _Contribution(uuids=(u,) if u else ())
    if plural == "settings":
        value = obj.get("value")
        scan = ((meta.get("name", ""), value),) if isinstance(value, str) else ()  # as Inventory.add keeps them
        if meta.get("name") == SETTING_VERSION:
            return _Contribution(version=str(value or ""), scan=scan)
        return _Contribution(scan=scan)
    if plural == records.CLAIMS:
        node, disk, u = records.claim_owner(obj)
        return _Contribution(uuids=(u,) if u else (), claim=(meta.get("name", ""), node, disk, u))
    raise ValueError(plural)


@dataclass
class ClusterIndex:
    """Implements bimguard.decision.IndexView; fed by `Informers`."""

    prefixes: PrefixIndex = field(default_factory=PrefixIndex)
    _contrib: dict[tuple[str, str], _Contribution] = field(default_factory=dict)
    _disks: dict[str, dict[tuple[str, str], RecordedDisk]] = field(default_factory=lambda: defaultdict(dict))
    _replicas: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    _bims: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    _copies: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    claims: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    longhorn_version: str | None = None
    # Called with the resource's plural after every change (webhook/detection.py's trigger).
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    _node_disks: dict[str, tuple[model.Disk, ...]] = field(default_factory=dict)  # node -> its disks, for a scan

    # -- feeding ------------------------------------------------------------------------------
    def upsert(self, plural: str, obj: dict[str, Any]) -> None:
        key = self._key(plural, obj)
        self.remove_key(key)
        try:
            c = contribution(plural, obj)
        except msgspec.ValidationError as err:  # skipped, as a scan skips it; the rest stays usable
            log.warning("ignoring %s %s: %s", plural, key[1], err)
            return
        self._contrib[key] = c
        self._changed(plural)
        name = key[1]
        if plural == "nodes":
            self._node_disks[name] = c.scan
        for u in c.uuids:
            self.prefixes.add(u)
        for d in c.disks:
            self._disks[d.uuid][(d.node, d.disk)] = d
        for nu in c.replicas:
            self._replicas[nu].add(name)
        for nu in c.bims:
            self._bims[nu].add(name)
        for u, state in c.copies:
            self._copies[u][name] = state
        if c.claim:
            prefix, node, disk, u = c.claim
            self.claims[prefix] = (node, disk, u)
        if c.version is not None:
            self.longhorn_version = c.version or None

    def remove_key(self, key: tuple[str, str]) -> None:
        c = self._contrib.pop(key, None)
        if c is None:
            return
        self._changed(key[0])
        name = key[1]
        if key[0] == "nodes":
            self._node_disks.pop(name, None)
        for u in c.uuids:
            self.prefixes.remove(u)
        for d in c.disks:
            self._disks[d.uuid].pop((d.node, d.disk), None)
            if not self._disks[d.uuid]:
                del self._disks[d.uuid]
        for nu in c.replicas:
            self._discard(self._replicas, nu, name)
        for nu in c.bims:
            self._discard(self._bims, nu, name)
        for u, _ in c.copies:
            self._copies[u].pop(name, None)
            if not self._copies[u]:
                del self._copies[u]
        if c.claim and self.claims.get(c.claim[0]) == c.claim[1:]:
            del self.claims[c.claim[0]]
        if c.version is not None:
            self.longhorn_version = None

    def replace_all(self, plural: str, objs: list[dict[str, Any]]) -> None:
        """A fresh list of one resource replaces everything it contributed before."""
        keep = {self._key(plural, o) for o in objs}
        for key in [k for k in self._contrib if k[0] == plural and k not in keep]:
            self.remove_key(key)
        for o in objs:
            self.upsert(plural, o)

    def _changed(self, plural: str) -> None:
        for listener in self.listeners:
            listener(plural)

    # -- what a scan would see ----------------------------------------------------------------
    def scan_disks(self) -> list[model.Disk]:
        """Every disk of every Longhorn Node, as bimguard.model.parse_node reads them."""
        return [d for disks in self._node_disks.values() for d in disks]

    def inventory(self) -> Inventory:
        """The Inventory a scan of the same objects would build (bimguard.inventory), for
        bimguard.findings.analyze: disks, Replicas, BackingImages, BIMs and string Settings."""
        inv = Inventory()
        for (plural, _), c in self._contrib.items():
            if plural == "nodes":
                inv.disks.extend(c.scan)
                inv.nodes += 1
            elif plural == "replicas":
                inv.replicas.extend(c.scan)
            elif plural == "backingimages":
                inv.backing_images.extend(c.scan)
            elif plural == "backingimagemanagers":
                inv.bims.extend(c.scan)
            elif plural == "settings":
                inv.settings.update(c.scan)
        return inv

    def node_uid(self, node: str) -> str:
        c = self._contrib.get(("nodes", node))
        return c.uid if c else ""

    @staticmethod
    def _key(plural: str, obj: dict[str, Any]) -> tuple[str, str]:
        return (plural, (obj.get("metadata") or {}).get("name", ""))

    @staticmethod
    def _discard(table: dict[tuple[str, str], set[str]], key: tuple[str, str], name: str) -> None:
        names = table.get(key)
        if names is not None:
            names.discard(name)
            if not names:
                del table[key]

    # -- IndexView --------------------------------------------------------------------------
    def holders(self, prefix: str) -> frozenset[str]:
        """UUIDs with this prefix that a disk or a Longhorn object refers to. A UUID that only the
        prefix's PrefixClaim names is left out: the admission has just dealt with that claim (it
        is alive and answered as ClaimedByOther, or it was dead and taken over), and a dead
        claim must not keep its prefix taken through the index until the watch catches up."""
        found = self.prefixes.holders(prefix)
        claim = self.claims.get(prefix.lower())
        if claim is not None and claim[2] in found and self.prefixes.count(claim[2]) <= 1:
            return found - {claim[2]}
        return found

    def occupied(self) -> frozenset[str]:
        return self.prefixes.occupied()

    def dependents(self, node: str, uuid: str, *, cloned: bool = False) -> Dependents:
        """What refers to `uuid` on `node`, matched as bimguard.dependents.DependentsIndex.of does:
        for a cloned UUID the BackingImage maps cannot tell the disks apart, so only the copies a
        BIM on this node lists count."""
        uuid = uuid.lower()
        bims = self._bims.get((node, uuid), set())
        known = self._copies.get(uuid, {})
        if cloned:
            copies = {bi: known.get(bi, SPEC_ONLY) for b in bims for bi in self._bim_images(b)}
        else:
            copies = dict(known)
        return Dependents(
            replicas=tuple(sorted(self._replicas.get((node, uuid), ()))),
            backing_image_copies=copies,
            bims=tuple(sorted(bims)),
        )

    def _bim_images(self, name: str) -> frozenset[str]:
        c = self._contrib.get(("backingimagemanagers", name))
        bim = c.scan[0] if c and c.scan else None
        return bim.backing_images if isinstance(bim, model.Bim) else frozenset()

    def disks_with_uuid(self, uuid: str) -> list[RecordedDisk]:
        return sorted(self._disks.get(uuid.lower(), {}).values(), key=lambda d: (d.node, d.disk))

    def disk(self, node: str, disk: str, uuid: str) -> RecordedDisk | None:
        return self._disks.get(uuid.lower(), {}).get((node, disk))

    @property
    def prefix_naming(self) -> bool:
        """False on Longhorn v1.9.2+, whose BIM names use the whole UUID: nothing to prevent."""
        parsed = parse_version(self.longhorn_version)
        return True if parsed is None else prefix_naming(parsed)


class Informers:
    """List + watch of every resource in RESOURCES into one ClusterIndex."""

    def __init__(self, api_client: client.ApiClient, index: ClusterIndex, *, longhorn_namespace: str,
                 namespace: str, page_size: int = 500, watch_timeout: int = 300) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._kube = Kube(api_client)
        self.index = index
        self._ns = {"longhorn": longhorn_namespace, "own": namespace}
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self.synced: dict[str, bool] = {r.plural: False for r in RESOURCES}
        self.missing: dict[str, str] = {}  # plural -> why it cannot be listed (e.g. CRD not served)
        self.relists = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        return all(self.synced.values())

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(r), name=f"informer-{r.plural}") for r in RESOURCES]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _list(self, r: Resource) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        token, rv = "", ""
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size}
            if token:
                kwargs["_continue"] = token
            page = await self._api.list_namespaced_custom_object(r.group, r.version, self._ns[r.namespace_attr],
                                                                 r.plural, **kwargs)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            rv, token = meta.get("resourceVersion", ""), meta.get("continue") or ""
            if not token:
                return items, rv

    async def _run(self, r: Resource) -> None:
        backoff = 0.2
        while True:
            try:
                items, rv = await self._list(r)
                self.index.replace_all(r.plural, items)
                self.synced[r.plural] = True
                self.missing.pop(r.plural, None)
                backoff = 0.2
                await self._watch(r, rv)
                self.relists += 1  # the stream ended or expired: list again
            except asyncio.CancelledError:
                raise
            except (ApiException, KubeError) as err:
                if err.status == 410:  # the watch request itself was too old: list again at once
                    self.relists += 1
                    continue
                if err.status == 404:
                    self.missing[r.plural] = f"{r.plural}.{r.group}/{r.version} is not served"
                    self.synced[r.plural] = False
                else:
                    log.warning("list/watch of %s failed: %s %s", r.plural, err.status, err.reason)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as err:  # network errors: retry, the index keeps its last state
                log.warning("watching %s failed: %r", r.plural, err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _watch(self, r: Resource, rv: str) -> None:
        """Apply events from `rv` on; returns when the history is too old (410: list again).

        Raw events through bimguard.kube: kubernetes_asyncio's `watch.Watch()` builds a new
        ApiClient (and its TLS context) per stream, which blocked the event loop ~0.1 s at every
        reconnect, in the middle of admission reviews."""
        ns = self._ns[r.namespace_attr]
        res = KubeResource(r.group, r.version, r.plural)
        while True:
            async for kind, obj in self._kube.watch(res, ns, rv, timeout_seconds=self._watch_timeout):
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return
                    raise RuntimeError(f"watch of {r.plural} failed: {obj.get('message')}")
                if kind == "DELETED":
                    self.index.remove_key(ClusterIndex._key(r.plural, obj))
                elif kind in ("ADDED", "MODIFIED"):
                    self.index.upsert(r.plural, obj)
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
            # A server-side timeout ends the stream normally: watch again from the last version.
