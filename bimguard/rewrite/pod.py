"""The on-node pods: the rewriter (one short-lived pod per DiskRewrite attempt, on the disk's node)
and the repair's read-only inspector, which share one shape. Pure.

It runs `bimguard rewrite-cfg` (the compare-and-swap of `longhorn-disk.cfg`, docs/design.md,
invariant 4) with exactly one hostPath volume: the disk directory, `type: Directory`, so a path
that is not (or no longer) a directory keeps the pod Pending instead of creating an empty
directory where the disk should be (docs/design.md, invariant 4: a missing cfg is never created).

Why it runs as root and why it needs no capability at all: Longhorn (a privileged root process)
creates the disk directory and writes the cfg as root with mode 0644 (`generateFilesystemTypeDiskConfig`,
controller/monitor/disk_utils.go:133-165 @v1.7.2). The rewrite
creates a temporary file in that directory, renames it over the cfg and fsyncs the directory:
that needs write and search permission on the directory and nothing on the old file. Root owns
the directory (mode 0755 or stricter for the owner), and the owner's permission bits apply to
uid 0 like to anyone else, so plain uid 0 is enough; CAP_DAC_OVERRIDE (bypassing permission
bits), CAP_FOWNER (chmod of files one does not own) and CAP_CHOWN are only needed for files
owned by someone else. `rewrite-cfg` keeps the old owner with `fchown` only when it differs
from its own uid and treats EPERM there as harmless. So: uid 0, every capability dropped, no
privilege escalation, read-only root filesystem. A disk directory owned by another user (a
hand-mounted filesystem) makes the rename fail with EACCES: the pod reports an error and the
controller rolls the status back, which is the safe outcome.

The pod gets `nodeName` (no scheduler: a cordoned or tainted node is still the node the disk is
on), tolerates every taint unless told which (`tolerations`: with `nodeName` the scheduler never
looks, but the kubelet still refuses a pod that does not tolerate a `NoExecute` taint of its node),
mounts no service account token (it never talks to the API), and has an `activeDeadlineSeconds` so
a wedged rewrite ends as Failed instead of hanging forever.

Where it runs: a namespace of its own (`namespace`), the only one bimguard needs at Pod Security
level `privileged`; the records it acts for live in bimguard's namespace. An ownerReference to the
DiskRewrite is set only when both share a namespace: Kubernetes' garbage collector treats an owner
in another namespace as absent and would delete the pod at once
(https://kubernetes.io/docs/concepts/overview/working-with-objects/owners-dependents/). Its shape is
pinned by the chart's ValidatingAdmissionPolicy (charts/bimguard/templates/rewriter-policy.yaml):
a change here that the policy does not allow fails tests/chart/test_rewriter_policy.py.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from bimguard import records

MOUNT_PATH = "/disk"
TERMINATION_LOG = "/dev/termination-log"
CONTAINER = "rewrite-cfg"
DEFAULT_COMMAND = ("bimguard", "rewrite-cfg")
DEFAULT_SERVICE_ACCOUNT = "bimguard-rewriter"
DEFAULT_ACTIVE_DEADLINE = 120  # seconds; a rewrite takes milliseconds
#: Every taint: the disk's node is the only place the rewrite can run, whatever it is tainted with.
DEFAULT_TOLERATIONS: tuple[dict[str, Any], ...] = ({"operator": "Exists"},)

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_RECORD = "bimguard.io/record"
LABEL_ATTEMPT = "bimguard.io/attempt"
COMPONENT = "rewriter"
#: Pod-name kinds (`pod_name(record, attempt, kind)`): a rewrite attempt, and a read-only check of
#: what the cfg holds after an attempt that ended without saying (bimguard.rewrite.engine).
REWRITE, CHECK = "rw", "ck"
INSPECTOR = "inspector"
INSPECT_COMMAND = ("bimguard", "inspect-disk")
#: Selects every rewriter pod (the controller's watch and clean-up).
SELECTOR = f"{LABEL_MANAGED_BY}=bimguard,{LABEL_COMPONENT}={COMPONENT}"
#: Selects the repair's read-only inspector pods.
INSPECTOR_SELECTOR = f"{LABEL_MANAGED_BY}=bimguard,{LABEL_COMPONENT}={INSPECTOR}"

_MAX_NAME = 63  # pod names end up as hostnames: keep them DNS labels


def pod_name(record_name: str, attempt: int, kind: str = REWRITE) -> str:
    """Deterministic per (record, kind, attempt): creating it twice is a 409, never a second pod."""
    name = f"{record_name}-{kind}{attempt}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(record_name.encode()).hexdigest()[:10]
    suffix = f"-{digest}-{kind}{attempt}"
    return record_name[: _MAX_NAME - len(suffix)].rstrip("-.") + suffix


def rewriter_pod(record: dict[str, Any], *, attempt: int, namespace: str, image: str,
                 service_account: str = DEFAULT_SERVICE_ACCOUNT,
                 command: Sequence[str] = DEFAULT_COMMAND,
                 active_deadline_seconds: int = DEFAULT_ACTIVE_DEADLINE,
                 image_pull_policy: str = "IfNotPresent",
                 priority_class_name: str | None = None, check: bool = False,
                 image_pull_secrets: Sequence[str] = (),
                 tolerations: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The pod manifest for one attempt at rewriting the cfg of `record` (a DiskRewrite object);
    with `check`, a pod of the same shape that only looks (`rewrite-cfg --check`, the disk mounted
    read-only) whether the cfg already holds the new UUID."""
    spec = record["spec"]
    name = record["metadata"]["name"]
    for key in ("node", "diskPath", "oldUUID", "newUUID"):
        if not spec.get(key):
            raise ValueError(f"DiskRewrite {name}: spec.{key} is empty")
    argv = [*command, "--path", MOUNT_PATH, "--disk-name", spec.get("diskName", ""),
            "--old", spec["oldUUID"], "--new", spec["newUUID"], "--termination-log", TERMINATION_LOG]
    if check:
        argv.append("--check")
    return _disk_pod(record, pod_name(name, attempt, CHECK if check else REWRITE), COMPONENT, argv, attempt,
                     read_only=check, namespace=namespace, image=image, service_account=service_account,
                     active_deadline_seconds=active_deadline_seconds, image_pull_policy=image_pull_policy,
                     priority_class_name=priority_class_name, image_pull_secrets=image_pull_secrets,
                     tolerations=tolerations,
                     change=("check " if check else "") + f"{spec['oldUUID']} -> {spec['newUUID']}")


def inspector_pod(record: dict[str, Any], *, attempt: int, namespace: str, image: str,
                  service_account: str = DEFAULT_SERVICE_ACCOUNT, command: Sequence[str] = INSPECT_COMMAND,
                  image_pull_policy: str = "IfNotPresent", priority_class_name: str | None = None,
                  image_pull_secrets: Sequence[str] = (),
                  tolerations: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A read-only look at the disk directory of `record` (`bimguard inspect-disk`), for the repair's
    leftover check: the same pod shape as the rewriter's, its one volume mounted read-only."""
    spec = record["spec"]
    for key in ("node", "diskPath"):
        if not spec.get(key):
            raise ValueError(f"DiskRewrite {record['metadata']['name']}: spec.{key} is empty")
    argv = [*command, "--path", MOUNT_PATH, "--termination-log", TERMINATION_LOG]
    return _disk_pod(record, pod_name(record["metadata"]["name"], attempt, "in"), INSPECTOR, argv, attempt,
                     read_only=True, namespace=namespace, image=image, service_account=service_account,
                     active_deadline_seconds=60, image_pull_policy=image_pull_policy,
                     priority_class_name=priority_class_name, image_pull_secrets=image_pull_secrets,
                     tolerations=tolerations, change="")


def _disk_pod(record: dict[str, Any], name: str, component: str, argv: list[str], attempt: int, *, read_only: bool,
              namespace: str, image: str, service_account: str, active_deadline_seconds: int, image_pull_policy: str,
              priority_class_name: str | None, image_pull_secrets: Sequence[str],
              tolerations: Sequence[dict[str, Any]] | None, change: str) -> dict[str, Any]:
    spec = record["spec"]
    record_name = record["metadata"]["name"]
    mount: dict[str, Any] = {"name": "disk", "mountPath": MOUNT_PATH}
    if read_only:
        mount["readOnly"] = True
    pod_spec: dict[str, Any] = {
        "nodeName": spec["node"],
        "restartPolicy": "Never",
        "tolerations": [dict(t) for t in tolerations] if tolerations is not None else [dict(t) for t in DEFAULT_TOLERATIONS],
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": active_deadline_seconds,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": CONTAINER,
            "image": image,
            "imagePullPolicy": image_pull_policy,
            "command": argv,
            "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
            "volumeMounts": [mount],
            "terminationMessagePath": TERMINATION_LOG,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
            "securityContext": {
                "runAsUser": 0,
                "runAsGroup": 0,
                "runAsNonRoot": False,
                "privileged": False,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
        }],
        "volumes": [{"name": "disk", "hostPath": {"path": spec["diskPath"], "type": "Directory"}}],
    }
    if priority_class_name:
        pod_spec["priorityClassName"] = priority_class_name
    if image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in image_pull_secrets]
    annotations = {"bimguard.io/node": spec["node"], "bimguard.io/disk": spec.get("disk", "")}
    if change:
        annotations["bimguard.io/change"] = change
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                LABEL_MANAGED_BY: "bimguard",
                "app.kubernetes.io/name": "bimguard",
                LABEL_COMPONENT: component,
                LABEL_RECORD: record_name,
                LABEL_ATTEMPT: str(attempt),
            },
            # Node and disk names need not be valid label values; annotations take anything.
            "annotations": annotations,
        },
        "spec": pod_spec,
    }
    uid = record["metadata"].get("uid")
    if uid and record["metadata"].get("namespace", namespace) == namespace:
        # Deleting a record (retention) takes its pods with it.
        pod["metadata"]["ownerReferences"] = [{"apiVersion": records.API_VERSION, "kind": "DiskRewrite",
                                               "name": record_name, "uid": uid, "controller": True,
                                               "blockOwnerDeletion": False}]
    return pod
