"""The chart's Jobs run as Kubernetes would run them, against the emulator (bimguard/sim): the
pod template of each rendered Job or CronJob becomes a Pod (the emulator has no Job controller),
which a simulated kubelet runs with the image and the command the manifest names, authenticated
as the pod's own ServiceAccount.

- the post-install/post-upgrade hook Job repairs the collisions planted in a simulated Longhorn,
  every request it made is allowed by the chart's RBAC for its ServiceAccount, its pod passes the
  release namespace's `restricted` Pod Security level, and its on-node pods run in the chart's
  rewriter namespace under the chart's ValidatingAdmissionPolicy (bimguard/sim/policy.py);
- the scheduled CronJob's pod (mode scan) scans and reports them, with its read-only RBAC;
- the pre-delete hook removes the MutatingWebhookConfiguration first, then what the release made
  at run time, and keeps the DiskRewrite records.

The ServiceAccounts and RBAC are applied with real kubectl. The emulator serves no CronJobs, so
their pod templates are taken from the rendered manifest.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import helm_python as helm
import pytest
import yaml

from bimguard.sim import authz
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.kubelet import SimKubelet
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.scenarios import plant
from bimguard.sim.store import ApiError
from tests.chart.rbac import allows
from webhook.leader import micro_time

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bimguard"
KUBECTL = Path(sys.executable).parent / "kubectl"
RELEASE, NS, LH_NS = "bg", "bimguard-system", "longhorn-system"
CONTROL_NODE = "control-plane-1"  # where the Job pods run: not a Longhorn node
RW = "bimguard.io/v1alpha1/diskrewrites"
MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
# Shorter waits than production, passed the way an operator would: repair.extraArgs.
FAST = ["--poll-interval=0.2", "--pod-start-timeout=10", "--pod-deadline=10", "--lease-duration=6"]
# What the Jobs need installed first: the rewriter namespace, identities, RBAC and the rewriter
# pods' policy (the Namespace first: kubectl applies in order).
RBAC_KINDS = ("Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
              "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")

Manifest = dict[str, Any]


def render(values: dict[str, Any]) -> list[Manifest]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NS, is_install=True)
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


async def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Real kubectl, in a thread: the emulator serves from this test's event loop."""
    return await asyncio.to_thread(subprocess.run, [str(KUBECTL), "--kubeconfig", str(kubeconfig), *args],
                                   input=input, capture_output=True, text=True, timeout=60)


class Audit:
    """Every request one user made, as the authorization attributes kube-apiserver derives."""

    def __init__(self, api: ApiServer, user: str) -> None:
        self.api, self.user, self.seen = api, user, []  # type: ignore[var-annotated]
        api.request_listeners.append(self)

    def __call__(self, method: str, path_qs: str, status: int, user: str) -> None:
        if user == self.user:
            url = urlsplit(path_qs)
            attrs = authz.request_attributes(method, url.path, dict(parse_qsl(url.query)), {"username": user})
            self.seen.append((attrs, status))

    def close(self) -> None:
        self.api.request_listeners.remove(self)

    def denied_by(self, docs: list[Manifest], sa: str) -> list[str]:
        """What the chart's RBAC for `sa` would have refused (as kube-apiserver's RBAC does)."""
        out = set()
        for a, _ in self.seen:
            resource = a.resource + (f"/{a.subresource}" if a.subresource else "")
            if not allows(docs, sa, NS, a.verb, a.group, resource, a.namespace, a.name):
                out.add(f"{a.verb} {resource}{'.' + a.group if a.group else ''} {a.name or '*'} in "
                        f"{a.namespace or 'the cluster'}")
        return sorted(out)


# -- the emulated cluster and the Job pods ---------------------------------------------------------

class Env:
    def __init__(self, api: ApiServer, cluster: SimCluster | None, kubeconfig: Path, root: Path) -> None:
        self.api, self.cluster, self.kubeconfig, self.root = api, cluster, kubeconfig, root
        self.kubelets: list[SimKubelet] = []

    async def apply(self, docs: list[Manifest]) -> None:
        docs = sorted(docs, key=lambda d: d["kind"] != "Namespace")
        text = "\n---\n".join(yaml.safe_dump(d) for d in docs)
        p = await kubectl(self.kubeconfig, "apply", "-f", "-", input=text)
        assert p.returncode == 0, p.stderr

    async def run_pod(self, template: Manifest, job_name: str, *, timeout: float = 25.0) -> Manifest:
        """What the Job controller and the scheduler would do with `template` (a Job's
        spec.template): a Pod named after the Job, labelled with job-name, on CONTROL_NODE; run by
        a kubelet whose pods authenticate as their ServiceAccount, stopped once it is done (so that
        the next pod meets one kubelet only). Returns the finished Pod."""
        sa = template["spec"]["serviceAccountName"]
        user = f"system:serviceaccount:{NS}:{sa}"
        token = secrets.token_hex(8)
        self.api.add_user(token, user)
        pod_kubeconfig = self.root / f"{sa}.kubeconfig"
        self.api.kubeconfig(pod_kubeconfig, token=token)
        kubelet = SimKubelet(self.api.url, self.root / "control", {CONTROL_NODE}, images=["bimguard"])
        await kubelet.start()
        kubelet.kubeconfig = pod_kubeconfig  # what the pod sees: its ServiceAccount's credentials
        self.kubelets.append(kubelet)
        name = f"{job_name}-{secrets.token_hex(3)}"
        labels = {**template["metadata"].get("labels", {}), "job-name": job_name,
                  "batch.kubernetes.io/job-name": job_name}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NS, "labels": labels,
                            "annotations": template["metadata"].get("annotations", {})},
               "spec": {**template["spec"], "nodeName": CONTROL_NODE}}
        try:
            p = await kubectl(self.kubeconfig, "create", "-f", "-", input=json.dumps(pod))
            assert p.returncode == 0, p.stderr
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while loop.time() < end:
                stored = self.api.store.get("v1/pods", NS, name)
                if (stored.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    stored["logs"] = kubelet.logs(NS, name)
                    return stored
                await asyncio.sleep(0.2)
            raise AssertionError(f"pod {name} did not finish in {timeout}s; logs:\n{kubelet.logs(NS, name)[-3000:]}")
        finally:
            self.kubelets.remove(kubelet)
            await kubelet.stop()

    async def run_audited(self, template: Manifest, job_name: str, *, timeout: float = 25.0) -> tuple[Manifest, Audit]:
        """`run_pod`, recording every request its ServiceAccount makes meanwhile."""
        sa = template["spec"]["serviceAccountName"]
        audit = Audit(self.api, f"system:serviceaccount:{NS}:{sa}")
        try:
            return await self.run_pod(template, job_name, timeout=timeout), audit
        finally:
            audit.close()

    async def close(self) -> None:
        for k in self.kubelets:
            await k.stop()


def exists(api: ApiServer, key: str, namespace: str, name: str) -> bool:
    try:
        api.store.get(key, namespace, name)
    except ApiError:
        return False
    return True


def exit_code(pod: Manifest) -> int:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]


@pytest.fixture
async def longhorn(tmp_path: Path) -> AsyncIterator[Env]:
    """A simulated Longhorn v1.7.2 (5 nodes, one disk each) with a kubelet for its nodes, the
    chart's CRDs and the release namespace."""
    api = ApiServer(longhorn_version="v1.7.2")
    await api.start()
    cluster = SimCluster(api, tmp_path / "hosts", nodes=5, disks_per_node=1, seed=7, time_scale=0.01,
                         longhorn_version="v1.7.2")
    kubeconfig = tmp_path / "kubeconfig"
    env = Env(api, cluster, kubeconfig, tmp_path)
    try:
        await cluster.start()
        await cluster.wait_until_ready(30)
        await cluster.start_kubelet(images=["bimguard"])
        api.kubeconfig(kubeconfig)
        for crd in sorted((CHART / "crds").glob("*.yaml")):
            p = await kubectl(kubeconfig, "apply", "-f", str(crd))
            assert p.returncode == 0, p.stderr
        p = await kubectl(kubeconfig, "create", "namespace", NS)
        assert p.returncode == 0, p.stderr
        # As the README installs it: the release namespace enforces `restricted`.
        p = await kubectl(kubeconfig, "label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")
        assert p.returncode == 0, p.stderr
        yield env
    finally:
        await env.close()
        await cluster.stop()
        await api.stop()


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[Env]:
    """The emulated API server alone (no Longhorn), with the release namespace and the CRDs."""
    async with bare_env(tmp_path) as env:
        yield env


@asynccontextmanager
async def bare_env(tmp_path: Path) -> AsyncIterator[Env]:
    """`bare`, for other test modules' fixtures."""
    api = ApiServer(namespace_seed=("default", LH_NS, NS))
    await api.start()
    kubeconfig = tmp_path / "kubeconfig"
    api.kubeconfig(kubeconfig)
    env = Env(api, None, kubeconfig, tmp_path)
    try:
        p = await kubectl(kubeconfig, "label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")
        assert p.returncode == 0, p.stderr
        for crd in sorted((CHART / "crds").glob("*.yaml")):
            p = await kubectl(kubeconfig, "apply", "-f", str(crd))
            assert p.returncode == 0, p.stderr
        yield env
    finally:
        await env.close()
        await api.stop()


# -- the tests ------------------------------------------------------------------------------------------

async def test_the_hook_job_repairs_the_planted_collisions(longhorn: Env) -> None:
    env = longhorn
    assert env.cluster is not None
    groups = await plant(env.cluster, ["empty"])
    (victim,) = groups[0].victims
    old = await env.cluster.disk_uuid(*victim)
    assert old[:4] == groups[0].prefix

    docs = render({"repair": {"extraArgs": FAST}})
    await env.apply([d for d in docs if d["kind"] in RBAC_KINDS])
    job = find(docs, "Job", f"{RELEASE}-bimguard-repair")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    template = job["spec"]["template"]
    c = template["spec"]["containers"][0]
    assert c["image"] == "ghcr.io/bimguard/bimguard:0.1.0" and c["command"] == ["bimguard"]
    assert c["args"][:2] == ["repair", "--apply"] and "--evict" not in c["args"]

    # A pod of this same Job died a moment ago holding the Lease (as when the Job retries a pod):
    # the identity is the Job's, so the retried pod takes the Lease over at once instead of
    # finding "another repair running" until it expires.
    env.api.store.create("coordination.k8s.io/v1/leases", {
        "metadata": {"name": "bimguard-repair", "namespace": NS},
        "spec": {"holderIdentity": job["metadata"]["name"], "leaseDurationSeconds": 300,
                 "acquireTime": micro_time(), "renewTime": micro_time(), "leaseTransitions": 0}})

    sa = template["spec"]["serviceAccountName"]
    pod, audit = await asyncio.wait_for(env.run_audited(template, job["metadata"]["name"]), 28)
    assert pod["status"]["phase"] == "Succeeded", pod["logs"][-3000:]
    assert exit_code(pod) == 0

    # Repaired: the victim has a new UUID whose prefix nobody else has, in the status and the cfg.
    new = await env.cluster.disk_uuid(*victim)
    assert new != old and new[:4] != groups[0].prefix
    assert env.cluster.read_cfg(*victim).disk_uuid == new
    records = [r for r in env.api.store.list(RW, NS)[0] if r["spec"]["origin"] == "job"]
    assert [(r["spec"]["node"], r["spec"]["disk"], r["status"]["phase"]) for r in records] == [(*victim, "Done")]
    # --log-format json: the progress lines are JSON, and they name the disk.
    lines = [json.loads(line) for line in pod["logs"].splitlines() if line.startswith("{")]
    assert any(d.get("disk") == f"{victim[0]}/{victim[1]}" for d in lines), pod["logs"][-2000:]
    # It held the Lease as the Job (and released it).
    lease = env.api.store.get("coordination.k8s.io/v1/leases", NS, "bimguard-repair")
    assert lease["spec"]["holderIdentity"] in ("", job["metadata"]["name"])
    assert lease["spec"]["leaseTransitions"] == 0  # taken over as its own, not from someone else
    # Least privilege held: everything it did, its RBAC allows (and it did something).
    assert len(audit.seen) > 20
    assert audit.denied_by(docs, sa) == []
    # Its on-node pods ran in the rewriter namespace, and the chart's policy judged and admitted each
    # (the preflight's dry run, the inspector, the rewriter).
    rewriter_ns = find(docs, "Namespace", f"{NS}-{RELEASE}-bimguard-rewriter")["metadata"]["name"]
    assert {a.namespace for a, _ in audit.seen if a.resource == "pods"} == {rewriter_ns}
    decisions = [d[2] for d in env.api.policies.decisions]
    assert len(decisions) >= 3 and set(decisions) == {"allowed"}, decisions


async def test_the_scheduled_scan_reports_the_collisions(longhorn: Env) -> None:
    env = longhorn
    assert env.cluster is not None
    groups = await plant(env.cluster, ["empty"])
    docs = render({"repair": {"cronJob": {"enabled": True, "mode": "scan"}}})
    await env.apply([d for d in docs if d["kind"] in RBAC_KINDS])
    cron = find(docs, "CronJob", f"{RELEASE}-bimguard-scan-scheduled")
    template = cron["spec"]["jobTemplate"]["spec"]["template"]
    c = template["spec"]["containers"][0]
    assert c["command"] == ["bimguard"] and c["args"][0] == "scan"

    sa = template["spec"]["serviceAccountName"]
    pod, audit = await env.run_audited(template, f"{cron['metadata']['name']}-29000000")
    # Exit 1: collisions to repair (a verdict: the Job fails, without retries, as a signal).
    assert exit_code(pod) == 1, pod["logs"][-3000:]
    assert groups[0].prefix in pod["logs"]
    assert "collision group(s) to repair" in pod["logs"]
    rules = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "scan", "operator": "In", "values": [1]}} in rules
    # Read-only, and enough: no write at all, and nothing denied.
    assert audit.seen and all(a.verb in ("list", "get") for a, _ in audit.seen)
    assert audit.denied_by(docs, sa) == []
    assert not env.api.store.list(RW, NS)[0]


@pytest.mark.parametrize("delete_records", [False, True], ids=["keep-records", "delete-records"])
async def test_the_pre_delete_hook_removes_the_webhook_configuration_first(bare: Env, delete_records: bool) -> None:
    """The release as installed, plus what it made at run time; with delete-records, a rewrite
    that never finishes (the hook deletes its pod once its wait is over)."""
    env = bare
    docs = render({"uninstall": {"deleteRecords": delete_records, "waitSeconds": 3}})
    hook_job = find(docs, "Job", f"{RELEASE}-bimguard-repair")
    uninstall = find(docs, "Job", f"{RELEASE}-bimguard-uninstall")
    # The emulator serves no CronJobs; the pre-delete Job is not there before Helm runs it, nor the
    # test Pod before `helm test`.
    await env.apply([d for d in docs if d["kind"] not in ("CronJob", "Pod") and d is not uninstall])
    mwc = find(docs, "MutatingWebhookConfiguration", f"{RELEASE}-bimguard-{NS}")["metadata"]["name"]
    assert exists(env.api, MWC, "", mwc)
    store = env.api.store
    store.create("v1/secrets", {"metadata": {"name": f"{RELEASE}-bimguard-tls", "namespace": NS}, "data": {}})
    store.create("v1/secrets", {"metadata": {"name": "somebody-elses", "namespace": NS}, "data": {}})
    for lease in (f"{RELEASE}-bimguard-controller", "bimguard-repair", "unrelated"):
        store.create("coordination.k8s.io/v1/leases", {"metadata": {"name": lease, "namespace": NS}, "spec": {}})
    # The last `helm test` Pod, a hook resource Helm leaves behind.
    test_pod = find(docs, "Pod", f"{RELEASE}-bimguard-test")
    store.create("v1/pods", {"metadata": {"name": test_pod["metadata"]["name"], "namespace": NS,
                                          "labels": test_pod["metadata"]["labels"]}, "spec": test_pod["spec"]})
    rewriter_ns = f"{NS}-{RELEASE}-bimguard-rewriter"  # the on-node pods' namespace
    for name, component, phase in (("r-1-rw1", "rewriter", "Succeeded"), ("r-2-rw1", "rewriter", "Running"),
                                   ("j-3-in1", "inspector", "Failed")):
        created = store.create("v1/pods", {
            "metadata": {"name": name, "namespace": rewriter_ns, "labels": {
                "app.kubernetes.io/managed-by": "bimguard", "app.kubernetes.io/component": component}},
            "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "image": "bimguard"}]}})
        store.update("v1/pods", {**created, "status": {"phase": phase}}, subresource="status")
    store.create(RW, {"apiVersion": "bimguard.io/v1alpha1", "kind": "DiskRewrite",
                      "metadata": {"name": "r-1", "namespace": NS},
                      "spec": {"node": "n", "disk": "d", "diskPath": "/d", "oldUUID": "a" * 8 + "-0000-4000-8000-" + "0" * 12,
                               "newUUID": "b" * 8 + "-0000-4000-8000-" + "0" * 12, "origin": "webhook"}})

    async def rewrite_finishes() -> None:
        await asyncio.sleep(1.0)
        pod = store.get("v1/pods", rewriter_ns, "r-2-rw1")
        store.update("v1/pods", {**pod, "status": {"phase": "Succeeded"}}, subresource="status")

    finisher = None if delete_records else asyncio.create_task(rewrite_finishes())
    assert uninstall["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    template = uninstall["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == "ghcr.io/bimguard/bimguard:0.1.0"
    sa = template["spec"]["serviceAccountName"]
    pod, audit = await env.run_audited(template, uninstall["metadata"]["name"])
    if finisher is not None:
        await finisher
    assert pod["status"]["phase"] == "Succeeded", pod["logs"][-3000:]
    log = [json.loads(line) for line in pod["logs"].splitlines()]
    # A rewrite in flight is let finish; one that does not within the wait is deleted all the same.
    unfinished = [e["object"] for e in log if e["action"] == "note"]
    assert unfinished == (["pod/r-2-rw1"] if delete_records else [])

    # The webhook configuration went first, before the Deployment was touched.
    writes = [(a.verb, a.resource) for a, status in audit.seen if a.verb in ("delete", "patch") and status < 400]
    assert writes[0] == ("delete", "mutatingwebhookconfigurations")
    assert writes.index(("patch", "deployments")) == 1
    assert not exists(env.api, MWC, "", mwc)
    assert store.get("apps/v1/deployments", NS, f"{RELEASE}-bimguard")["spec"]["replicas"] == 0
    assert not exists(env.api, "batch/v1/jobs", NS, hook_job["metadata"]["name"])
    assert not exists(env.api, "v1/pods", NS, test_pod["metadata"]["name"])
    assert not exists(env.api, "v1/secrets", NS, f"{RELEASE}-bimguard-tls")
    assert exists(env.api, "v1/secrets", NS, "somebody-elses")
    leases = sorted(l["metadata"]["name"] for l in store.list("coordination.k8s.io/v1/leases", NS)[0])
    assert leases == ["unrelated"]
    assert [p["metadata"]["name"] for p in store.list("v1/pods", rewriter_ns)[0]
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "bimguard"] == []
    kept = [r["metadata"]["name"] for r in store.list(RW, NS)[0]]
    assert kept == ([] if delete_records else ["r-1"])
    # Its RBAC allowed all of it, by name wherever Kubernetes allows it.
    assert audit.denied_by(docs, sa) == []


def cert_manager_crd(kind: str) -> Manifest:
    """A stand-in for cert-manager's CRD of `kind`: served, its objects kept as given."""
    plural = kind.lower() + "s"
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.cert-manager.io"},
            "spec": {"group": "cert-manager.io", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


async def test_the_pre_delete_hook_removes_cert_managers_certificates_before_their_secrets(bare: Env) -> None:
    """tls.mode certManager: cert-manager never deletes a Certificate's Secret and would issue a
    deleted one again while the Certificate exists, so the hook deletes the chart's Certificates,
    then their Secrets (the CA's key among them)."""
    env = bare
    docs = render({"tls": {"mode": "certManager"}, "uninstall": {"waitSeconds": 2}})
    uninstall = find(docs, "Job", f"{RELEASE}-bimguard-uninstall")
    await env.apply([cert_manager_crd("Issuer"), cert_manager_crd("Certificate")])
    await env.apply([d for d in docs if d["kind"] not in ("CronJob", "Pod") and d is not uninstall])
    store = env.api.store
    certificates = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Certificate")
    assert certificates == [f"{RELEASE}-bimguard-ca", f"{RELEASE}-bimguard-serving"]
    issued = sorted(d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate")
    assert issued == [f"{RELEASE}-bimguard-ca", f"{RELEASE}-bimguard-tls"]
    for name in issued + ["somebody-elses"]:  # what cert-manager would have written
        store.create("v1/secrets", {"metadata": {"name": name, "namespace": NS}, "data": {}})

    template = uninstall["spec"]["template"]
    sa = template["spec"]["serviceAccountName"]
    pod, audit = await env.run_audited(template, uninstall["metadata"]["name"])
    assert pod["status"]["phase"] == "Succeeded", pod["logs"][-3000:]
    deleted = [(a.resource, a.name) for a, status in audit.seen if a.verb == "delete" and status < 400
               and a.resource in ("certificates", "secrets")]
    assert deleted == [("certificates", f"{RELEASE}-bimguard-serving"), ("certificates", f"{RELEASE}-bimguard-ca"),
                       ("secrets", f"{RELEASE}-bimguard-tls"), ("secrets", f"{RELEASE}-bimguard-ca")]
    assert [c["metadata"]["name"] for c in store.list("cert-manager.io/v1/certificates", NS)[0]] == []
    assert [s["metadata"]["name"] for s in store.list("v1/secrets", NS)[0]] == ["somebody-elses"]
    assert audit.denied_by(docs, sa) == []
