"""One admission review of a Longhorn Node status write, from bytes in to bytes out.

The decision is pure (`bimguard.decision`); this module carries out its effects in the order the
invariants demand: claim the disk's prefix, decide, then for a rewrite create the record (and the
claim of the new prefix) before answering with the patch. Any failure, and the 2 s deadline,
mean "allow without a patch" and a counted reason (docs/design.md, invariant 1): the repair
Job is the backstop.

A review is only a request body: anyone who reaches the webhook's port can post one. So before
any durable effect (claim, record, Event) the review is checked against the stored Longhorn Node
(`verify_reviews`, on in the webhook process): its oldObject's resourceVersion must be the stored
one -- kube-apiserver hands the webhook the object as stored, so a real review matches -- and each
first-recorded disk must be in the stored spec.disks with the same path and have no UUID in the
stored status yet. And a node never holds more than MAX_CLAIMS_PER_DISK claims per disk of its
spec. A forged review is then answered (allowed) and changes nothing; its response patch, if any,
reaches no object, since only kube-apiserver applies patches (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bimguard import records
from bimguard.decision import ClaimedByOther, Decision, NewDisk, decide, first_recorded, rewrite_patch
from bimguard.kube import KubeError
from bimguard.prefixes import PrefixSpaceExhausted, allocate_uuid
from webhook import review as wire
from webhook.index import ClusterIndex
from webhook.metrics import Metrics
from webhook.records_api import AlreadyExists, Conflict, RecordsApi
from webhook.scope import LONGHORN_NODE_STATUS as SCOPE

log = logging.getLogger("bimguard.webhook.admission")

# A claim whose disk is not recorded yet may belong to a status write still in flight on another
# replica (the race of docs/design.md, invariant 5); only a claim older than this, of a disk that
# never showed up, may be taken over.
CLAIM_GRACE_SECONDS = 300.0
ALLOCATION_ATTEMPTS = 8
# Records per (node, disk, old UUID): the first name, then "-2", "-3"... for re-recorded disks.
MAX_RECORD_ATTEMPTS = 10
# Claims a node may hold per disk in its stored spec: its own prefix and, during a rewrite, the new one.
MAX_CLAIMS_PER_DISK = 2


class Skip(Exception):
    """Allow without a patch, counted under this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Rewritten:
    disk: NewDisk
    new_uuid: str
    record: str
    decision: Decision


class Admission:
    def __init__(self, index: ClusterIndex, api: RecordsApi, metrics: Metrics, *, ready: Any,
                 deadline: float = 2.0, rng: random.Random | None = None, verify_reviews: bool = False) -> None:
        """`verify_reviews`: check each review against the stored Node before any durable effect
        (the module docstring). The webhook process always does (webhook/main.py); tests that post
        hand-made reviews about Nodes that are not stored leave it off."""
        self.index = index
        self.verify_reviews = verify_reviews
        self.api = api
        self.metrics = metrics
        self._ready = ready  # () -> str | None: why the index cannot be trusted yet
        self.deadline = deadline
        self._rng = rng

    async def handle(self, body: bytes) -> bytes:
        """Raises review.BadReview for input that is not an AdmissionReview (answered 400)."""
        brief = wire.decode_brief(body).request
        assert brief is not None
        if not self._in_scope(brief):
            return wire.allowed(brief.uid)
        if wire.no_new_uuid(brief.object, brief.oldObject):
            self.metrics.reviews.outcomes["unchanged"] += 1
            return wire.allowed(brief.uid)  # the hot path: routine status writes
        req = wire.decode(body).request
        assert req is not None
        node = (req.object.metadata.name if req.object and req.object.metadata else "") or req.name or ""
        disks = first_recorded(node, wire.disk_entries(req.object), wire.disk_entries(req.oldObject))
        if not disks:  # a UUID appeared, but on a block disk or not a Longhorn UUID
            self.metrics.reviews.outcomes["unchanged"] += 1
            return wire.allowed(req.uid)
        try:
            async with asyncio.timeout(self.deadline):
                return await self._decide(req, node, disks)
        except Skip as skip:
            self.metrics.skipped.labels(skip.reason).inc()
            log.warning("allowed without a patch: %s", skip.reason, extra={"uid": req.uid, "node": node})
        except TimeoutError:
            self.metrics.skipped.labels("deadline").inc()
            log.error("allowed without a patch: the %.1f s deadline passed", self.deadline,
                      extra={"uid": req.uid, "node": node})
        except KubeError as err:  # a claim, record or read the API server failed or refused: its answer says it all
            self.metrics.skipped.labels("api_error").inc()
            log.error("allowed without a patch: the API server answered %s %s: %s", err.status, err.reason,
                      err.message[:300], extra={"uid": req.uid, "node": node})
        except Exception as err:  # never block Longhorn (docs/design.md, invariant 1)
            self.metrics.skipped.labels("internal_error").inc()
            log.exception("allowed without a patch: %r", err, extra={"uid": req.uid, "node": node})
        return wire.allowed(req.uid)

    @staticmethod
    def _in_scope(req: wire.RequestBrief) -> bool:
        r = req.resource
        return (r is not None and r.group == SCOPE.group and r.version == SCOPE.version
                and r.resource == SCOPE.resource and req.subResource == SCOPE.subresource
                and req.operation in SCOPE.operations)

    async def _decide(self, req: wire.RequestIn, node: str, disks: list[NewDisk]) -> bytes:
        why_not = self._ready()
        if why_not:
            log.warning("index not ready: %s", why_not, extra={"uid": req.uid})
            raise Skip("index_not_ready")
        if not self.index.prefix_naming:
            self.metrics.full_hash.set(1)
            raise Skip("full_hash_bim_names")
        dry_run = bool(req.dryRun)
        if self.verify_reviews and not dry_run:  # a dry run has no durable effect to guard
            disks = await self._verified(req, node, disks)
        node_uid = (req.object.metadata.uid if req.object and req.object.metadata else "") or ""
        patch: list[dict[str, Any]] = []
        warnings: list[str] = []
        audit: dict[str, str] = {}
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Disks first recorded in this same write must not collide with each other either.
        taken_here: set[str] = set()
        for disk in disks:
            claim = await self._claim(disk, dry_run)
            decision = decide(disk, claim, self.index)
            if decision.verdict == "keep" and disk.prefix in taken_here:
                decision = Decision("rewrite", f"prefix {disk.prefix} is recorded for another disk in the same write")
            if decision.verdict == "keep":
                taken_here.add(disk.prefix)
                continue
            self.metrics.collisions.inc()
            if not records.valid_disk_path(disk.disk_path):
                # The API server refuses a record with such a path (the CRD's pattern), and no
                # rewriter pod may mount it: allowed as it is, counted; the repair Job reports it.
                self.metrics.skipped.labels("invalid_disk_path").inc()
                log.warning("disk %s/%s collides but its path %r cannot be rewritten; allowed unchanged", disk.node,
                            disk.disk, disk.disk_path, extra={"uid": req.uid})
                continue
            if decision.verdict == "block":
                self.metrics.blocked.inc()
                self.metrics.reviews.outcomes["blocked"] += 1
                if not dry_run:
                    await self._block(disk, decision, node_uid)
                log.warning("disk %s/%s (%s) collides and is left for the repair Job: %s", disk.node, disk.disk,
                            disk.uuid, decision.reason, extra={"uid": req.uid})
                continue
            done = await self._rewrite(disk, decision, dry_run, taken_here)
            taken_here.add(done.new_uuid[:4])
            if not dry_run:
                await self.api.delete_claim_if(disk.prefix, disk.uuid)  # the old UUID gives the prefix up
            message = (f"bimguard changed the UUID of disk {disk.disk} from {disk.uuid} to {done.new_uuid} "
                       f"({decision.reason}); waiting for longhorn-disk.cfg to be rewritten (DiskRewrite {done.record})")
            patch += rewrite_patch(disk.disk, done.new_uuid, wire.disk_conditions(req.object, disk.disk), message, now)
            warnings.append(message)
            audit[f"bimguard.io/rewrite-{len(audit)}"] = f"{disk.disk}: {disk.uuid} -> {done.new_uuid}"
            self.metrics.reviews.outcomes["rewritten"] += 1
            log.info("rewrote disk %s/%s: %s -> %s (%s)", disk.node, disk.disk, disk.uuid, done.new_uuid,
                     decision.reason, extra={"uid": req.uid, "record": done.record, "dryRun": dry_run})
            if decision.clone_of and not dry_run:
                await self._event(disk.node, node_uid, True, "ClonedDiskUUID",
                                  f"disk {disk.disk} had the same UUID {disk.uuid} as "
                                  f"{', '.join(f'{d.node}/{d.disk}' for d in decision.clone_of)}; it now has "
                                  f"{done.new_uuid}. Its stale replica directories will show up as orphans: check "
                                  "them before deleting, and keep orphan-auto-deletion off until then")
        return wire.allowed(req.uid, patch=patch, warnings=warnings, audit=audit)

    async def _verified(self, req: wire.RequestIn, node: str, disks: list[NewDisk]) -> list[NewDisk]:
        """The disks of a review that matches the stored Node (module docstring); Skip otherwise."""
        stored = await self.api.get_node(node)
        old_meta = req.oldObject.metadata if req.oldObject and req.oldObject.metadata else None
        old_rv = (old_meta.resourceVersion if old_meta else "") or ""
        meta = (stored or {}).get("metadata") or {}
        if stored is None or not old_rv or str(meta.get("resourceVersion") or "") != old_rv or (
                old_meta is not None and old_meta.uid and old_meta.uid != meta.get("uid")):
            raise Skip("unverified_review")  # logged and counted by handle()
        spec_disks = ((stored.get("spec") or {}).get("disks") or {})
        status = ((stored.get("status") or {}).get("diskStatus") or {})
        kept = [d for d in disks if isinstance(spec_disks.get(d.disk), dict)
                and str(spec_disks[d.disk].get("path") or "") == d.disk_path
                and not ((status.get(d.disk) or {}).get("diskUUID"))]
        if not kept:
            raise Skip("unverified_disk")
        if len(kept) < len(disks):
            log.warning("review of node %s first-records disks its stored spec does not have (or already recorded): "
                        "%s; those are left alone", node, ", ".join(sorted({d.disk for d in disks} - {d.disk for d in kept})),
                        extra={"uid": req.uid})
            self.metrics.skipped.labels("unverified_disk").inc()
        # Claims the node holds, as the index sees them, but for this review's own disks and UUIDs (a
        # retried review finds its claims there).
        own = {(d.disk, d.uuid.lower()) for d in kept}
        held = sum(1 for owner in self.index.claims.values() if owner[0] == node and (owner[1], owner[2]) not in own)
        if held >= MAX_CLAIMS_PER_DISK * len(spec_disks):
            raise Skip("claim_limit")
        return kept

    async def _claim(self, disk: NewDisk, dry_run: bool) -> ClaimedByOther | None:
        """Claim the disk's prefix; who else holds it, if anyone still does."""
        mine = (disk.node, disk.disk, disk.uuid.lower())  # claim_owner lower-cases the UUID
        if dry_run:
            owner = self.index.claims.get(disk.prefix)
            if owner and owner != mine:
                return ClaimedByOther(*owner)
            return None
        for _ in range(3):
            try:
                await self.api.create_claim(disk.prefix, disk.node, disk.disk, disk.uuid)
                return None
            except AlreadyExists:
                pass
            claim = await self.api.get_claim(disk.prefix)
            if claim is None:
                continue  # released in between: try again
            owner = records.claim_owner(claim)
            if owner == mine:
                return None  # our own claim from an earlier call of the same review
            if await self._alive(claim, owner):
                return ClaimedByOther(*owner)
            try:
                await self.api.take_over_claim(claim, disk.node, disk.disk, disk.uuid)
                return None
            except Conflict:
                continue
        raise Skip("claim_contention")

    async def _alive(self, claim: dict[str, Any], owner: tuple[str, str, str]) -> bool:
        """Whether another disk still holds this claim: its disk is recorded, or its record exists,
        or it is too young to tell (the write that records its disk, or the record, may be on its
        way). Ages are on the API server's clock (bimguard.kube.ServerClock): the claim's
        creationTimestamp is the server's, and this pod's clock may be minutes off it."""
        if self.index.disk(*owner) is not None:
            return True
        age = self.api.kube.clock.age((claim.get("metadata") or {}).get("creationTimestamp"))
        if age is None:
            return True
        record = str((claim.get("spec") or {}).get("record") or "")
        if record:
            # The claim of a rewrite's new UUID, made just before its record (`_rewrite`). A
            # process that died in between leaves a claim naming a record that never came.
            if age < records.CLAIM_RECORD_GRACE_SECONDS:
                return True
            return await self.api.get_record(record) is not None
        return age < CLAIM_GRACE_SECONDS

    async def _attempt(self, disk: NewDisk) -> tuple[str, dict[str, Any] | None, bool]:
        """The record this review works on: the first of the disk's attempts that is not final
        (so a retried review lands on it and gets the same UUID), else the next free name. A disk
        re-recorded with the same old UUID after a final outcome (a rolled-back rewrite, a re-added
        disk) is a new attempt: reusing a finished record's UUID would leave status and cfg
        disagreeing for good. Also says whether one of the attempts is Blocked."""
        base = records.record_name(disk.node, disk.disk, disk.uuid)
        blocked = False
        for n in range(1, MAX_RECORD_ATTEMPTS + 1):
            name = base if n == 1 else f"{base}-{n}"
            rec = await self.api.get_record(name)
            if rec is None:
                return name, None, blocked
            phase = (rec.get("status") or {}).get("phase") or "Pending"
            blocked = blocked or phase == "Blocked"
            if phase not in records.FINAL_PHASES:
                return name, rec, blocked
        raise Skip("too_many_attempts")

    async def _rewrite(self, disk: NewDisk, decision: Decision, dry_run: bool, taken_here: set[str]) -> Rewritten:
        if dry_run:
            name, existing = records.record_name(disk.node, disk.disk, disk.uuid), None
        else:
            name, existing, _ = await self._attempt(disk)
        if existing and (existing.get("spec") or {}).get("newUUID"):
            return Rewritten(disk, existing["spec"]["newUUID"], name, decision)  # a retried review
        occupied = set(self.index.occupied()) | set(self.index.claims) | taken_here
        for _ in range(ALLOCATION_ATTEMPTS):
            try:
                new_uuid = allocate_uuid(occupied, self._rng)
            except PrefixSpaceExhausted:
                raise Skip("prefix_space_exhausted") from None
            if dry_run:
                return Rewritten(disk, new_uuid, name, decision)
            try:
                await self.api.create_claim(new_uuid[:4], disk.node, disk.disk, new_uuid, record=name)
                break
            except AlreadyExists:
                occupied.add(new_uuid[:4])  # another replica got there first
        else:
            raise Skip("claim_contention")
        manifest = records.rewrite_manifest(name=name, namespace=self.api.namespace, node=disk.node, disk=disk.disk,
                                            disk_name=disk.disk_name, disk_path=disk.disk_path, old_uuid=disk.uuid,
                                            new_uuid=new_uuid, reason=decision.reason, origin="webhook")
        try:
            await self.api.create_record(manifest)
        except AlreadyExists:  # another replica answered the same review first
            existing = await self.api.get_record(name)
            await self.api.delete_claim_if(new_uuid[:4], new_uuid)
            phase = ((existing or {}).get("status") or {}).get("phase") or "Pending"
            if not existing or not existing["spec"].get("newUUID") or phase in records.FINAL_PHASES:
                raise Skip("record_conflict") from None
            return Rewritten(disk, existing["spec"]["newUUID"], name, decision)
        return Rewritten(disk, new_uuid, name, decision)

    async def _block(self, disk: NewDisk, decision: Decision, node_uid: str) -> None:
        name, existing, blocked = await self._attempt(disk)
        if blocked or existing is not None:
            return  # already recorded (and its Event emitted) by an earlier call
        manifest = records.rewrite_manifest(name=name, namespace=self.api.namespace, node=disk.node, disk=disk.disk,
                                            disk_name=disk.disk_name, disk_path=disk.disk_path, old_uuid=disk.uuid,
                                            new_uuid="", reason=decision.reason, origin="webhook")
        try:
            await self.api.create_record(manifest, phase="Blocked", message=decision.reason)
        except AlreadyExists:
            return  # already recorded (and its Event emitted) by an earlier call
        await self._event(disk.node, node_uid, True, "DiskUUIDCollision",
                          f"disk {disk.disk} ({disk.uuid}) shares its BIM name prefix with another disk, and bimguard "
                          f"did not change its UUID: {decision.reason}. Run the repair Job (DiskRewrite {name})")

    async def _event(self, node: str, node_uid: str, warning: bool, reason: str, message: str) -> None:
        try:
            await self.api.node_event(node, node_uid, warning=warning, reason=reason, message=message)
        except Exception as err:  # an Event is best effort; the record is the durable trail
            log.warning("could not emit Event %s on node %s: %r", reason, node, err)
