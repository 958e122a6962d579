"""The admission decision for a Longhorn Node status write. Pure: no I/O.

longhorn-manager records a new disk's UUID in a `nodes/status` write in which the disk's entry
usually does not exist in the old object yet (BRIEF §0.5), or exists with an empty diskUUID (the
disk was NotReady first). Those are the only disks bimguard ever considers ("first-recorded");
every other status write is allowed untouched.

For a first-recorded v1 disk the caller claims its prefix (I/O) and passes the outcome here; the
verdict says whether the disk keeps its UUID, gets a new one, or is left alone for the repair
Job because changing its UUID could orphan data (DESIGN invariants 3 and 5).
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
    uuid: str
    disk_name: str  # the cfg's diskName, echoed in status (BRIEF §1.1)
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
        found.append(NewDisk(node, disk, entry.uuid.lower(), entry.disk_name, entry.disk_path,
                             entry.scheduled_replicas))
    return found


@dataclass(frozen=True, slots=True)
class RecordedDisk:
    node: str
    disk: str
    uuid: str
    ready: bool


class IndexView(Protocol):
    """What the decision reads of the cluster (kept by webhook.index from list+watch)."""

    def holders(self, prefix: str) -> frozenset[str]: ...  # every referenced UUID with this prefix
    def dependents(self, node: str, uuid: str) -> Dependents: ...
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
    others = sorted(index.holders(disk.prefix) - {disk.uuid})
    elsewhere = [d for d in index.disks_with_uuid(disk.uuid) if (d.node, d.disk) != (disk.node, disk.disk)]
    if claim is None and not others and not elsewhere:
        return Decision("keep", f"prefix {disk.prefix} is unique")
    if claim is not None:
        rival = f"{claim.node}/{claim.disk} ({claim.uuid})"
    elif elsewhere:
        rival = ", ".join(f"{d.node}/{d.disk}" for d in elsewhere) + f" (same UUID {disk.uuid})"
    else:
        rival = ", ".join(others)
    if elsewhere:
        # A clone: the whole UUID is already recorded on another disk, so the data that refers to
        # it belongs there (BRIEF §0.7) -- unless that disk is NotReady, which may be a disk in
        # the middle of moving to this node.
        if all(d.ready for d in elsewhere):
            return Decision("rewrite", f"cloned disk: same UUID as {rival}", tuple(elsewhere))
        return Decision("block", f"same UUID as {rival}, which is not Ready (a disk being moved?)")
    held = index.dependents(disk.node, disk.uuid)
    if disk.scheduled_replicas and not held.scheduled_replicas:
        held = Dependents(held.replicas, held.backing_image_copies, held.bims, disk.scheduled_replicas)
    if held.holds_data:
        return Decision("block", f"prefix {disk.prefix} is held by {rival}, but this disk holds {held.describe()}")
    return Decision("rewrite", f"prefix {disk.prefix} is held by {rival}")


def json_pointer(*parts: str) -> str:
    """RFC 6901: disk names may contain '/' and '~'."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def rewrite_patch(disk: str, new_uuid: str, conditions: Iterable[dict[str, Any]], message: str,
                  now: str) -> list[dict[str, Any]]:
    """JSON Patch: the new UUID, and Ready/Schedulable False so nothing schedules onto the disk
    before its cfg agrees (BRIEF §12). Longhorn replaces these conditions with its own
    DiskFilesystemChanged / DiskNotReady on its next sync (BRIEF §1.6): state lives in records."""
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
