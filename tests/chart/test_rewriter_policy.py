"""The chart's ValidatingAdmissionPolicy for the rewriter namespace (templates/rewriter-policy.yaml),
evaluated by a real CEL implementation: the emulated API server (bimguard/sim/policy.py) runs the
rendered policy and binding, with cel-expr-python (Google's cel-cpp) and with cel-python, on pods
created over HTTP (dry run: admission runs, nothing is stored).

- the pods the code builds (bimguard/rewrite/pod.py: rewriter, check and inspector pods, with the
  chart's image, namespace, ServiceAccount, tolerations and pull secrets) are admitted;
- a pod that breaks any one rule is refused, naming the rule;
- pods in other namespaces are not judged by it;
- it is rendered for Kubernetes >= 1.30 only, and can be turned off.

That the whole repair runs under it is tests/chart/test_jobs_in_sim.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from helm_python import _native

from bimguard import records
from bimguard.kube import PODS, Forbidden, Kube, KubeError, api_client
from bimguard.rewrite.pod import inspector_pod, rewriter_pod
from bimguard.sim import admission as sim_admission
from bimguard.sim.apiserver import ApiServer
from jobs.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bimguard"
RELEASE, NS = "bg", "bimguard-system"
VALUES = {"imagePullSecrets": [{"name": "regcred"}], "rewriter": {"priorityClassName": "system-node-critical"}}
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
OLD = "c0120d6e-3b1a-4f7e-9a55-1a2b3c4d5e6f"
NEW = "5eed0d6e-3b1a-4f7e-9a55-1a2b3c4d5e6f"

Manifest = dict[str, Any]


def render(values: dict[str, Any] | None = None, kube_version: str | None = None) -> list[Manifest]:
    opts: dict[str, Any] = {"name": RELEASE, "namespace": NS, "is_install": True}
    if kube_version:
        opts["kube_version"] = kube_version
    with helm.Chart.load(CHART) as chart:
        out = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)))
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def webhook_args(docs: list[Manifest]) -> Any:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    return build_parser().parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])


def code_pods(docs: list[Manifest]) -> list[Manifest]:
    """What the webhook's controller and the repair create, told what the chart tells them."""
    a = webhook_args(docs)
    record = records.rewrite_manifest(name=records.record_name("worker-2", "disk-1", OLD), namespace=NS,
                                      node="worker-2", disk="disk-1", disk_name="disk-1", disk_path="/var/lib/longhorn/",
                                      old_uuid=OLD, new_uuid=NEW, reason="test", origin="webhook")
    record["metadata"]["uid"] = "6c7f3c2e-0000-4000-8000-000000000001"
    common = dict(namespace=a.rewriter_namespace, image=a.rewriter_image, service_account=a.rewriter_service_account,
                  priority_class_name=a.rewriter_priority_class, image_pull_secrets=a.rewriter_image_pull_secret,
                  tolerations=a.rewriter_tolerations)
    return [rewriter_pod(record, attempt=1, **common), rewriter_pod(record, attempt=2, check=True, **common),
            inspector_pod(record, attempt=1, **common)]


@pytest.fixture(params=["cel-expr-python", "cel-python"])
def cel(request: pytest.FixtureRequest) -> Any:
    before = sim_admission.CEL.name
    sim_admission.use_cel(request.param)
    yield request.param
    sim_admission.use_cel(before)


@pytest.fixture
async def cluster(tmp_path: Path, cel: str) -> AsyncIterator[tuple[ApiServer, Kube, list[Manifest]]]:
    """The emulator with the release namespace, the chart's rewriter namespace and its policy."""
    docs = render(VALUES)
    api = ApiServer(namespace_seed=("default", "longhorn-system", NS))
    await api.start()
    api.kubeconfig(tmp_path / "kubeconfig")
    client = await api_client(str(tmp_path / "kubeconfig"))
    kube = Kube(client)
    try:
        # What `helm install` creates (set up through the store: admission is not under test here).
        for d in docs:
            if d["kind"] == "Namespace":
                api.store.create("v1/namespaces", d)
        for d in docs:
            if d["kind"] in POLICY_KINDS:
                plural = "validatingadmissionpolicies" if d["kind"] == POLICY_KINDS[0] else "validatingadmissionpolicybindings"
                api.store.create(f"admissionregistration.k8s.io/v1/{plural}", d)
        yield api, kube, docs
    finally:
        await client.close()
        await api.stop()


async def admitted(kube: Kube, pod: Manifest) -> str:
    """"" when the API server would create the pod; else its refusal."""
    try:
        await kube.create(PODS, pod["metadata"]["namespace"], pod, dry_run=True)
    except KubeError as exc:
        return f"{exc.status} {exc.message}"
    return ""


async def test_the_pods_the_code_builds_are_admitted(cluster: tuple[ApiServer, Kube, list[Manifest]]) -> None:
    api, kube, docs = cluster
    pods = code_pods(docs)
    assert {p["metadata"]["namespace"] for p in pods} == {f"{NS}-{RELEASE}-bimguard-rewriter"}
    for pod in pods:
        assert await admitted(kube, pod) == "", pod["metadata"]["name"]
    # ... and the policy did judge them (it matched, and it said yes).
    assert [d[2] for d in api.policies.decisions] == ["allowed"] * len(pods)
    # The values reached the pods (tolerations are values.yaml's default: every taint).
    spec = pods[0]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert "ownerReferences" not in pods[0]["metadata"]  # another namespace than the record's


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    """A mutation that sets a dotted path (list indexes as numbers); None deletes it."""
    def apply(pod: Manifest) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = pod
        for k in keys[:-1]:
            node = node[k] if isinstance(k, int) else node.setdefault(k, {})
        if value is None:
            node.pop(keys[-1], None)  # type: ignore[union-attr]
        else:
            node[keys[-1]] = copy.deepcopy(value)
    return apply


def _add(path: str, item: Any) -> Callable[[Manifest], None]:
    def apply(pod: Manifest) -> None:
        node: Any = pod
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        node.setdefault(keys[-1], []).append(copy.deepcopy(item))
    return apply


C = "spec.containers.0"
SC = f"{C}.securityContext"
SHELL = {"name": "x", "image": "busybox", "command": ["sh"]}
BREAKS: dict[str, tuple[Callable[[Manifest], None], str]] = {
    "another image": (_set(f"{C}.image", "busybox:latest"), "must run the image"),
    "a shell": (_set(f"{C}.command", ["sh", "-c", "chroot /disk"]), "must run `bimguard rewrite-cfg"),
    "python -m": (_set(f"{C}.command", ["python", "-m", "bimguard.rewrite_cfg", "--path", "/disk"]),
                  "must run `bimguard rewrite-cfg"),
    "another path": (_set(f"{C}.command.3", "/"), "must run `bimguard rewrite-cfg"),
    "args": (_set(f"{C}.args", ["--new", "x"]), "must run `bimguard rewrite-cfg"),
    "PYTHONPATH": (_add(f"{C}.env", {"name": "PYTHONPATH", "value": "/disk"}), "must run `bimguard rewrite-cfg"),
    "envFrom": (_add(f"{C}.envFrom", {"secretRef": {"name": "s"}}), "must run `bimguard rewrite-cfg"),
    "a postStart hook": (_set(f"{C}.lifecycle", {"postStart": {"exec": {"command": ["sh"]}}}),
                         "must run `bimguard rewrite-cfg"),
    "an exec probe": (_set(f"{C}.livenessProbe", {"exec": {"command": ["sh"]}}), "must run `bimguard rewrite-cfg"),
    "a host port": (_add(f"{C}.ports", {"containerPort": 22, "hostPort": 22}), "must run `bimguard rewrite-cfg"),
    "a second container": (_add("spec.containers", SHELL), "exactly one container"),
    "an init container": (_add("spec.initContainers", SHELL), "exactly one container"),
    "a second volume": (_add("spec.volumes", {"name": "tmp", "emptyDir": {}}), "exactly one volume"),
    "no hostPath type": (_set("spec.volumes.0.hostPath.type", None), "exactly one volume"),
    "DirectoryOrCreate": (_set("spec.volumes.0.hostPath.type", "DirectoryOrCreate"), "exactly one volume"),
    "the host's root": (_set("spec.volumes.0.hostPath.path", "/"), "exactly one volume"),
    "a .. segment": (_set("spec.volumes.0.hostPath.path", "/var/lib/longhorn/../../etc"), "exactly one volume"),
    "a relative path": (_set("spec.volumes.0.hostPath.path", "var/lib"), "exactly one volume"),
    "another volume kind": (_set("spec.volumes.0", {"name": "disk", "emptyDir": {}}), "exactly one volume"),
    "a subPath": (_set(f"{C}.volumeMounts.0.subPath", "x"), "mount its one volume at /disk"),
    "another mount path": (_set(f"{C}.volumeMounts.0.mountPath", "/host"), "mount its one volume at /disk"),
    "mount propagation": (_set(f"{C}.volumeMounts.0.mountPropagation", "Bidirectional"), "mount its one volume"),
    "hostNetwork": (_set("spec.hostNetwork", True), "host's network, PID or IPC"),
    "hostPID": (_set("spec.hostPID", True), "host's network, PID or IPC"),
    "hostIPC": (_set("spec.hostIPC", True), "host's network, PID or IPC"),
    "privileged": (_set(f"{SC}.privileged", True), "must not be privileged"),
    "privilege escalation": (_set(f"{SC}.allowPrivilegeEscalation", True), "must not be privileged"),
    "an added capability": (_set(f"{SC}.capabilities.add", ["SYS_ADMIN"]), "must not be privileged"),
    "nothing dropped": (_set(f"{SC}.capabilities.drop", []), "must not be privileged"),
    "a writable root": (_set(f"{SC}.readOnlyRootFilesystem", False), "must not be privileged"),
    "an unmasked /proc": (_set(f"{SC}.procMount", "Unmasked"), "must not be privileged"),
    "SELinux options": (_set(f"{SC}.seLinuxOptions", {"type": "spc_t"}), "must not be privileged"),
    "no seccomp": (_set(f"{SC}.seccompProfile", {"type": "Unconfined"}), "must not be privileged"),
    "pod seccomp Unconfined": (_set("spec.securityContext.seccompProfile", {"type": "Unconfined"}), "sysctls"),
    "sysctls": (_set("spec.securityContext.sysctls", [{"name": "kernel.shm_rmid_forced", "value": "1"}]), "sysctls"),
    "another ServiceAccount": (_set("spec.serviceAccountName", "default"), "must run as the ServiceAccount"),
    "a mounted token": (_set("spec.automountServiceAccountToken", True), "must run as the ServiceAccount"),
}


@pytest.mark.parametrize("what", list(BREAKS))
async def test_a_pod_that_breaks_a_rule_is_refused(cluster: tuple[ApiServer, Kube, list[Manifest]], what: str) -> None:
    _, kube, docs = cluster
    pod = code_pods(docs)[0]
    mutate, rule = BREAKS[what]
    mutate(pod)
    refusal = await admitted(kube, pod)
    assert refusal.startswith("403 pods \"") and "is forbidden: ValidatingAdmissionPolicy" in refusal, refusal
    assert rule in refusal, refusal


async def test_other_namespaces_are_not_judged(cluster: tuple[ApiServer, Kube, list[Manifest]]) -> None:
    api, kube, docs = cluster
    pod = code_pods(docs)[0]
    pod["metadata"]["namespace"] = NS
    BREAKS["a shell"][0](pod)
    assert await admitted(kube, pod) == ""
    assert api.policies.decisions == []


async def test_an_update_that_changes_the_image_is_refused(cluster: tuple[ApiServer, Kube, list[Manifest]]) -> None:
    _, kube, docs = cluster
    pod = code_pods(docs)[0]
    ns = pod["metadata"]["namespace"]
    await kube.create(PODS, ns, pod)
    stored = await kube.get(PODS, ns, pod["metadata"]["name"])
    stored["spec"]["containers"][0]["image"] = "busybox:latest"
    with pytest.raises(Forbidden, match="must run the image"):
        await kube.replace(PODS, ns, stored)


@pytest.mark.parametrize("kube_version, rendered", [("v1.28.9", False), ("v1.29.4", False), ("v1.30.0", True),
                                                    ("v1.31.2-eks-1", True), ("v1.34.0", True)])
def test_rendered_where_the_cluster_serves_the_v1_api(kube_version: str, rendered: bool) -> None:
    kinds = [d["kind"] for d in render(kube_version=kube_version) if d["kind"] in POLICY_KINDS]
    assert kinds == (list(POLICY_KINDS) if rendered else [])
    assert not [d for d in render({"rewriter": {"admissionPolicy": {"enabled": False}}}) if d["kind"] in POLICY_KINDS]


def test_the_policy_pins_this_releases_image_namespace_and_service_account() -> None:
    docs = render({"image": {"repository": "registry.example/bg", "tag": "1.2.3"}})
    (policy,) = [d for d in docs if d["kind"] == POLICY_KINDS[0]]
    (binding,) = [d for d in docs if d["kind"] == POLICY_KINDS[1]]
    a = webhook_args(docs)
    text = json.dumps(policy["spec"]["validations"])
    assert a.rewriter_image == "registry.example/bg:1.2.3" and json.dumps(a.rewriter_image) in text.replace("\\\"", "\"")
    assert json.dumps(a.rewriter_service_account) in text.replace("\\\"", "\"")
    selector = {"matchLabels": {"kubernetes.io/metadata.name": a.rewriter_namespace}}
    assert policy["spec"]["matchConstraints"]["namespaceSelector"] == selector
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"],
                               "matchResources": {"namespaceSelector": selector}}
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert {"CREATE", "UPDATE"} == set(policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"])


@pytest.mark.parametrize("path, valid", [("/var/lib/longhorn/", True), ("/mnt/disk-1", True), ("/mnt/.hidden", True),
                                         ("/", False), ("", False), ("relative/path", False), ("/mnt/../etc", False),
                                         ("/mnt/./disk", False), ("/mnt//disk", False), ("/mnt/disk/..", False)])
async def test_the_crd_holds_a_records_disk_path_to_the_same_pattern(tmp_path: Path, path: str, valid: bool) -> None:
    """A DiskRewrite's spec.diskPath is what a rewriter pod mounts: the CRD refuses what the policy
    would refuse (absolute, no empty, "." or ".." segments)."""
    from bimguard.sim.apiserver import CRD_KEY

    api = ApiServer(namespace_seed=("default", NS))
    await api.start()
    try:
        api.store.create(CRD_KEY, yaml.safe_load((CHART / "crds" / "diskrewrites.bimguard.io.yaml").read_text()))
        api.kubeconfig(tmp_path / "kubeconfig")
        client = await api_client(str(tmp_path / "kubeconfig"))
        try:
            from bimguard.rewrite.engine import REWRITES

            body = records.rewrite_manifest(name="r-x", namespace=NS, node="n", disk="d", disk_name="d", disk_path=path,
                                            old_uuid=OLD, new_uuid=NEW, reason="t", origin="webhook")
            try:
                await Kube(client).create(REWRITES, NS, body)
                outcome = ""
            except KubeError as exc:
                outcome = exc.message
        finally:
            await client.close()
    finally:
        await api.stop()
    assert (outcome == "") is valid, outcome
    if not valid:
        assert "spec.diskPath" in outcome
