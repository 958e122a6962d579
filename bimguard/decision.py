"""The admission decision for a Longhorn Node status write. Pure: no I/O.

longhorn-manager records a new disk's UUID in a `nodes/status` write in which the disk's entry
usually does not exist in the old object yet (until the disk monitor has read the disk, the sync
returns before it touches diskStatus; then one sync creates the entry and records the UUID:
controller/node_controller.go:450-455,657,745 @v1.7.2), or exists with an empty diskUUID (the
disk was NotReady first). Those are the only disks bimguard ever considers ("first-recorded");
every other status write is allowed untouched.

For a first-recorded v1 disk the caller claims its prefix (I/O) and passes the outcome here; the
verdict says whether the disk keeps its UUID, gets a new one, or is left alone for the repair
Job because changing its UUID could orphan data (docs/design.md, invariants 3 and 5).

UUIDs are kept exactly as Longhorn recorded them: that string is what the cfg holds, what a
rollback must put back and what Longhorn compares with the cfg, character for character
(controller/node_controller.go:707 @v1.7.2). Only prefixes, and the index's keys, are compared
case-insensitively. Longhorn names a BIM after `diskUUID[:4]` exactly as written
(types/types.go:385-387, controller/backing_image_controller.go:922 @v1.7.2; the same in v1.8.1,
v1.9.0 and v1.9.1): an upper-case UUID (a cfg edited by hand; Longhorn generates lower-case ones,
util/util.go:168) gives a name like `backing-image-manager-5ae6-A3AF`, which the API server
refuses (object names must be lower-case RFC 1123 subdomains), so such a disk gets no BIM at all.
Treating `A3AF` and `a3af` as one prefix is the conservative reading: such a disk is rewritten
like any colliding one, and its new UUID is lower-case, so it can get its BIM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Protocol, Sequence

from bimguard.dependents import Dependents
from bimguard.model import UUID_RE, DiskType, prefix_of

REASON = "BimguardUUIDRewrite"


@dataclass(frozen=True, slots=True)
class NewDisk:
    """A v1 disk whose UUID this status write records for the first time."""

    node: str
    disk: str
    uuid: str  # exactly as recorded (any case): written back and compared with the cfg as it is
    disk_name: str  # the cfg's diskName, echoed in status
    disk_path: str
    scheduled_replicas: tuple[str, ...]

    @property
    def prefix(self) -> str:
        return prefix_of(self.uuid)


@dataclass(frozen=True, slots=True)
class DiskEntry:
    """What the trigger needs of one status.diskStatus entry."""

    uuid: str
    disk_type: str
    disk_name: str
    disk_path: str
    scheduled_replicas: tuple[str, ...] = ()


def first_recorded(node: str, new: dict[str, DiskEntry], old: dict[str, DiskEntry] | None) -> list[NewDisk]:
    """v1 disks with a non-empty UUID now whose old entry is missing or has an empty UUID."""
    found = []
    for disk, entry in sorted(new.items()):
        if not entry.uuid or DiskType.parse(entry.disk_type) is not DiskType.V1:
            continue
        before = (old or {}).get(disk)
        if before is not None and before.uuid:
            continue
        if not UUID_RE.match(entry.uuid):
            continue  # not a Longhorn UUID: nothing sensible to do at admission; the scan reports it
        found.append(NewDisk(node, disk, entry.uuid, entry.disk_name, entry.disk_path, entry.scheduled_replicas))
    return found


@dataclass(frozen=True, slots=True)
class RecordedDisk:
    """A disk as the stored Node status records it (UUID lower-cased, as the index keys it)."""

    node: str
    disk: str
    uuid: str
    ready: bool  # the disk's own Ready condition
    path: str = ""
    # The Node's own Ready condition. A disk's status is updated only by its node's own
    # longhorn-manager (controller/node_controller.go:433 @v1.7.2): on a node that is down it stays
    # as it was, Ready=True included, and says nothing about the disk now.
    node_ready: bool = True


class IndexView(Protocol):
    """What the decision reads of the cluster (kept by webhook.index from list+watch)."""

    # every UUID with this prefix that a disk or a Longhorn object refers to (a UUID that only a
    # PrefixClaim names is not one: the claim of this prefix is the caller's ClaimedByOther)
    def holders(self, prefix: str) -> frozenset[str]: ...
    # what refers to `uuid` on `node`; with `cloned` (the whole UUID is recorded on another disk
    # too) backing-image copies count only where a BIM on this node lists them
    def dependents(self, node: str, uuid: str, *, cloned: bool = False) -> Dependents: ...
    def disks_with_uuid(self, uuid: str) -> Sequence[RecordedDisk]: ...
    def occupied(self) -> frozenset[str]: ...  # every prefix in use or claimed


@dataclass(frozen=True, slots=True)
class ClaimedByOther:
    """The PrefixClaim of this prefix belongs to another disk that still exists."""

    node: str
    disk: str
    uuid: str


Verdict = Literal["keep", "rewrite", "block"]


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    clone_of: tuple[RecordedDisk, ...] = ()  # a cloned disk: warn that its stale replica dirs become orphans


def decide(disk: NewDisk, claim: ClaimedByOther | None, index: IndexView) -> Decision:
    """Keep, rewrite or block one first-recorded disk, given who holds its prefix."""
    uuid = disk.uuid.lower()
    same = [d for d in index.disks_with_uuid(uuid) if (d.node, d.disk) != (disk.node, disk.disk)]
    # The same node and path is the same directory and the same cfg under another entry name: a
    # renamed entry (Longhorn deletes the old entry in the very status write that records the new
    # one, controller/node_controller.go:1663 @v1.7.2, so the old one is still recorded here).
    # The same disk, not a clone.
    renamed = {(d.node, d.disk) for d in same if d.node == disk.node and d.path == disk.disk_path}
    elsewhere = [d for d in same if (d.node, d.disk) not in renamed]
    if claim is not None and claim.uuid.lower() == uuid and (
            (claim.node, claim.disk) in renamed or any((d.node, d.disk) == (claim.node, claim.disk) for d in elsewhere)):
        claim = None  # the claim of this very UUID by a disk judged here, not a rival
    others = sorted(index.holders(disk.prefix) - {uuid})
    if claim is None and not others and not elsewhere:
        return Decision("keep", f"prefix {disk.prefix} is unique")
    held = index.dependents(disk.node, uuid, cloned=bool(elsewhere))
    if disk.scheduled_replicas and not held.scheduled_replicas:
        held = Dependents(held.replicas, held.backing_image_copies, held.bims, disk.scheduled_replicas)
    if elsewhere:
        # The whole UUID is recorded on another disk. A clone (a copied disk image) gets a new
        # UUID, since the data that refers to the UUID belongs to the original -- but only when
        # the original is known to be alive and this disk holds none of that data: otherwise it
        # may be the very disk, moved (Longhorn re-links Replicas and BIMs to whichever disk
        # reports their UUID, controller/node_controller.go:807-870 @v1.7.2).
        names = ", ".join(f"{d.node}/{d.disk}" for d in elsewhere)
        down = sorted({d.node for d in elsewhere if not d.node_ready})
        if down:
            return Decision("block", f"same UUID as {names}, but node {', '.join(down)} is not Ready, so what its "
                                     "status says of that disk is stale: a disk moved off a down node cannot be told "
                                     "from a copy")
        if not all(d.ready for d in elsewhere):
            return Decision("block", f"same UUID as {names}, which is not Ready (a disk being moved?)")
        if held.holds_data:
            return Decision("block", f"same UUID as {names}, but this disk holds {held.describe()}")
        return Decision("rewrite", f"cloned disk: same UUID as {names}", tuple(elsewhere))
    rival = f"{claim.node}/{claim.disk} ({claim.uuid})" if claim is not None else ", ".join(others)
    if held.holds_data:
        return Decision("block", f"prefix {disk.prefix} is held by {rival}, but this disk holds {held.describe()}")
    return Decision("rewrite", f"prefix {disk.prefix} is held by {rival}")


def json_pointer(*parts: str) -> str:
    """RFC 6901: disk names may contain '/' and '~'."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def cfg_differs(entry: dict[str, Any]) -> bool:
    """Longhorn's own word that a disk's cfg holds another UUID than the one its status records:
    NotReady, DiskFilesystemChanged, "record diskUUID doesn't match the one on the disk"
    (controller/node_controller.go:703-714 @v1.7.2)."""
    ready = next((c for c in entry.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"), {})
    return (ready.get("status") == "False" and ready.get("reason") == "DiskFilesystemChanged"
            and "doesn't match the one on the disk" in str(ready.get("message") or ""))


def rewrite_patch(disk: str, new_uuid: str, conditions: Iterable[dict[str, Any]], message: str,
                  now: str) -> list[dict[str, Any]]:
    """JSON Patch: the new UUID, and Ready/Schedulable False so nothing schedules onto the disk
    before its cfg agrees (the Prevention flow in docs/design.md). Longhorn replaces these
    conditions with its own DiskFilesystemChanged / DiskNotReady on its next sync
    (controller/node_controller.go:708-718,826 @v1.7.2): state lives in records."""
    conds = [dict(c) for c in conditions if isinstance(c, dict)]
    for kind in ("Ready", "Schedulable"):
        current = next((c for c in conds if c.get("type") == kind), None)
        if current is None:
            current = {"type": kind, "lastProbeTime": ""}
            conds.append(current)
        if current.get("status") != "False":
            current["lastTransitionTime"] = now
        current.update(status="False", reason=REASON, message=message)
    base = json_pointer("status", "diskStatus", disk)
    # `add` sets a member whether or not it exists (RFC 6902 §4.1); `replace` of an entry without
    # `conditions` fails to apply, and kube-apiserver answers a patch that does not apply with an
    # error whatever the failurePolicy (mutating/dispatcher.go), failing Longhorn's write.
    return [
        {"op": "replace", "path": base + "/diskUUID", "value": new_uuid},
        {"op": "add", "path": base + "/conditions", "value": conds},
    ]
