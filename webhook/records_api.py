"""Durable writes of the admission path: PrefixClaims, DiskRewrite records, Events (and the one
read they are checked against first: the stored Longhorn Node).

Every call goes to the API server (never a cache): a claim's create is the linearizable step
that makes prefix allocation safe across replicas, and a record must exist before any UUID
changes (docs/design.md, invariants 2 and 5).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from kubernetes_asyncio import client

from bimguard import records
from bimguard.kube import EVENTS, AlreadyExists, Conflict, Kube, NotFound, Resource

CLAIMS = Resource(records.GROUP, records.VERSION, records.CLAIMS)
REWRITES = Resource(records.GROUP, records.VERSION, records.REWRITES)
NODES = Resource("longhorn.io", "v1beta2", "nodes")

__all__ = ["RecordsApi", "AlreadyExists", "Conflict"]


class RecordsApi:
    def __init__(self, api_client: client.ApiClient, namespace: str, longhorn_namespace: str,
                 component: str = "bimguard-webhook") -> None:
        self.kube = Kube(api_client)
        self.namespace = namespace
        self.longhorn_namespace = longhorn_namespace
        self.component = component

    # -- claims -----------------------------------------------------------------------------
    async def create_claim(self, prefix: str, node: str, disk: str, uuid: str, record: str = "") -> None:
        """Raises AlreadyExists when another disk holds the prefix."""
        await self.kube.create(CLAIMS, self.namespace, records.claim_manifest(
            prefix=prefix, namespace=self.namespace, node=node, disk=disk, uuid=uuid, record=record))

    async def get_claim(self, prefix: str) -> dict[str, Any] | None:
        return await self.kube.get_or_none(CLAIMS, self.namespace, prefix)

    async def take_over_claim(self, claim: dict[str, Any], node: str, disk: str, uuid: str) -> None:
        """Replace a stale claim, guarded by its resourceVersion (Conflict if someone moved first)."""
        body = records.claim_manifest(prefix=claim["metadata"]["name"], namespace=self.namespace, node=node,
                                      disk=disk, uuid=uuid)
        body["metadata"]["resourceVersion"] = claim["metadata"]["resourceVersion"]
        try:
            await self.kube.replace(CLAIMS, self.namespace, body)
        except NotFound:
            raise Conflict(404, "NotFound", "claim released meanwhile") from None

    async def delete_claim_if(self, prefix: str, uuid: str) -> None:
        """Release a claim we made but no longer need, only while it is still ours."""
        claim = await self.get_claim(prefix)
        if claim is None or records.claim_owner(claim)[2] != uuid.lower():  # claim_owner lower-cases
            return
        try:
            await self.kube.delete(CLAIMS, self.namespace, prefix, resource_version=claim["metadata"]["resourceVersion"])
        except Conflict:
            pass  # changed meanwhile: no longer ours to delete

    # -- records ----------------------------------------------------------------------------
    async def get_record(self, name: str) -> dict[str, Any] | None:
        return await self.kube.get_or_none(REWRITES, self.namespace, name)

    async def create_record(self, manifest: dict[str, Any], phase: str | None = None, message: str = "") -> None:
        """Raises AlreadyExists for a record an earlier call of the same review created."""
        created = await self.kube.create(REWRITES, self.namespace, manifest)
        if phase:
            now = self.kube.clock.rfc3339()  # the API server's time, like the record's creationTimestamp
            created["status"] = {"phase": phase, "attempts": 0, "message": message, "startedAt": now,
                                 "updatedAt": now}
            await self.kube.replace_status(REWRITES, self.namespace, created)

    # -- the Longhorn Node a review is about --------------------------------------------------
    async def get_node(self, name: str) -> dict[str, Any] | None:
        """The stored Longhorn Node (a quorum read, never a cache): what a review is checked against."""
        return await self.kube.get_or_none(NODES, self.longhorn_namespace, name)

    # -- events -----------------------------------------------------------------------------
    async def node_event(self, node: str, node_uid: str, *, warning: bool, reason: str, message: str) -> None:
        """An Event on the Longhorn Node, where operators already look for disk trouble."""
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        ref = {"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "name": node, "namespace": self.longhorn_namespace}
        if node_uid:
            ref["uid"] = node_uid
        await self.kube.create(EVENTS, self.longhorn_namespace, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{node}.", "namespace": self.longhorn_namespace},
            "involvedObject": ref, "reason": reason, "message": message[:1024],
            "type": "Warning" if warning else "Normal", "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": self.component}, "reportingComponent": self.component,
            "reportingInstance": self.component,
        })
