"""Longhorn's validating admission rules for Nodes and Replicas, as pure functions.

longhorn-manager serves them as the webhook ``validator.longhorn.io`` (lm v1.7.2
webhook/server/server.go:122-136: ``failurePolicy: Fail``, ``matchPolicy: Exact``,
``sideEffects: None``); ``webhook.py`` beside this module serves them over HTTPS to the emulated
API server. Each rule returns an :class:`AdmitError` the way lm webhook/error/error.go builds it
(``NewInvalidError``: 422 ``Invalid`` with one ``FieldValueInvalid`` cause; ``NewForbiddenError``:
403 ``Forbidden``), or None to allow. kube-apiserver then prefixes the message with
``admission webhook "validator.longhorn.io" denied the request: `` (statuserror.go ToStatusErr,
which ``bimguard.sim.admission.rejection`` reproduces).

Registered rules (lm webhook/resources/*/validator.go ``Resource()``): ``nodes`` CREATE and
UPDATE (not ``nodes/status``, not DELETE; node/validator.go:33-45), ``replicas`` CREATE, UPDATE
and DELETE (replica/validator.go:29-42). The rules are the same at v1.8.1, v1.9.0 and v1.9.1
except where :class:`~bimguard.sim.longhorn.Release` says otherwise.

Not emulated: tag syntax (node/validator.go:120-123,170-173), the instance-manager CPU reservation
against the Kubernetes node's allocatable CPU (125-147), the v2 data engine setting (block disks
are refused as when it is disabled), the other resources' validators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from bimguard.sim.longhorn import Release

CONFIGURATION = "longhorn-webhook-validator"
WEBHOOK = "validator.longhorn.io"
SERVICE = "longhorn-admission-webhook"
PORT = 9502  # lm v1.7.2 app/daemon.go:163-205 (admission webhook port)
PATH = "/v1/webhook/validation"
FINALIZER = "longhorn.io"


@dataclass(frozen=True)
class AdmitError:
    """lm webhook/error/error.go AdmitError; ``result()`` is its AsResult()."""

    code: int
    reason: str
    message: str
    causes: tuple[dict[str, str], ...] = field(default=())

    def result(self) -> dict[str, Any]:
        status: dict[str, Any] = {"status": "Failure", "message": self.message, "reason": self.reason,
                                  "code": self.code}
        if self.causes:
            status["details"] = {"causes": [dict(c) for c in self.causes]}
        return status


def invalid(message: str) -> AdmitError:
    """lm webhook/error/error.go:55-69 NewInvalidError(msg, "")."""
    return AdmitError(422, "Invalid", message, ({"type": "FieldValueInvalid", "message": message, "field": ""},))


def forbidden(message: str) -> AdmitError:
    """lm webhook/error/error.go:89-96 NewForbiddenError."""
    return AdmitError(403, "Forbidden", message)


def _disks(node: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict((node.get("spec") or {}).get("disks") or {})


def _disk_status(node: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict((node.get("status") or {}).get("diskStatus") or {})


def _disk_rules(name: str, disk: Mapping[str, Any]) -> AdmitError | None:
    """Per-disk type/driver rules shared by CREATE and UPDATE (validator.go:64-78, 174-188)."""
    dtype = disk.get("diskType") or ""
    if dtype == "block":
        # The emulator has no v2 data engine: as with setting v2-data-engine=false (64-68).
        return invalid(f"disk {name} type {dtype} is not supported since v2 data engine is disabled")
    if disk.get("diskDriver"):
        return invalid(f"disk {name} type {dtype} is not supported to specify disk driver")
    return None


def validate_node_create(node: Mapping[str, Any]) -> AdmitError | None:
    """lm v1.7.2 webhook/resources/node/validator.go:47-82."""
    if int((node.get("spec") or {}).get("instanceManagerCPURequest") or 0) < 0:
        return invalid("instanceManagerCPURequest should be greater than or equal to 0")
    for name, disk in _disks(node).items():
        err = _disk_rules(name, disk)
        if err:
            return err
    return None


def _finalizer_removal_only(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """lm webhook/common/common.go:112-140: a Node being deleted whose only change is dropping
    the longhorn.io finalizer is let through before any other rule."""
    if not (old.get("metadata") or {}).get("deletionTimestamp"):
        return False
    before = list((old.get("metadata") or {}).get("finalizers") or [])
    after = list((new.get("metadata") or {}).get("finalizers") or [])
    return FINALIZER in before and FINALIZER not in after and len(before) - len(after) == 1


def validate_node_update(old: Mapping[str, Any], new: Mapping[str, Any], release: Release) -> AdmitError | None:
    """lm v1.7.2 webhook/resources/node/validator.go:84-211 (v1.8+: the same body 4 lines up),
    rules in Longhorn's order; the first failure wins."""
    if _finalizer_removal_only(old, new):
        return None
    name = (old.get("metadata") or {}).get("name", "")
    spec = new.get("spec") or {}
    if int(spec.get("instanceManagerCPURequest") or 0) < 0:
        return invalid("instanceManagerCPURequest should be greater than or equal to 0")
    if spec.get("evictionRequested") and spec.get("allowScheduling"):  # 109-112
        return invalid(f"need to disable scheduling on node {name} for node eviction, "
                       "or cancel eviction to enable scheduling on this node")
    old_disks, old_status = _disks(old), _disk_status(old)
    # 115-117 / 213-225: judged on the *stored* object; a status write of the owner fixes it.
    if len(old_disks) != len(old_status) or any(d not in old_status for d in old_disks):
        return forbidden(f"spec and status of disks on node {name} are being syncing and please retry later.")
    new_disks = _disks(new)
    for dname, disk in new_disks.items():  # 151-156
        if disk.get("evictionRequested") and disk.get("allowScheduling"):
            return invalid(f"need to disable scheduling on disk {dname} for disk eviction, "
                           "or cancel eviction to enable scheduling on this disk")
    for dname, disk in new_disks.items():  # 166-188
        if int(disk.get("storageReserved") or 0) < 0:
            return invalid(f"update disk on node {name} error: The storageReserved setting of disk {dname}"
                           f"({disk.get('path', '')}) is not valid, should be positive and no more than "
                           "storageMaximum and storageAvailable")
        if (disk.get("diskType") or "") == "block":
            return invalid(f"update disk on node {name} error: The disk {dname}({disk.get('path', '')}) "
                           "is a block device, but the SPDK feature is not enabled")
        if disk.get("diskDriver"):
            return invalid(f"disk {dname} type {disk.get('diskType') or ''} is not supported to specify disk driver")
    for dname, disk in old_disks.items():  # 192-199: the *old* allowScheduling decides
        if dname in new_disks:
            continue
        if disk.get("allowScheduling") or int((old_status.get(dname) or {}).get("storageScheduled") or 0) != 0:
            return invalid(release.disk_removal_message.format(name=dname, path=disk.get("path", "")))
    for dname, disk in new_disks.items():  # 202-208
        before = old_disks.get(dname)
        if before is not None and (before.get("diskType") or "") and before.get("diskType") != disk.get("diskType"):
            return invalid(f"update disk on node {name} error: The disk {dname}({disk.get('path', '')}) "
                           "type is not allow to change")
    return None


def validate_replica_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> AdmitError | None:
    """lm webhook/resources/replica/validator.go:58-75."""
    before = (old.get("spec") or {}).get("dataEngine") or ""
    after = (new.get("spec") or {}).get("dataEngine") or ""
    if before and before != after:
        return invalid(f"changing data engine for replica {(new.get('metadata') or {}).get('name', '')} is not supported")
    return None


def validate_replica_delete(replica: Mapping[str, Any], volume: Mapping[str, Any] | None,
                            volume_replicas: Sequence[Mapping[str, Any]]) -> AdmitError | None:
    """lm webhook/resources/replica/validator.go:77-128 (unchanged through v1.9.1): refused only
    when the replica is the volume's single one with ``healthyAt`` set and no deletionTimestamp
    (``failedAt`` is not looked at), and the volume exists and is not being deleted."""
    name = (replica.get("metadata") or {}).get("name", "")
    volume_name = (replica.get("spec") or {}).get("volumeName") or ""
    if not volume_name or volume is None or (volume.get("metadata") or {}).get("deletionTimestamp"):
        return None
    available = [r for r in volume_replicas
                 if (r.get("spec") or {}).get("healthyAt") and not (r.get("metadata") or {}).get("deletionTimestamp")]
    if len(available) == 1 and (available[0].get("metadata") or {}).get("name") == name:
        return invalid(f"cannot delete replica {name} because volume {volume_name} only has one available replica")
    return None


def configuration(ca_bundle: str, namespace: str) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration longhorn-manager builds at start-up
    (lm webhook/server/server.go:102-136, buildRules :244-261), reduced to the emulated resources."""
    def rule(resource: str, operations: list[str]) -> dict[str, Any]:
        return {"apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"], "operations": operations,
                "resources": [resource], "scope": "Namespaced"}

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [{
            "name": WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"caBundle": ca_bundle,
                             "service": {"name": SERVICE, "namespace": namespace, "path": PATH, "port": PORT}},
            "failurePolicy": "Fail",
            "matchPolicy": "Exact",
            "sideEffects": "None",
            "rules": [rule("nodes", ["CREATE", "UPDATE"]), rule("replicas", ["CREATE", "UPDATE", "DELETE"])],
        }],
    }
