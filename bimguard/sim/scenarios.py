"""Collisions as a cluster upgraded from Longhorn v1.7.2 holds them, planted in a SimCluster.

Each kind of group is built the way it arises on a real cluster (a disk whose generated UUID
happened to share its prefix with an existing one; a cloned VM's disk; replicas and backing-image
copies that Longhorn placed before anyone noticed), with the emulator's own helpers, so the
objects are what Longhorn writes. Used by the repair's end-to-end tests, its benchmark and the
demo. Each planted group says what a correct repair must leave.

Kinds (the disk kept is always an existing disk; victims are new disks on other nodes):
- ``empty``: the victim holds nothing.
- ``three-way``: two empty victims share the keeper's prefix.
- ``data``: the victim holds a healthy replica of an attached 2-replica volume (needs --evict).
- ``detached``: the same, the volume detached (Longhorn attaches it for the eviction).
- ``stuck-replica``: a volume with a backing image got a replica on the victim that waits for
  its copy for ever (the BIM name is taken); the volume stays degraded.
- ``stuck-image``: a backing image asks for a copy on the victim; its whole sync aborts on the
  BIM name clash, so its copy on another disk never gets a status.
- ``cannot-move``: the victim holds a replica of a volume too big for any other disk: eviction
  could never place it (left pending, never forced).
- ``clone``: the victim is a copy of the keeper's disk (the same whole UUID), empty.
- ``clone-leftovers``: a clone with an old replica directory on it (blocked).
- ``orphan``: the victim has an orphaned replica directory (an Orphan; blocked).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from typing import Any

from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn import volumes as vl
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition

KINDS = ("empty", "three-way", "data", "detached", "stuck-replica", "stuck-image", "cannot-move", "clone",
         "clone-leftovers", "orphan")
GIB = 1024 ** 3


@dataclass
class Group:
    kind: str
    prefix: str
    keeper: tuple[str, str]
    victims: list[tuple[str, str]]
    expect: str  # the record phase a correct repair with --evict leaves: Done, Blocked or Pending
    expect_without_evict: str
    volumes: list[str] = field(default_factory=list)
    backing_images: list[str] = field(default_factory=list)


class _Nodes:
    """Hands out nodes round-robin so groups do not share nodes while there are enough."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.i = 0

    def take(self, avoid: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        for _ in range(len(self.names)):
            n = self.names[self.i % len(self.names)]
            self.i += 1
            if n not in avoid:
                return n
        raise RuntimeError("not enough nodes for the scenario")


async def _healthy(c: SimCluster, volume: str, detached: bool = False) -> bool:
    assert c.kube is not None
    v = await c.kube.get("volumes", volume)
    st = v.get("status") or {}
    if detached:
        return st.get("state") == "detached"
    return st.get("robustness") == "healthy" and st.get("state") == "attached"


async def plant(c: SimCluster, kinds: list[str], *, seq: int = 0) -> list[Group]:
    """Plant one group per kind (in order); returns what was planted. The cluster must be started,
    Ready, with one disk per node at least, and have a kubelet if nothing else runs pods."""
    assert c.kube is not None
    nodes = _Nodes(list(c.node_names))
    groups: list[Group] = []
    image_done = False
    for i, kind in enumerate(kinds, start=seq):
        keeper_node = nodes.take()
        keeper = (keeper_node, c.disks_of(keeper_node)[0])
        uuid = await c.disk_uuid(*keeper)
        prefix = uuid[:4]
        victim_node = nodes.take({keeper_node})
        vdisk = f"victim-{i}"
        g = Group(kind, prefix, keeper, [(victim_node, vdisk)], "Done", "Done")
        if kind in ("clone", "clone-leftovers"):
            # A cloned VM's disk: the same directory content, cfg included.
            src = c.disk_dir(*keeper)
            dst = c.host(victim_node).dir(f"/mnt/{vdisk}")
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / disks.DISK_CONFIG_FILE, dst / disks.DISK_CONFIG_FILE)
            (dst / disks.REPLICA_DIRECTORY).mkdir(exist_ok=True)
            if kind == "clone-leftovers":
                _leftover(dst, f"pvc-cloned-{i}")
                g.expect = g.expect_without_evict = "Blocked"
            await c.add_disk(victim_node, vdisk, f"/mnt/{vdisk}", create_dir=False)
        else:
            await c.add_disk(victim_node, vdisk, force_uuid=prefix)
        if kind == "three-way":
            third = nodes.take({keeper_node, victim_node})
            await c.add_disk(third, f"victim-{i}b", force_uuid=prefix)
            g.victims.append((third, f"victim-{i}b"))
        groups.append(g)
    await c.wait_until_ready(60)
    # Keepers of groups whose victim holds data own the BIM of the prefix (a backing-image copy
    # on them), so the plan keeps them and regenerates the victim, as on a cluster where the
    # first disk had served backing images before the second one came.
    anchors = [g.keeper for g in groups if g.kind in ("data", "detached", "cannot-move")]
    if anchors:
        await c.create_backing_image(f"anchor-image-{seq}", disks_=anchors[:1])
        await _wait_copy(c, f"anchor-image-{seq}", await c.disk_uuid(*anchors[0]))
        if anchors[1:]:
            await add_copies(c, f"anchor-image-{seq}", anchors[1:])
        for a in anchors:
            await _wait_copy(c, f"anchor-image-{seq}", await c.disk_uuid(*a))
    for g in groups:
        victim = g.victims[0]
        i = int(victim[1].split("-")[1].rstrip("b"))
        if g.kind in ("data", "detached", "cannot-move"):
            other = nodes.take({victim[0], g.keeper[0]})
            size = 300 * GIB if g.kind == "cannot-move" else GIB
            name = f"pvc-{g.kind}-{i}"
            await c.create_volume(name, [victim, (other, c.disks_of(other)[0])], size=size)
            g.volumes.append(name)
            g.expect_without_evict = "Blocked"
            if g.kind == "cannot-move":
                g.expect = "Pending"
        elif g.kind == "stuck-replica":
            if not image_done:
                await c.create_backing_image("scenario-image", disks_=[g.keeper])
                image_done = True
            other = nodes.take({victim[0], g.keeper[0]})
            name = f"pvc-stuck-{i}"
            await c.create_volume(name, [(other, c.disks_of(other)[0])], backing_image="scenario-image")
            g.volumes.append(name)
            g.backing_images.append("scenario-image")
        elif g.kind == "stuck-image":
            name = f"image-{i}"
            await c.create_backing_image(name, disks_=[g.keeper])
            g.backing_images.append(name)
        elif g.kind == "orphan":
            _leftover(c.disk_dir(*victim), f"pvc-gone-{i}")
            g.expect = g.expect_without_evict = "Blocked"
    # Second phase: once volumes are healthy and first copies ready, make the stuck states.
    for g in groups:
        for v in g.volumes:
            await c.wait_for(lambda v=v: _healthy(c, v), 60, f"volume {v} healthy")
        if g.kind == "detached":
            await c.set_attachment(g.volumes[0], None)
        if g.kind == "stuck-replica":
            await add_replica(c, g.volumes[0], g.victims[0])
        if g.kind == "stuck-image":
            await _wait_copy(c, g.backing_images[0], await c.disk_uuid(*g.keeper))
            other = nodes.take({g.victims[0][0], g.keeper[0]})
            await add_copies(c, g.backing_images[0], [(other, c.disks_of(other)[0]), g.victims[0]])
    for g in groups:
        if g.kind == "detached":
            await c.wait_for(lambda g=g: _healthy(c, g.volumes[0], detached=True), 60, "volume detached")
        if g.kind == "stuck-replica":
            await c.wait_for(lambda g=g: _stuck(c, g.volumes[0], g.victims[0][0]), 60, "a replica stuck on the victim")
        if g.kind in ("orphan", "clone-leftovers"):
            await c.wait_for(lambda g=g: _orphan_on(c, g.victims[0]), 60, "an Orphan on the victim")
    return groups


def _leftover(disk_dir: Any, volume: str) -> None:
    """A replica directory Longhorn left behind (``<volume>-<8 chars>`` with a volume.meta)."""
    d = disk_dir / disks.REPLICA_DIRECTORY / f"{volume}-0a1b2c3d"
    d.mkdir(parents=True, exist_ok=True)
    (d / disks.VOLUME_META).write_text('{"Size":1073741824,"Head":"volume-head-000.img","Dirty":false}')


async def add_replica(c: SimCluster, volume: str, where: tuple[str, str]) -> str:
    """One more replica of `volume` where Longhorn's scheduler placed it, as a replacement it
    created (``numberOfReplicas`` + 1)."""
    assert c.kube is not None
    v = await c.kube.get("volumes", volume)
    [engine] = await c.kube.list("engines", f"longhornvolume={volume}")
    uuid = await c.disk_uuid(*where)
    name = f"{volume}-r-{c.uuids.random_id()}"
    r = vl.new_replica(v, engine, name, rebuilding=True)
    vl.place(r, vl.Candidate(where[0], where[1], uuid, c.host_path(*where), 0), f"{volume}-{c.uuids.random_id()}")
    await c.kube.create("replicas", r)
    for _ in range(20):
        v = await c.kube.get("volumes", volume)
        v["spec"]["numberOfReplicas"] = int(v["spec"]["numberOfReplicas"]) + 1
        try:
            await c.kube.replace("volumes", v)
            break
        except Exception:  # a conflict with the volume controller's write: read again
            await asyncio.sleep(0.01)
    return name


async def add_copies(c: SimCluster, image: str, where: list[tuple[str, str]]) -> None:
    """Ask for copies of a backing image on more disks (as an operator or replenishment does)."""
    assert c.kube is not None
    for _ in range(20):
        bi = await c.kube.get("backingimages", image)
        for w in where:
            bi["spec"]["diskFileSpecMap"][await c.disk_uuid(*w)] = {"evictionRequested": False}
        try:
            await c.kube.replace("backingimages", bi)
            return
        except Exception:
            await asyncio.sleep(0.01)


async def _wait_copy(c: SimCluster, image: str, uuid: str) -> None:
    async def ready() -> bool:
        assert c.kube is not None
        bi = await c.kube.get("backingimages", image)
        return (((bi.get("status") or {}).get("diskFileStatusMap") or {}).get(uuid) or {}).get("state") == "ready"

    await c.wait_for(ready, 60, f"{image} ready on {uuid}")


async def _stuck(c: SimCluster, volume: str, node: str) -> bool:
    assert c.kube is not None
    for r in await c.kube.list("replicas", f"longhornvolume={volume}"):
        cond = get_condition((r.get("status") or {}).get("conditions"), "WaitForBackingImage")
        if r["spec"]["nodeID"] == node and cond.get("status") == "True":
            return True
    return False


async def _orphan_on(c: SimCluster, where: tuple[str, str]) -> bool:
    assert c.kube is not None
    return any((o.get("spec") or {}).get("nodeID") == where[0] and
               ((o.get("spec") or {}).get("parameters") or {}).get("DiskName") == where[1]
               for o in await c.kube.list("orphans"))
