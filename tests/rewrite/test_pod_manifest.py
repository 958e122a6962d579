"""The rewriter pod manifest: the invariants that keep a root pod next to the data harmless."""

from __future__ import annotations

import pytest

from bimguard import records
from bimguard.rewrite.pod import MOUNT_PATH, SELECTOR, pod_name, rewriter_pod

OLD = "c0120d6e-3b1a-4f7e-9a55-1a2b3c4d5e6f"
NEW = "5eed0d6e-3b1a-4f7e-9a55-1a2b3c4d5e6f"


def _record(**spec: str) -> dict:
    rec = records.rewrite_manifest(name=records.record_name("worker-2", "disk-1", OLD), namespace="bimguard",
                                   node="worker-2", disk="disk-1", disk_name="disk-1", disk_path="/mnt/disk1",
                                   old_uuid=OLD, new_uuid=NEW, reason="collides with worker-1/disk-0", origin="webhook")
    rec["spec"].update(spec)
    rec["metadata"]["uid"] = "6c7f3c2e-0000-4000-8000-000000000001"
    return rec


def test_manifest_invariants() -> None:
    rec = _record()
    pod = rewriter_pod(rec, attempt=2, namespace="bimguard", image="ghcr.io/x/bimguard:1.0")
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert pod["metadata"]["name"] == pod_name(rec["metadata"]["name"], 2)
    assert pod["metadata"]["namespace"] == "bimguard"
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "bimguard"
    assert labels["bimguard.io/record"] == rec["metadata"]["name"]
    assert all(f"{k}={v}" in [f"{a}={b}" for a, b in labels.items()] for k, v in
               (p.split("=") for p in SELECTOR.split(",")))
    # On the disk's node, past any taint, never restarted, bounded in time.
    assert spec["nodeName"] == "worker-2"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["restartPolicy"] == "Never"
    assert 0 < spec["activeDeadlineSeconds"] <= 600
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"]
    # Exactly one volume: the disk directory, which must already exist.
    assert spec["volumes"] == [{"name": "disk", "hostPath": {"path": "/mnt/disk1", "type": "Directory"}}]
    assert c["volumeMounts"] == [{"name": "disk", "mountPath": MOUNT_PATH}]
    assert c["command"] == ["bimguard", "rewrite-cfg", "--path", "/disk", "--disk-name", "disk-1",
                            "--old", OLD, "--new", NEW, "--termination-log", "/dev/termination-log"]
    assert c["image"] == "ghcr.io/x/bimguard:1.0"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    sc = c["securityContext"]
    assert sc["runAsUser"] == 0 and sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sc["capabilities"]
    assert c["resources"]["limits"]["memory"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == rec["metadata"]["uid"]
    # Nothing else reaches the host.
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key)


def test_names_are_deterministic_dns_labels() -> None:
    assert pod_name("r-0123456789abcdef", 1) == "r-0123456789abcdef-rw1"
    assert pod_name("r-0123456789abcdef", 1) == pod_name("r-0123456789abcdef", 1)
    assert pod_name("r-0123456789abcdef", 1) != pod_name("r-0123456789abcdef", 2)
    long = pod_name("x" * 80, 3)
    assert len(long) <= 63 and long.endswith("-rw3")
    assert long != pod_name("x" * 79 + "y", 3)


def test_disk_name_with_odd_characters_is_one_argument() -> None:
    pod = rewriter_pod(_record(diskName="disk with spaces/and-slash"), attempt=1, namespace="ns", image="bimguard:t")
    argv = pod["spec"]["containers"][0]["command"]
    assert argv[argv.index("--disk-name") + 1] == "disk with spaces/and-slash"


@pytest.mark.parametrize("missing", ["node", "diskPath", "oldUUID", "newUUID"])
def test_refuses_incomplete_records(missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        rewriter_pod(_record(**{missing: ""}), attempt=1, namespace="ns", image="bimguard:t")


def test_in_its_own_namespace_with_the_chart_settings() -> None:
    """In the rewriter namespace (not the record's): no ownerReference, which Kubernetes' garbage
    collector would take for a missing owner and delete the pod for; the pull secrets, priority
    class and tolerations it is given."""
    rec = _record()
    pod = rewriter_pod(rec, attempt=1, namespace="bimguard-rewriter", image="i", image_pull_secrets=["regcred"],
                       priority_class_name="system-node-critical",
                       tolerations=[{"key": "storage", "operator": "Exists", "effect": "NoExecute"}])
    assert pod["metadata"]["namespace"] == "bimguard-rewriter"
    assert "ownerReferences" not in pod["metadata"]
    spec = pod["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"key": "storage", "operator": "Exists", "effect": "NoExecute"}]
    assert "imagePullSecrets" not in rewriter_pod(rec, attempt=1, namespace="bimguard", image="i")["spec"]
