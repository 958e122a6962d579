"""bimguard's own objects: DiskRewrite records and PrefixClaims (CRDs in charts/bimguard/crds/).

Pure: names, phases and manifests. A record's name is derived from (node, disk, old UUID), so
every retry of the same admission review (the API server calling twice, longhorn-manager's
retry after a 409) lands on the same record and reuses its new UUID (docs/design.md, invariant 5).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any, Literal

GROUP = "bimguard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
REWRITES = "diskrewrites"
CLAIMS = "prefixclaims"

Phase = Literal["Pending", "Preparing", "Draining", "Rewriting", "Restoring", "Done", "Abandoned", "RolledBack",
                "Blocked"]
# Phases after which status and cfg agree and nothing more happens (docs/design.md, invariant 2).
FINAL_PHASES: frozenset[str] = frozenset({"Done", "Abandoned", "RolledBack", "Blocked"})
Origin = Literal["webhook", "job"]
# A claim that names a record (the new prefix of a rewrite) is created moments before that record,
# in the same admission review or repair step. Older than this with no such record, it was left
# by a process that died in between and holds nothing (webhook/admission.py, webhook/controller.py).
CLAIM_RECORD_GRACE_SECONDS = 30.0


def record_name(node: str, disk: str, old_uuid: str) -> str:
    digest = hashlib.sha256(f"{node}/{disk}/{old_uuid.lower()}".encode()).hexdigest()
    return f"r-{digest[:16]}"


# A label value is at most 63 characters (k8s.io/apimachinery validation.IsValidLabelValue); a
# node's name may be a DNS subdomain of up to 253 (`ip-10-0-3-17.eu-west-1.compute.internal` is 40).
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def labels(node: str) -> dict[str, str]:
    """The labels of bimguard's objects: `bimguard.io/node` only where the node's name is a valid
    label value (`spec.node` always holds it), so that a long node name never makes the API
    server refuse a claim or record (422) and the webhook skip its prevention."""
    out = {"app.kubernetes.io/managed-by": "bimguard"}
    if len(node) <= 63 and _LABEL_VALUE.match(node):
        out["bimguard.io/node"] = node
    return out


def valid_disk_path(path: str) -> bool:
    """Whether a record may hold this disk path: the CRD's `spec.diskPath` (absolute, at most 4096
    characters, no empty, "." or ".." segment, one trailing slash allowed; charts/bimguard/crds/
    diskrewrites.bimguard.io.yaml) checked segment by segment, without the pattern's backtracking."""
    if not path.startswith("/") or len(path) > 4096:
        return False
    segments = path[1:].split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    return all(s not in ("", ".", "..") for s in segments)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rewrite_manifest(*, name: str, namespace: str, node: str, disk: str, disk_name: str, disk_path: str,
                     old_uuid: str, new_uuid: str, reason: str, origin: Origin,
                     original: dict[str, bool] | None = None) -> dict[str, Any]:
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "DiskRewrite",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": labels(node)},
        "spec": {"node": node, "disk": disk, "diskName": disk_name, "diskPath": disk_path, "oldUUID": old_uuid,
                 "newUUID": new_uuid, "reason": reason, "origin": origin},
    }
    if original is not None:
        manifest["spec"]["original"] = dict(original)
    return manifest


def claim_manifest(*, prefix: str, namespace: str, node: str, disk: str, uuid: str, record: str = "") -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "PrefixClaim",
        "metadata": {"name": prefix, "namespace": namespace,
                     "labels": labels(node)},
        # Lower case: the CRD's pattern for spec.uuid; a disk's UUID may be recorded in upper case
        # (kept so in status and records), and claims compare case-insensitively (claim_owner).
        "spec": {"node": node, "disk": disk, "uuid": uuid.lower(), "record": record},
    }


def claim_owner(claim: dict[str, Any]) -> tuple[str, str, str]:
    spec = claim.get("spec") or {}
    return spec.get("node", ""), spec.get("disk", ""), str(spec.get("uuid", "")).lower()
