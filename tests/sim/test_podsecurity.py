"""Pod Security admission (bimguard/sim/podsecurity.py): every check failing and passing with
pod-security-admission v0.32.0's texts, the check order and versions, namespace labels, and the
plugin in the API server's write path (enforce, warn, dry run, updates, namespaces, pod
controllers, its place after mutating and before validating webhooks), through
kubernetes_asyncio, raw HTTP and the real kubectl."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from bimguard.sim import podsecurity as psa
from bimguard.sim.apiserver import ApiServer
from tests.kubectl import Kubectl
from tests.sim.test_admission import SVC_HOST, Pki, Webhook, allow

ENFORCE, WARN = "pod-security.kubernetes.io/enforce", "pod-security.kubernetes.io/warn"
MERGE = "application/merge-patch+json"


def run(check_id: str, spec: dict, meta: dict | None = None, version: tuple[int, int] | None = None) -> psa.CheckResult:
    check = next(c for c in psa.CHECKS if c.id == check_id)
    versioned = check.at(version or psa.MAX_VERSION)
    assert versioned is not None
    return versioned.check(meta or {}, spec)


def fails(check_id: str, spec: dict, meta: dict | None = None, version: tuple[int, int] | None = None) -> tuple[str, str]:
    r = run(check_id, spec, meta, version)
    assert not r.allowed
    return r.reason, r.detail


def passes(check_id: str, spec: dict, meta: dict | None = None, version: tuple[int, int] | None = None) -> bool:
    return run(check_id, spec, meta, version).allowed


def c(name: str = "c", **sc: Any) -> dict:
    out: dict[str, Any] = {"name": name, "image": "busybox"}
    if sc:
        out["securityContext"] = sc
    return out


# The pod of charts/bimguard/templates/deployment.yaml (its securityContexts and volumes).
CHART_POD_SPEC: dict[str, Any] = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "webhook", "image": "bimguard:dev", "args": ["webhook"],
                    "ports": [{"name": "https", "containerPort": 8443, "protocol": "TCP"}],
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "privileged": False, "capabilities": {"drop": ["ALL"]},
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "tls", "mountPath": "/etc/bimguard/tls"}]}],
    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                {"name": "tls", "secret": {"secretName": "bimguard-tls", "defaultMode": 288}}],
}

# The shape of the on-node rewriter pod (bimguard/rewrite/pod.py): root, no capabilities, one hostPath.
REWRITER_POD_SPEC: dict[str, Any] = {
    "nodeName": "worker-1", "restartPolicy": "Never",
    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "rewrite-cfg", "image": "bimguard:dev", "command": ["bimguard", "rewrite-cfg"],
                    "volumeMounts": [{"name": "disk", "mountPath": "/disk"}],
                    "securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "privileged": False,
                                        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}}],
    "volumes": [{"name": "disk", "hostPath": {"path": "/var/lib/longhorn", "type": "Directory"}}],
}


def pod(name: str, spec: dict | None = None, **meta: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta},
            "spec": copy.deepcopy(spec if spec is not None else {"containers": [c()]})}


def ns(api: ApiServer, name: str, **labels: str) -> None:
    api.store.create("v1/namespaces", {"metadata": {"name": name, "labels": {
        f"pod-security.kubernetes.io/{k.replace('_', '-')}": v for k, v in labels.items()}}})


def status_of(e: ApiException) -> dict:
    return json.loads(e.body)


# ---------------------------------------------------------------------------- every check, failing and passing


def test_baseline_checks() -> None:
    # windowsHostProcess
    assert fails("windowsHostProcess", {"securityContext": {"windowsOptions": {"hostProcess": True}},
                                        "containers": [c(windowsOptions={"hostProcess": True})]}) == (
        "hostProcess", 'pod and container "c" must not set securityContext.windowsOptions.hostProcess=true')
    assert passes("windowsHostProcess", {"containers": [c(windowsOptions={"hostProcess": False})]})
    # hostNamespaces
    assert fails("hostNamespaces", {"hostNetwork": True, "hostPID": True, "hostIPC": True, "containers": [c()]}) == (
        "host namespaces", "hostNetwork=true, hostPID=true, hostIPC=true")
    assert fails("hostNamespaces", {"hostPID": True, "containers": [c()]}) == ("host namespaces", "hostPID=true")
    assert passes("hostNamespaces", {"hostNetwork": False, "containers": [c()]})
    # privileged: init containers first, then containers, then ephemeral containers
    assert fails("privileged", {"initContainers": [c("i", privileged=True)], "containers": [c("a", privileged=True)],
                                "ephemeralContainers": [c("e", privileged=True)]}) == (
        "privileged", 'containers "i", "a", "e" must not set securityContext.privileged=true')
    assert fails("privileged", {"containers": [c(privileged=True)]})[1] == (
        'container "c" must not set securityContext.privileged=true')
    assert passes("privileged", {"containers": [c(privileged=False), c("d")]})
    # capabilities beyond the baseline set
    assert fails("capabilities_baseline", {"containers": [c(capabilities={"add": ["SYS_ADMIN", "CHOWN", "NET_ADMIN"]}),
                                                           c("d", capabilities={"add": ["NET_RAW"]})]}) == (
        "non-default capabilities",
        'containers "c", "d" must not include "NET_ADMIN", "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add')
    assert passes("capabilities_baseline", {"containers": [c(capabilities={"add": [
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
        "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"], "drop": ["ALL"]})]})
    # hostPath volumes
    assert fails("hostPathVolumes", REWRITER_POD_SPEC) == ("hostPath volumes", 'volume "disk"')
    assert fails("hostPathVolumes", {"volumes": [{"name": "a", "hostPath": {"path": "/a"}},
                                                 {"name": "b", "hostPath": {"path": "/b"}}]})[1] == 'volumes "a", "b"'
    assert passes("hostPathVolumes", CHART_POD_SPEC)
    # hostPorts (the set of ports is sorted as strings)
    assert fails("hostPorts", {"containers": [c(), {"name": "d", "ports": [{"containerPort": 1, "hostPort": 8080},
                                                                           {"containerPort": 2, "hostPort": 80}]}]}) == (
        "hostPort", 'container "d" uses hostPorts 80, 8080')
    assert fails("hostPorts", {"containers": [{"name": "a", "ports": [{"hostPort": 9}]},
                                              {"name": "b", "ports": [{"hostPort": 9}]}]})[1] == (
        'containers "a", "b" use hostPort 9')
    assert passes("hostPorts", {"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 0}]}]})
    # AppArmor: fields and the deprecated annotations
    meta = {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}}
    assert fails("appArmorProfile", {"containers": [c(appArmorProfile={"type": "Unconfined"})]}, meta) == (
        "forbidden AppArmor profiles",
        ('container "c" and annotation must not set AppArmor profile type to "Unconfined", '
        '"container.apparmor.security.beta.kubernetes.io/c="unconfined""'))  # joinQuote does not escape
    assert fails("appArmorProfile", {"securityContext": {"appArmorProfile": {"type": "Unconfined"}},
                                     "containers": [c()]}) == (
        "forbidden AppArmor profile", 'pod must not set AppArmor profile type to "Unconfined"')
    assert passes("appArmorProfile", {"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}},
                                      "containers": [c(appArmorProfile={"type": "Localhost", "localhostProfile": "p"})]},
                  {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "localhost/p",
                                   "container.apparmor.security.beta.kubernetes.io/d": "runtime/default"}})
    # SELinux
    assert fails("seLinuxOptions", {"securityContext": {"seLinuxOptions": {"type": "spc_t", "user": "u"}},
                                    "containers": [c(seLinuxOptions={"role": "r"})]}) == (
        "seLinuxOptions", ('pod and container "c" set forbidden securityContext.seLinuxOptions: type "spc_t"; '
                          "user may not be set; role may not be set"))
    assert passes("seLinuxOptions", {"containers": [c(seLinuxOptions={"type": "container_t", "level": "s0:c1"})]})
    engine = {"containers": [c(seLinuxOptions={"type": "container_engine_t"})]}
    assert passes("seLinuxOptions", engine) and not passes("seLinuxOptions", engine, version=(1, 30))
    # /proc mount
    assert fails("procMount", {"containers": [c(procMount="Unmasked")]}) == (
        "procMount", 'container "c" must not set securityContext.procMount to "Unmasked"')
    assert passes("procMount", {"containers": [c(procMount="Default")], "hostUsers": False})
    # seccomp: Unconfined is forbidden, unset is fine for baseline
    assert fails("seccompProfile_baseline", {"securityContext": {"seccompProfile": {"type": "Unconfined"}},
                                             "containers": [c(seccompProfile={"type": "Unconfined"})]}) == (
        "seccompProfile", 'pod and container "c" must not set securityContext.seccompProfile.type to "Unconfined"')
    assert passes("seccompProfile_baseline", {"containers": [c(), c("d", seccompProfile={"type": "RuntimeDefault"})]})
    # before v1.19: the alpha annotations
    assert fails("seccompProfile_baseline", {"containers": [c()]},
                 {"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined",
                                  "container.seccomp.security.alpha.kubernetes.io/c": "unconfined"}}, version=(1, 18)) == (
        "seccompProfile", ('forbidden annotations container.seccomp.security.alpha.kubernetes.io/c="unconfined", '
                          'seccomp.security.alpha.kubernetes.io/pod="unconfined"'))
    # sysctls: in spec order; the safe set grows with the version
    sysctls = {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"},
                                               {"name": "net.ipv4.tcp_rmem", "value": "4096 87380 6291456"},
                                               {"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]},
               "containers": [c()]}
    assert fails("sysctls", sysctls) == ("forbidden sysctls", "kernel.msgmax")
    assert fails("sysctls", sysctls, version=(1, 31)) == ("forbidden sysctls", "kernel.msgmax, net.ipv4.tcp_rmem")
    assert passes("sysctls", {"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "1"}]}})


def test_restricted_checks() -> None:
    # volume types allowlist
    assert fails("restrictedVolumes", {"volumes": [{"name": "a", "hostPath": {"path": "/"}},
                                                   {"name": "b", "nfs": {"server": "s", "path": "/"}},
                                                   {"name": "c", "image": {"reference": "x"}},
                                                   {"name": "ok", "emptyDir": {}}]}) == (
        "restricted volume types", 'volumes "a", "b", "c" use restricted volume types "hostPath", "nfs", "unknown"')
    assert fails("restrictedVolumes", REWRITER_POD_SPEC) == (
        "restricted volume types", 'volume "disk" uses restricted volume type "hostPath"')
    assert passes("restrictedVolumes", {"volumes": [
        {"name": "1", "configMap": {"name": "x"}}, {"name": "2", "secret": {"secretName": "x"}},
        {"name": "3", "emptyDir": {}}, {"name": "4", "projected": {"sources": []}}, {"name": "5", "downwardAPI": {}},
        {"name": "6", "csi": {"driver": "d"}}, {"name": "7", "persistentVolumeClaim": {"claimName": "x"}},
        {"name": "8", "ephemeral": {"volumeClaimTemplate": {}}}]})
    # allowPrivilegeEscalation
    assert fails("allowPrivilegeEscalation", {"containers": [c(), c("d", allowPrivilegeEscalation=True),
                                                             c("e", allowPrivilegeEscalation=False)]}) == (
        "allowPrivilegeEscalation != false",
        'containers "c", "d" must set securityContext.allowPrivilegeEscalation=false')
    assert passes("allowPrivilegeEscalation", CHART_POD_SPEC)
    assert passes("allowPrivilegeEscalation", {"os": {"name": "windows"}, "containers": [c()]})
    assert not passes("allowPrivilegeEscalation", {"os": {"name": "windows"}, "containers": [c()]}, version=(1, 24))
    # runAsNonRoot: pod or container level
    assert fails("runAsNonRoot", {"securityContext": {"runAsNonRoot": False},
                                  "containers": [c(runAsNonRoot=False), c("d")]}) == (
        "runAsNonRoot != true", 'pod and container "c" must not set securityContext.runAsNonRoot=false')
    assert fails("runAsNonRoot", {"containers": [c(), c("d", runAsNonRoot=True)]}) == (
        "runAsNonRoot != true", 'pod or container "c" must set securityContext.runAsNonRoot=true')
    assert passes("runAsNonRoot", {"securityContext": {"runAsNonRoot": True}, "containers": [c()]})
    assert passes("runAsNonRoot", {"containers": [c(runAsNonRoot=True)]})
    assert not passes("runAsNonRoot", {"hostUsers": False, "containers": [c()]})  # the relaxation's gate is off
    # runAsUser != 0
    assert fails("runAsUser", {"securityContext": {"runAsUser": 0}, "containers": [c(runAsUser=0)]}) == (
        "runAsUser=0", 'pod and container "c" must not set runAsUser=0')
    assert fails("runAsUser", REWRITER_POD_SPEC) == ("runAsUser=0", 'container "rewrite-cfg" must not set runAsUser=0')
    assert passes("runAsUser", CHART_POD_SPEC) and passes("runAsUser", {"containers": [c()]})
    # seccompProfile RuntimeDefault or Localhost, pod or container level
    assert fails("seccompProfile_restricted", {"containers": [c(), c("d", seccompProfile={"type": "Localhost"})]}) == (
        "seccompProfile",
        'pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"')
    assert fails("seccompProfile_restricted", {"securityContext": {"seccompProfile": {"type": "Unconfined"}},
                                               "containers": [c()]}) == (
        "seccompProfile", 'pod must not set securityContext.seccompProfile.type to "Unconfined"')
    assert passes("seccompProfile_restricted", {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                                                "containers": [c(), c("d", seccompProfile={"type": "Localhost"})]})
    # capabilities: drop ALL, add at most NET_BIND_SERVICE
    assert fails("capabilities_restricted", {"containers": [
        c(), c("d", capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "SYS_ADMIN", "CHOWN"]}),
        c("e", capabilities={"drop": ["NET_RAW"]})]}) == (
        "unrestricted capabilities",
        ('containers "c", "e" must set securityContext.capabilities.drop=["ALL"]; '
        'container "d" must not include "CHOWN", "SYS_ADMIN" in securityContext.capabilities.add'))
    assert passes("capabilities_restricted", {"containers": [c(capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})]})
    assert passes("capabilities_restricted", REWRITER_POD_SPEC)


def test_check_order_and_versions() -> None:
    assert psa.MAX_VERSION == (1, 32)
    baseline = ["appArmorProfile", "capabilities_baseline", "hostNamespaces", "hostPathVolumes", "hostPorts", "privileged",
                "procMount", "seLinuxOptions", "seccompProfile_baseline", "sysctls", "windowsHostProcess"]
    assert psa.check_ids("baseline") == baseline
    assert psa.check_ids("restricted") == [
        "appArmorProfile", "hostNamespaces", "hostPorts", "privileged", "procMount", "seLinuxOptions", "sysctls",
        "windowsHostProcess", "allowPrivilegeEscalation", "capabilities_restricted", "restrictedVolumes", "runAsNonRoot",
        "runAsUser", "seccompProfile_restricted"]
    assert psa.check_ids("privileged") == []
    assert psa.check_ids("restricted", (1, 99)) == psa.check_ids("restricted")
    v121 = psa.check_ids("restricted", (1, 21))
    assert "capabilities_baseline" in v121 and "capabilities_restricted" not in v121 and "runAsUser" not in v121
    assert "runAsUser" in psa.check_ids("restricted", (1, 23))
    v118 = psa.check_ids("restricted", (1, 18))
    assert "seccompProfile_baseline" in v118 and "seccompProfile_restricted" not in v118
    assert "allowPrivilegeEscalation" not in psa.check_ids("restricted", (1, 7))


def test_policy_from_labels() -> None:
    p, errors = psa.policy_to_evaluate({})
    assert p.fully_privileged() and not errors
    p, _ = psa.policy_to_evaluate({ENFORCE: "baseline"})
    assert (str(p.enforce), str(p.audit), str(p.warn)) == ("baseline:latest", "privileged:latest", "baseline:latest")
    p, _ = psa.policy_to_evaluate({ENFORCE: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.25",
                                   WARN: "restricted"})
    assert (str(p.enforce), str(p.warn)) == ("baseline:v1.25", "restricted:latest")
    p, _ = psa.policy_to_evaluate({ENFORCE: "restricted", "pod-security.kubernetes.io/enforce-version": "v1.22"})
    assert str(p.warn) == "restricted:v1.22"  # warn follows a stricter, explicitly set enforce level
    p, errors = psa.policy_to_evaluate({ENFORCE: "strict", "pod-security.kubernetes.io/warn-version": "1.25",
                                        WARN: "nope"})
    assert (str(p.enforce), str(p.warn)) == ("restricted:latest", "privileged:latest")
    assert [str(e) for e in errors] == [
        ('metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, '
        "baseline, restricted"),
        ('metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: "nope": must be one of privileged, '
        "baseline, restricted"),
        'metadata.labels[pod-security.kubernetes.io/warn-version]: Invalid value: "1.25": must be "latest" or "v1.x"']


def test_message_aggregates_in_check_order() -> None:
    spec = copy.deepcopy(REWRITER_POD_SPEC)
    spec["hostNetwork"] = True
    result = psa.aggregate(psa.evaluate(psa.LevelVersion("restricted"), {}, spec))
    assert result.forbidden_reason() == "host namespaces, restricted volume types, runAsNonRoot != true, runAsUser=0"
    assert result.forbidden_detail() == (
        'host namespaces (hostNetwork=true), restricted volume types (volume "disk" uses restricted volume type '
        '"hostPath"), runAsNonRoot != true (container "rewrite-cfg" must not set securityContext.runAsNonRoot=false), '
        'runAsUser=0 (container "rewrite-cfg" must not set runAsUser=0)')
    assert psa.aggregate(psa.evaluate(psa.LevelVersion("restricted"), {}, CHART_POD_SPEC)).allowed
    assert psa.aggregate(psa.evaluate(psa.LevelVersion("privileged"), {}, spec)).allowed


# ---------------------------------------------------------------------------- in the API server

BUSYBOX_DETAIL = (
    'allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), '
    'unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != '
    'true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" '
    'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
RESTRICTED_BUSYBOX = f'violates PodSecurity "restricted:latest": {BUSYBOX_DETAIL}'
WOULD_BUSYBOX = f'would violate PodSecurity "restricted:latest": {BUSYBOX_DETAIL}'


def header(text: str) -> str:
    """How the API server writes a warning (k8s.io/apiserver/pkg/endpoints/filters/warning.go)."""
    return '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'



async def test_enforce_refuses_with_kube_message(sim_api: ApiServer, kube_client: client.ApiClient) -> None:
    ns(sim_api, "locked", enforce="restricted")
    ns(sim_api, "base", enforce="baseline")
    core = client.CoreV1Api(kube_client)
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("locked", pod("web"))
    assert e.value.status == 403
    assert status_of(e.value) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": f'pods "web" is forbidden: {RESTRICTED_BUSYBOX}', "reason": "Forbidden",
                                  "details": {"name": "web", "kind": "pods"}, "code": 403}
    # the chart's pod passes restricted; the rewriter's passes neither level
    await core.create_namespaced_pod("locked", pod("bimguard", CHART_POD_SPEC))
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("base", pod("rw", REWRITER_POD_SPEC))
    assert status_of(e.value)["message"] == (
        'pods "rw" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "disk")')
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("locked", pod("rw", REWRITER_POD_SPEC))
    assert status_of(e.value)["message"] == (
        'pods "rw" is forbidden: violates PodSecurity "restricted:latest": restricted volume types (volume "disk" uses '
        'restricted volume type "hostPath"), runAsNonRoot != true (container "rewrite-cfg" must not set '
        'securityContext.runAsNonRoot=false), runAsUser=0 (container "rewrite-cfg" must not set runAsUser=0)')
    # unlabelled and privileged namespaces take anything
    await core.create_namespaced_pod("default", pod("rw", REWRITER_POD_SPEC))
    ns(sim_api, "priv", enforce="privileged")
    await core.create_namespaced_pod("priv", pod("rw", {**REWRITER_POD_SPEC, "hostPID": True}))
    names = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in sim_api.store.list("v1/pods")[0]}
    assert names == {("locked", "bimguard"), ("default", "rw"), ("priv", "rw")}


async def test_dry_run_is_refused_the_same_way(sim_api: ApiServer, kube_client: client.ApiClient) -> None:
    ns(sim_api, "locked", enforce="restricted")
    core = client.CoreV1Api(kube_client)
    with pytest.raises(ApiException) as real:
        await core.create_namespaced_pod("locked", pod("web"))
    with pytest.raises(ApiException) as dry:
        await core.create_namespaced_pod("locked", pod("web"), dry_run="All")
    assert status_of(dry.value) == status_of(real.value) and dry.value.status == 403
    created = await core.create_namespaced_pod("locked", pod("ok", CHART_POD_SPEC), dry_run="All")
    assert created.metadata.name == "ok" and sim_api.store.list("v1/pods", "locked")[0] == []


async def test_generated_name_and_version_label(sim_api: ApiServer, kube_client: client.ApiClient) -> None:
    ns(sim_api, "old", enforce="restricted", enforce_version="v1.22")
    body = pod("x", REWRITER_POD_SPEC)
    body["metadata"] = {"generateName": "rw-"}
    with pytest.raises(ApiException) as e:
        await client.CoreV1Api(kube_client).create_namespaced_pod("old", body)
    message = status_of(e.value)["message"]
    name = status_of(e.value)["details"]["name"]
    assert name.startswith("rw-") and len(name) == 8
    # v1.22 has no runAsUser check yet
    assert message == (f'pods "{name}" is forbidden: violates PodSecurity "restricted:v1.22": restricted volume types '
                       '(volume "disk" uses restricted volume type "hostPath"), runAsNonRoot != true (container '
                       '"rewrite-cfg" must not set securityContext.runAsNonRoot=false)')


async def test_warn_mode_headers(sim_api: ApiServer) -> None:
    ns(sim_api, "soft", enforce="baseline", warn="restricted")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{sim_api.url}/api/v1/namespaces/soft/pods", json=pod("web")) as r:
            assert r.status == 201
            assert r.headers.getall("Warning") == [header(WOULD_BUSYBOX)]
        # a pod that satisfies the warn level gets no warning; enforce still refuses
        async with s.post(f"{sim_api.url}/api/v1/namespaces/soft/pods", json=pod("chart", CHART_POD_SPEC)) as r:
            assert r.status == 201 and "Warning" not in r.headers
        async with s.post(f"{sim_api.url}/api/v1/namespaces/soft/pods",
                          json=pod("bad", {"containers": [c(privileged=True)]})) as r:
            assert r.status == 403 and "Warning" not in r.headers
        # dry run warns too
        async with s.post(f"{sim_api.url}/api/v1/namespaces/soft/pods?dryRun=All", json=pod("web2")) as r:
            assert r.status == 201 and len(r.headers.getall("Warning")) == 1
    # warn alone never refuses; its version is its own
    ns(sim_api, "warnonly", warn="restricted", warn_version="v1.22")
    async with aiohttp.ClientSession() as s, \
            s.post(f"{sim_api.url}/api/v1/namespaces/warnonly/pods", json=pod("rw", REWRITER_POD_SPEC)) as r:
        assert r.status == 201
        (warning,) = r.headers.getall("Warning")
        assert warning.startswith('299 - "would violate PodSecurity \\"restricted:v1.22\\": restricted volume types')


async def test_pod_updates(sim_api: ApiServer, kube_client: client.ApiClient) -> None:
    ns(sim_api, "app")
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_pod("app", pod("web"))
    _, _, headers = await core.patch_namespace_with_http_info("app", {"metadata": {"labels": {ENFORCE: "restricted"}}}, _content_type=MERGE)
    assert headers.getall("Warning") == [
        '299 - "existing pods in namespace \\"app\\" violate the new PodSecurity enforce level \\"restricted:latest\\""',
        '299 - "web: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"']
    # labels may change; the status subresource is not looked at; an image change is evaluated
    await core.patch_namespaced_pod("web", "app", {"metadata": {"labels": {"a": "b"}}}, _content_type=MERGE)
    current = await core.read_namespaced_pod("web", "app")
    await core.replace_namespaced_pod_status("web", "app", current)
    with pytest.raises(ApiException) as e:
        await core.patch_namespaced_pod("web", "app", {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}},
                                         _content_type=MERGE)
    assert status_of(e.value)["message"] == f'pods "web" is forbidden: {RESTRICTED_BUSYBOX}'


async def test_namespace_labels(sim_api: ApiServer, kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    bad = client.V1Namespace(metadata=client.V1ObjectMeta(name="bad", labels={ENFORCE: "strict"}))
    with pytest.raises(ApiException) as e:
        await core.create_namespace(bad)
    assert e.value.status == 422
    body = status_of(e.value)
    assert body["message"] == ('Namespace "bad" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: '
                               'Invalid value: "strict": must be one of privileged, baseline, restricted')
    assert body["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "metadata.labels[pod-security.kubernetes.io/enforce]",
                                          "message": 'Invalid value: "strict": must be one of privileged, baseline, restricted'}]
    ns(sim_api, "app")
    with pytest.raises(ApiException) as e:
        await core.patch_namespace("app", {"metadata": {"labels": {WARN: "loud", ENFORCE: "baseline"}}}, _content_type=MERGE)
    assert status_of(e.value)["message"] == (
        'Namespace "app" is invalid: metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: "loud": must be '
        "one of privileged, baseline, restricted")
    # errors that were there before do not block unrelated updates
    sim_api.store.create("v1/namespaces", {"metadata": {"name": "legacy", "labels": {ENFORCE: "strict"}}})
    await core.patch_namespace("legacy", {"metadata": {"labels": {"team": "a"}}}, _content_type=MERGE)
    # an invalid enforce level reads as restricted
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("legacy", pod("web"))
    assert status_of(e.value)["message"] == f'pods "web" is forbidden: {RESTRICTED_BUSYBOX}'


async def test_tightening_a_namespace_names_existing_pods(sim_api: ApiServer, kube_client: client.ApiClient) -> None:
    ns(sim_api, "app")
    for name, spec in (("b", {"containers": [c()]}), ("a", {"containers": [c()]}), ("c", {"containers": [c()]}),
                       ("rw", REWRITER_POD_SPEC), ("host", {"hostNetwork": True, "containers": [c()]}),
                       ("ok", CHART_POD_SPEC)):
        sim_api.store.create("v1/pods", pod(name, spec, namespace="app"))
    _, _, headers = await client.CoreV1Api(kube_client).patch_namespace_with_http_info(
        "app", {"metadata": {"labels": {ENFORCE: "baseline"}}}, _content_type=MERGE)
    assert headers.getall("Warning") == [
        '299 - "existing pods in namespace \\"app\\" violate the new PodSecurity enforce level \\"baseline:latest\\""',
        '299 - "host: host namespaces"', '299 - "rw: hostPath volumes"']
    _, _, headers = await client.CoreV1Api(kube_client).patch_namespace_with_http_info(
        "app", {"metadata": {"labels": {ENFORCE: "restricted"}}}, _content_type=MERGE)
    assert headers.getall("Warning")[1:] == [
        ('299 - "a (and 2 other pods): allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != '
        'true, seccompProfile"'),
        ('299 - "host: host namespaces, allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != '
        'true, seccompProfile"'),
        '299 - "rw: restricted volume types, runAsNonRoot != true, runAsUser=0"']
    # relaxing never warns
    _, _, headers = await client.CoreV1Api(kube_client).patch_namespace_with_http_info(
        "app", {"metadata": {"labels": {ENFORCE: "baseline"}}}, _content_type=MERGE)
    assert "Warning" not in headers


async def test_pod_controllers_only_warn(sim_api: ApiServer, kube_client: client.ApiClient) -> None:
    ns(sim_api, "locked", enforce="restricted")
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                  "spec": {"selector": {"matchLabels": {"app": "web"}},
                           "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [c()]}}}}
    _, code, headers = await client.AppsV1Api(kube_client).create_namespaced_deployment_with_http_info("locked", deployment)
    assert code == 201
    assert headers.getall("Warning") == [header(WOULD_BUSYBOX)]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "rw"},
           "spec": {"template": {"spec": REWRITER_POD_SPEC}}}
    _, code, headers = await client.BatchV1Api(kube_client).create_namespaced_job_with_http_info("locked", job)
    assert code == 201 and headers.getall("Warning")[0].startswith(
        '299 - "would violate PodSecurity \\"restricted:latest\\": restricted volume types')
    # the chart's pod template: no warning
    ok = copy.deepcopy(deployment)
    ok["metadata"]["name"] = "ok"
    ok["spec"]["template"]["spec"] = CHART_POD_SPEC
    _, _, headers = await client.AppsV1Api(kube_client).create_namespaced_deployment_with_http_info("locked", ok)
    assert "Warning" not in headers


async def test_exemptions(sim_api: ApiServer, kube_client: client.ApiClient) -> None:
    ns(sim_api, "locked", enforce="restricted")
    core = client.CoreV1Api(kube_client)
    sim_api.podsecurity.exemptions.usernames.append("kubernetes-admin")
    await core.create_namespaced_pod("locked", pod("a"))
    sim_api.podsecurity.exemptions = psa.Exemptions(runtime_classes=["kata"])
    await core.create_namespaced_pod("locked", pod("b", {"runtimeClassName": "kata", "containers": [c()]}))
    sim_api.podsecurity.exemptions = psa.Exemptions(namespaces=["locked"])
    await core.create_namespaced_pod("locked", pod("c"))
    sim_api.podsecurity.exemptions = psa.Exemptions()
    with pytest.raises(ApiException):
        await core.create_namespaced_pod("locked", pod("d"))
    # cluster-wide defaults (a PodSecurityConfiguration's `defaults`) apply to unlabelled namespaces
    sim_api.podsecurity.defaults = psa.Policy.from_config(enforce="baseline")
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("default", pod("rw", REWRITER_POD_SPEC))
    assert status_of(e.value)["message"].endswith('violates PodSecurity "baseline:latest": hostPath volumes (volume "disk")')


# ---------------------------------------------------------------------------- between the webhooks


@pytest.fixture
def pki() -> Pki:
    return Pki.new()


@pytest.fixture
async def hook(pki: Pki, tmp_path: Path) -> AsyncIterator[Webhook]:
    w = Webhook()
    await w.start(pki.serving(SVC_HOST, tmp_path))
    yield w
    await w.stop()


def pod_webhook(kind: str, name: str, ca_bundle: str, path: str) -> dict:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": f"{kind}WebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{"name": f"{name}.bimguard.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                          "failurePolicy": "Fail",
                          "clientConfig": {"service": {"namespace": "webhooks", "name": "hook", "path": path, "port": 443},
                                           "caBundle": ca_bundle},
                          "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                     "resources": ["pods"]}]}]}


async def test_runs_after_mutating_and_before_validating_webhooks(sim_api: ApiServer, hook: Webhook, pki: Pki,
                                                                  kube_client: client.ApiClient) -> None:
    sim_api.webhook_hosts[SVC_HOST] = ("127.0.0.1", hook.port)
    ns(sim_api, "locked", enforce="restricted")
    harden = [{"op": "add", "path": "/spec/securityContext", "value": CHART_POD_SPEC["securityContext"]},
              {"op": "add", "path": "/spec/containers/0/securityContext",
               "value": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]
    hook.behaviours["/mutate"] = lambda review: allow(review, harden)
    hook.behaviours["/validate"] = lambda review: {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": False,
                     "status": {"code": 403, "reason": "Forbidden", "message": "the validating webhook says no"}}}
    sim_api.store.create("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                         pod_webhook("Mutating", "harden", pki.ca_bundle, "/mutate"))
    sim_api.store.create("admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
                         pod_webhook("Validating", "deny", pki.ca_bundle, "/validate"))
    core = client.CoreV1Api(kube_client)
    # mutated into compliance, so PodSecurity passes it and the validating webhook gets to say no
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("locked", pod("web"))
    assert "the validating webhook says no" in status_of(e.value)["message"]
    assert [r["path"] for r in hook.reviews] == ["/mutate", "/validate"]
    # a pod the mutation cannot save is refused by PodSecurity before any validating webhook is called
    hook.reviews.clear()
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("locked", pod("rw", REWRITER_POD_SPEC))
    assert status_of(e.value)["message"].startswith('pods "rw" is forbidden: violates PodSecurity "restricted:latest": '
                                                    "restricted volume types")
    assert [r["path"] for r in hook.reviews] == ["/mutate"]


# ---------------------------------------------------------------------------- kubectl


@pytest.fixture
def kubectl(sim_kubeconfig: Path, tmp_path: Path) -> Kubectl:
    return Kubectl(sim_kubeconfig, tmp_path)


async def test_kubectl_shows_refusals_and_warnings(sim_api: ApiServer, kubectl: Kubectl) -> None:
    ns(sim_api, "locked", enforce="restricted")
    ns(sim_api, "soft", enforce="baseline", warn="restricted")
    kubectl.file("pod.yaml", json.dumps(pod("web")))
    code, out, err = await kubectl.run("apply", "-f", "pod.yaml", "-n", "locked", check=False)
    assert code == 1
    assert err == f'Error from server (Forbidden): error when creating "pod.yaml": pods "web" is forbidden: {RESTRICTED_BUSYBOX}\n'
    code, out, err = await kubectl.run("apply", "-f", "pod.yaml", "-n", "locked", "--dry-run=server", check=False)
    assert code == 1 and f'pods "web" is forbidden: {RESTRICTED_BUSYBOX}' in err
    code, out, err = await kubectl.run("apply", "-f", "pod.yaml", "-n", "soft")
    assert out == "pod/web created\n"
    assert err == f"Warning: {WOULD_BUSYBOX}\n"
    code, out, err = await kubectl.run("label", "ns", "soft", f"{ENFORCE}=bogus", "--overwrite", check=False)
    assert code == 1 and err == (
        'The Namespace "soft" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "bogus": '
        "must be one of privileged, baseline, restricted\n")
    code, out, err = await kubectl.run("label", "ns", "soft", f"{ENFORCE}=restricted", "--overwrite")
    assert out == "namespace/soft labeled\n"
    assert err == ('Warning: existing pods in namespace "soft" violate the new PodSecurity enforce level "restricted:latest"\n'
                   "Warning: web: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, "
                   "seccompProfile\n")
