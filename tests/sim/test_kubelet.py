"""The simulated kubelet against the emulated API server: real subprocesses, real directories."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from bimguard.sim.apiserver import ApiServer
from bimguard.sim.clock import SimClock
from bimguard.sim.kubelet import Refused, SimKubelet, plan_pod

PODS = "v1/pods"
IMAGE = "bimguard:dev"


@pytest.fixture
async def kubelet(api: ApiServer, tmp_path: Path) -> AsyncIterator[SimKubelet]:
    k = SimKubelet(api.url, tmp_path / "hosts", {"worker-1", "worker-2"}, images=["bimguard"], clock=SimClock(0.01))
    await k.start()
    yield k
    await k.stop()


def _pod(name: str, command: list[str], *, node: str = "worker-1", image: str = IMAGE,
         volumes: list[dict] | None = None, mounts: list[dict] | None = None, **container: Any) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, "command": command,
                            "volumeMounts": mounts or [], **container}],
            "volumes": volumes or [],
        },
    }


async def _wait_phase(api: ApiServer, name: str, phases: set[str], timeout: float = 15) -> dict:
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        pod = api.store.get(PODS, "default", name)
        if (pod.get("status") or {}).get("phase") in phases:
            return pod
        if loop.time() > end:
            raise TimeoutError(f"pod {name} phase {(pod.get('status') or {}).get('phase')!r}")
        await asyncio.sleep(0.05)


def _host_disk(tmp_path: Path, node: str = "worker-1") -> Path:
    d = tmp_path / "hosts" / node / "var" / "lib" / "longhorn"
    d.mkdir(parents=True, exist_ok=True)
    return d


HOST_VOL = [{"name": "disk", "hostPath": {"path": "/var/lib/longhorn/", "type": "Directory"}}]
HOST_MOUNT = [{"name": "disk", "mountPath": "/host"}]


async def test_runs_command_with_hostpath_mapping_and_reports_failure(api: ApiServer, kubelet: SimKubelet, tmp_path: Path) -> None:
    d = _host_disk(tmp_path)
    (d / "longhorn-disk.cfg").write_text('{"diskName":"d","diskUUID":"u","diskDriver":""}')
    api.store.create(PODS, _pod("fail", ["sh", "-c", "cat /host/longhorn-disk.cfg > /dev/termination-log; echo hello; exit 3"],
                                volumes=HOST_VOL, mounts=HOST_MOUNT))
    pod = await _wait_phase(api, "fail", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Failed"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert term["message"] == '{"diskName":"d","diskUUID":"u","diskDriver":""}'
    assert kubelet.logs("default", "fail") == "hello\n"


async def test_success_writes_through_the_mapping_and_bimguard_is_on_path(api: ApiServer, kubelet: SimKubelet, tmp_path: Path) -> None:
    d = _host_disk(tmp_path, "worker-2")
    script = "import os,shutil,sys; open('/host/out.txt','w').write(shutil.which('bimguard') or ''); print(os.environ['BIMGUARD_SIM_NODE'])"
    api.store.create(PODS, _pod("ok", ["python", "-c", script], node="worker-2", volumes=HOST_VOL, mounts=HOST_MOUNT))
    pod = await _wait_phase(api, "ok", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded", kubelet.logs("default", "ok")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert (d / "out.txt").read_text() == str(Path(sys.executable).parent / "bimguard")
    assert kubelet.logs("default", "ok") == "worker-2\n"


async def test_a_pods_outcome_survives_failing_status_writes(api: ApiServer, kubelet: SimKubelet, tmp_path: Path) -> None:
    """Kubelet's status manager writes a pod's latest status again after a failed write: with the
    API server failing the first status writes (the Running one, then the terminated one), the pod
    still runs and its outcome still lands."""
    api.faults.error_rate(1.0, 503, verbs="update", resource=PODS, subresource="status", count=4)
    api.store.create(PODS, _pod("flaky", ["sh", "-c", "echo ran; exit 0"]))
    pod = await _wait_phase(api, "flaky", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded" and kubelet.logs("default", "flaky") == "ran\n"
    assert api.faults.injected == 4


@pytest.mark.parametrize("name,pod,why", [
    ("img", _pod("img", ["true"], image="busybox:1.36"), "is not the simulated bimguard image"),
    ("nocmd", _pod("nocmd", []), "no command"),
    ("cm", _pod("cm", ["true"], volumes=[{"name": "c", "configMap": {"name": "x"}}], mounts=[{"name": "c", "mountPath": "/c"}]),
     "of type 'configMap' is not supported"),
])
async def test_refused_pods_fail_with_a_reason(api: ApiServer, kubelet: SimKubelet, name: str, pod: dict, why: str) -> None:
    api.store.create(PODS, pod)
    got = await _wait_phase(api, name, {"Failed", "Succeeded", "Running"})
    assert got["status"]["phase"] == "Failed"
    assert got["status"]["reason"] == "SimKubeletRefused" and why in got["status"]["message"]
    assert got["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "SimKubeletRefused"
    events = [e for e in api.store.list("v1/events", "default")[0] if e["involvedObject"]["name"] == name]
    assert any(e["reason"] == "SimKubeletRefused" and e["type"] == "Warning" for e in events)


async def test_missing_hostpath_directory_keeps_pod_pending_until_it_exists(api: ApiServer, kubelet: SimKubelet, tmp_path: Path) -> None:
    import asyncio

    api.store.create(PODS, _pod("wait", ["true"], volumes=HOST_VOL, mounts=HOST_MOUNT))
    await asyncio.sleep(0.5)
    pod = api.store.get(PODS, "default", "wait")
    assert (pod.get("status") or {}).get("phase") in (None, "Pending")
    events = [e for e in api.store.list("v1/events", "default")[0] if e["involvedObject"]["name"] == "wait"]
    assert any(e["reason"] == "FailedMount" and "is not a directory" in e["message"] for e in events)
    _host_disk(tmp_path)
    pod = await _wait_phase(api, "wait", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded"


async def test_pods_on_a_down_node_never_run(api: ApiServer, kubelet: SimKubelet, tmp_path: Path) -> None:
    import asyncio

    _host_disk(tmp_path)
    kubelet.set_node_down("worker-1")
    api.store.create(PODS, _pod("down", ["true"]))
    api.store.create(PODS, _pod("elsewhere", ["true"], node="worker-3"))  # not our node at all
    await asyncio.sleep(0.5)
    for name in ("down", "elsewhere"):
        assert (api.store.get(PODS, "default", name).get("status") or {}).get("phase") in (None, "Pending")
    kubelet.set_node_down("worker-1", False)
    assert (await _wait_phase(api, "down", {"Succeeded", "Failed"}))["status"]["phase"] == "Succeeded"


def test_plan_maps_env_workdir_and_termination_path(tmp_path: Path) -> None:
    (tmp_path / "node" / "data").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    pod = _pod("p", ["python", "-c", "pass"], volumes=[{"name": "v", "hostPath": {"path": "/data"}},
                                                      {"name": "e", "emptyDir": {}}],
               mounts=[{"name": "v", "mountPath": "/mnt/v"}, {"name": "e", "mountPath": "/scratch"}],
               env=[{"name": "CFG", "value": "/mnt/v/longhorn-disk.cfg"},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
               workingDir="/scratch", terminationMessagePath="/tmp/msg")
    plan = plan_pod(pod, tmp_path / "node", work, images=["bimguard"], bin_dir=Path(sys.executable).parent, kubeconfig=None)
    assert plan.env["CFG"] == str(tmp_path / "node" / "data" / "longhorn-disk.cfg")
    assert plan.env["NODE"] == "worker-1"
    assert plan.cwd == str(work / "volumes" / "e")
    assert json.loads(plan.env["BIMGUARD_SIM_PATH_MAP"])["/tmp/msg"] == str(plan.termination_file)
    bad = _pod("p", ["true"], env=[{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
    with pytest.raises(Refused):
        plan_pod(bad, tmp_path / "node", work, images=["bimguard"], bin_dir=Path(sys.executable).parent, kubeconfig=None)


def test_image_matching() -> None:
    from bimguard.sim.kubelet import image_allowed

    assert image_allowed("bimguard:dev", ["bimguard"])
    assert image_allowed("ghcr.io/org/bimguard:0.1.0", ["bimguard"])
    assert image_allowed("reg:5000/bimguard@sha256:abc", ["bimguard"])
    assert not image_allowed("ghcr.io/org/bimguard-evil:1", ["bimguard"])
    assert not image_allowed("busybox", ["bimguard"])
    assert image_allowed("ghcr.io/org/bimguard:2", ["ghcr.io/org/bimguard:1"])
    assert not image_allowed("docker.io/other/bimguard:2", ["ghcr.io/org/bimguard:1"])


async def test_pod_pinned_by_hostname_is_bound_and_run(api: ApiServer, kubelet: SimKubelet) -> None:
    import asyncio

    sel = _pod("sel", ["true"], node="")
    del sel["spec"]["nodeName"]
    sel["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "worker-2"}
    aff = _pod("aff", ["true"], node="")
    del aff["spec"]["nodeName"]
    aff["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["worker-1"]}]}]}}}
    free = _pod("free", ["true"], node="")
    del free["spec"]["nodeName"]
    for p in (sel, aff, free):
        api.store.create(PODS, p)
    for name, node in (("sel", "worker-2"), ("aff", "worker-1")):
        got = await _wait_phase(api, name, {"Succeeded", "Failed"})
        assert got["status"]["phase"] == "Succeeded" and got["spec"]["nodeName"] == node
    await asyncio.sleep(0.2)
    assert not api.store.get(PODS, "default", "free")["spec"].get("nodeName")


async def test_recreated_pod_with_the_same_name_runs_again(api: ApiServer, kubelet: SimKubelet) -> None:
    import asyncio

    api.store.create(PODS, _pod("again", ["sh", "-c", "echo first"]))
    assert (await _wait_phase(api, "again", {"Succeeded", "Failed"}))["status"]["phase"] == "Succeeded"
    api.store.delete(PODS, "default", "again")
    await asyncio.sleep(0.1)
    api.store.create(PODS, _pod("again", ["sh", "-c", "echo second; exit 1"]))
    assert (await _wait_phase(api, "again", {"Failed"}))["status"]["phase"] == "Failed"
    assert kubelet.logs("default", "again") == "second\n"


async def test_active_deadline_kills_the_pod(api: ApiServer, kubelet: SimKubelet) -> None:
    pod = _pod("slow", ["sleep", "30"])
    pod["spec"]["activeDeadlineSeconds"] = 1  # real seconds
    api.store.create(PODS, pod)
    got = await _wait_phase(api, "slow", {"Succeeded", "Failed"}, timeout=10)
    assert got["status"]["phase"] == "Failed" and got["status"]["reason"] == "DeadlineExceeded"
    term = got["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["reason"] == "DeadlineExceeded" and term["exitCode"] == 137
