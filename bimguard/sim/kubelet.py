"""A simulated kubelet: runs pods bound to simulated nodes as local subprocesses.

It watches pods through the emulated API server and, for each pod whose ``spec.nodeName`` is one
of its nodes, runs the first container's ``command`` + ``args`` as a subprocess, then reports the
result in the pod status the way kubelet does (phase ``Succeeded``/``Failed``,
``containerStatuses[0].state.terminated.{exitCode,reason,message}`` with the message read from
``terminationMessagePath``).

Path mapping (there are no mount namespaces here): every volume mount gets a real directory --
``hostPath`` -> ``<root>/<node>/<hostPath.path>`` (the same layout the simulated Longhorn uses for
disks), ``emptyDir``/``projected`` -> a per-pod temporary directory, the termination message file
-> a per-pod file. Every occurrence of a mount path (or of ``terminationMessagePath``) as a whole
path -- at a path boundary, anywhere in an argument (so ``sh -c`` scripts work), an env value or
``workingDir`` -- is rewritten to the real path (longest mount first, one pass). The whole map is also passed as JSON in ``BIMGUARD_SIM_PATH_MAP`` (``{mountPath: realPath}``)
for programs that build paths themselves. ``PATH`` starts with the virtualenv's ``bin`` (so
``bimguard`` resolves), ``KUBECONFIG`` points at a kubeconfig for the emulated API server, and
``BIMGUARD_SIM_NODE`` names the node.

``activeDeadlineSeconds`` (real seconds: the process runs in real time) kills the process and fails
the pod with reason ``DeadlineExceeded``.

What kubelet would do that this does not: images (only the configured bimguard image is accepted
and nothing is pulled), restarts (``restartPolicy`` is ignored: one run), init/sidecar containers,
probes, resources, secrets/configMap volumes and env ``valueFrom`` other than ``fieldRef``. Such
pods are *refused*: phase ``Failed``, reason ``SimKubeletRefused`` and a message saying why, plus a
Warning Event. A ``hostPath`` of type ``Directory`` that does not exist keeps the pod ``Pending``
with a ``FailedMount`` Warning Event, like kubelet, and is retried. Pods on a node marked down are
never started. There is no kube-scheduler: a pod without ``nodeName`` that is pinned to one of
the kubelet's nodes (nodeSelector ``kubernetes.io/hostname`` or a required node affinity on it
with a single value) is bound by setting ``spec.nodeName``; any other unscheduled pod stays
Pending.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from bimguard.sim.clock import SimClock

log = logging.getLogger("bimguard.sim.kubelet")

REFUSED = "SimKubeletRefused"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096  # kubelet caps the message at 4096 bytes
SUPPORTED_VOLUMES = ("hostPath", "emptyDir", "projected")


class Refused(Exception):
    """The pod asks for something the simulated kubelet cannot honour."""


class MountPending(Exception):
    """A hostPath type check failed; kubelet keeps the pod Pending and retries."""


@dataclass
class PodPlan:
    """How one pod will run: argv, env, cwd and where its mounts really are."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    mounts: dict[str, str]  # mountPath -> real path
    termination_file: Path
    workdir: Path


def _repo_of(image: str) -> str:
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref.rsplit(":", 1)[0] if ":" in last else ref


def image_allowed(image: str, allowed: Iterable[str] | None) -> bool:
    """Exact match, same repository (any tag), or -- for a configured bare name such as
    ``bimguard`` -- the same last repository component (``ghcr.io/org/bimguard:0.1.0``)."""
    if allowed is None:
        return True
    repo = _repo_of(image)
    for a in allowed:
        if image == a or repo == _repo_of(a):
            return True
        if "/" not in a and repo.rsplit("/", 1)[-1] == _repo_of(a):
            return True
    return False


def rewrite(value: str, mounts: dict[str, str]) -> str:
    """Replace every occurrence of a mount path (as a whole path prefix) by its real path.

    One pass over an alternation sorted longest-first, so ``/data/sub`` wins over ``/data`` and a
    replaced real path is never rewritten again. A path matches only at a path boundary: not
    preceded by a path character, followed by the end, ``/`` or a separator.
    """
    if not mounts:
        return value
    keys = sorted({m.rstrip("/") or "/" for m in mounts}, key=len, reverse=True)
    real = {m.rstrip("/") or "/": r for m, r in mounts.items()}
    pattern = re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(k) for k in keys) + r")(?=$|[/\s\"';:,)=])")
    return pattern.sub(lambda m: real[m.group(1)].rstrip("/") or "/", value)


def plan_pod(pod: dict[str, Any], node_root: Path, workdir: Path, *, images: Iterable[str] | None,
             bin_dir: Path, kubeconfig: Path | None) -> PodPlan:
    """Pure-ish translation of a pod spec into a local process plan; raises Refused / MountPending."""
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    containers = spec.get("containers") or []
    if len(containers) != 1:
        raise Refused(f"pods with {len(containers)} containers are not supported (exactly 1 needed)")
    if spec.get("initContainers"):
        raise Refused("init containers are not supported")
    c = containers[0]
    image = c.get("image", "")
    if not image_allowed(image, images):
        raise Refused(f"image {image!r} is not the simulated bimguard image ({', '.join(images or [])})")
    command = list(c.get("command") or [])
    if not command:
        raise Refused("container has no command; the simulated kubelet knows no image entrypoints")
    mounts: dict[str, str] = {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for vm in c.get("volumeMounts") or []:
        v = volumes.get(vm.get("name"))
        if v is None:
            raise Refused(f"volumeMount {vm.get('name')!r} names no volume")
        kind = next((k for k in v if k != "name"), "")
        if kind not in SUPPORTED_VOLUMES:
            raise Refused(f"volume {v.get('name')!r} of type {kind!r} is not supported (only {', '.join(SUPPORTED_VOLUMES)})")
        if kind == "hostPath":
            hp = v["hostPath"]
            real = node_root / str(hp.get("path", "")).lstrip("/")
            htype = hp.get("type", "") or ""
            if htype == "Directory" and not real.is_dir():
                raise MountPending(
                    f'MountVolume.SetUp failed for volume "{v["name"]}" : hostPath type check failed: {hp.get("path")} is not a directory')
            if htype == "DirectoryOrCreate":
                real.mkdir(parents=True, exist_ok=True)
            if htype == "File" and not real.is_file():
                raise MountPending(
                    f'MountVolume.SetUp failed for volume "{v["name"]}" : hostPath type check failed: {hp.get("path")} is not a file')
        else:
            real = workdir / "volumes" / str(v["name"])
            real.mkdir(parents=True, exist_ok=True)
            if kind == "projected":
                (real / "namespace").write_text(meta.get("namespace", "default"))
                (real / "token").write_text("sim-token")
        if vm.get("subPath"):
            real = real / vm["subPath"]
        mounts[vm.get("mountPath", "")] = str(real)
    term_path = c.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    term_file = workdir / "termination-log"
    term_file.write_text("")
    mounts[term_path] = str(term_file)

    env: dict[str, str] = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(workdir),
        "HOSTNAME": meta.get("name", ""),
        "PYTHONUNBUFFERED": "1",
        "BIMGUARD_SIM_NODE": spec.get("nodeName", ""),
        "BIMGUARD_SIM_PATH_MAP": json.dumps(mounts, sort_keys=True),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    field_values = {
        "spec.nodeName": spec.get("nodeName", ""),
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    for e in c.get("env") or []:
        if "value" in e or "valueFrom" not in e:
            env[e["name"]] = rewrite(str(e.get("value", "")), mounts)
            continue
        ref = (e.get("valueFrom") or {}).get("fieldRef")
        if not ref or ref.get("fieldPath") not in field_values:
            raise Refused(f"env {e.get('name')!r}: only value and fieldRef ({', '.join(field_values)}) are supported")
        env[e["name"]] = field_values[ref["fieldPath"]]
    if c.get("envFrom"):
        raise Refused("envFrom is not supported")
    argv = [rewrite(a, mounts) for a in command + list(c.get("args") or [])]
    exe = shutil.which(argv[0], path=env["PATH"]) if not os.path.isabs(argv[0]) else argv[0]
    if exe is None:
        raise Refused(f"executable {argv[0]!r} not found on PATH ({bin_dir} first)")
    argv[0] = exe
    cwd = rewrite(c.get("workingDir") or "", mounts) or str(workdir)
    if not os.path.isdir(cwd):
        cwd = str(workdir)
    return PodPlan(argv, env, cwd, mounts, term_file, workdir)


HOSTNAME_LABEL = "kubernetes.io/hostname"


def wanted_hostname(pod: dict[str, Any]) -> str | None:
    """The one node an unscheduled pod is pinned to: nodeSelector ``kubernetes.io/hostname`` or a
    required node affinity ``kubernetes.io/hostname In [<one value>]``; else None."""
    spec = pod.get("spec") or {}
    sel = (spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL)
    if sel:
        return str(sel)
    req = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in req.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == HOSTNAME_LABEL and expr.get("operator") == "In" and len(expr.get("values") or []) == 1:
                return str(expr["values"][0])
    return None


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc._sim_deadline = True  # type: ignore[attr-defined]
        proc.kill()


def _run_key(pod: dict[str, Any]) -> tuple[str, str, str]:
    """(namespace, name, uid): a pod re-created under the same name is a new pod."""
    meta = pod["metadata"]
    return meta.get("namespace", ""), meta["name"], meta.get("uid", "")


@dataclass
class _Run:
    task: asyncio.Task[None]
    proc: asyncio.subprocess.Process | None = None


@dataclass
class SimKubelet:
    """Runs pods bound to ``nodes``; see the module docstring."""

    url: str
    root: Path
    nodes: set[str]
    images: list[str] | None = field(default_factory=lambda: ["bimguard"])
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    clock: SimClock = field(default_factory=SimClock)
    token: str | None = None
    down: set[str] = field(default_factory=set)
    _logs: dict[tuple[str, str], bytearray] = field(default_factory=dict, init=False)
    _runs: dict[tuple[str, str, str], _Run] = field(default_factory=dict, init=False)
    _pending_mount: set[tuple[str, str, str]] = field(default_factory=set, init=False)
    _binding: set[tuple[str, str]] = field(default_factory=set, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _tmp: Path | None = field(default=None, init=False)

    async def start(self) -> None:
        cfg = client.Configuration()
        cfg.host = self.url
        if self.token:
            cfg.api_key = {"BearerToken": self.token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        self._client = client.ApiClient(configuration=cfg)
        self.core = client.CoreV1Api(self._client)
        self._tmp = Path(tempfile.mkdtemp(prefix="bimguard-kubelet-"))
        self.kubeconfig = self._tmp / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "sim",
            "clusters": [{"name": "sim", "cluster": {"server": self.url}}],
            "users": [{"name": "sim", "user": {"token": self.token} if self.token else {}}],
            "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim"}}],
        }))
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="sim-kubelet-watch"))
        self._tasks.append(asyncio.create_task(self._resync_loop(), name="sim-kubelet-resync"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for key, run in list(self._runs.items()):
            if run.proc and run.proc.returncode is None:
                run.proc.kill()
            run.task.cancel()
        pending = set(self._tasks + [r.task for r in self._runs.values()])
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        self._tasks.clear()
        self._runs.clear()
        await self._client.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ public helpers
    def set_node_down(self, node: str, down: bool = True) -> None:
        (self.down.add if down else self.down.discard)(node)

    def logs(self, namespace: str, name: str) -> str:
        return bytes(self._logs.get((namespace, name), b"")).decode("utf-8", errors="replace")

    def running(self) -> list[tuple[str, str]]:
        return [(k[0], k[1]) for k, r in self._runs.items() if not r.task.done()]

    # ------------------------------------------------------------------ pod discovery
    async def _watch_loop(self) -> None:
        while True:
            try:
                w = watch.Watch()
                async for ev in w.stream(self.core.list_pod_for_all_namespaces, timeout_seconds=300):
                    pod = self._client.sanitize_for_serialization(ev["object"])
                    if ev["type"] == "DELETED":
                        self._forget(pod)
                    else:
                        self._consider(pod)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("pod watch ended: %s", exc)
            await self.clock.sleep(1.0)

    async def _resync_loop(self) -> None:
        while True:
            try:
                resp = await self.core.list_pod_for_all_namespaces(_preload_content=False)
                data = json.loads(await resp.read())
                for pod in data.get("items") or []:
                    self._consider(pod)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("pod resync failed: %s", exc)
            await self.clock.sleep(10.0)

    def _forget(self, pod: dict[str, Any]) -> None:
        key = _run_key(pod)
        run = self._runs.get(key)
        if run and run.proc and run.proc.returncode is None:
            run.proc.kill()

    def _consider(self, pod: dict[str, Any]) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            target = wanted_hostname(pod)
            key = (pod["metadata"].get("namespace", ""), pod["metadata"]["name"])
            if target in self.nodes and key not in self._binding:
                self._binding.add(key)
                self._tasks.append(asyncio.create_task(self._bind(pod, target), name=f"bind-{key[1]}"))
            return
        if node not in self.nodes or node in self.down:
            return
        if pod["metadata"].get("deletionTimestamp"):
            self._forget(pod)
            return
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        key = _run_key(pod)
        if phase != "Pending" or (key in self._runs and not self._runs[key].task.done()):
            return
        if key in self._runs and key not in self._pending_mount:
            return  # ran already (status write may be in flight)
        self._runs[key] = _Run(asyncio.create_task(self._run_pod(pod), name=f"pod-{key[0]}-{key[1]}"))

    async def _bind(self, pod: dict[str, Any], node: str) -> None:
        """Stand-in for kube-scheduler: set ``spec.nodeName`` of a pod pinned to one hostname."""
        ns, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
        try:
            for _ in range(20):
                cur = await self._read(ns, name)
                if cur is None or (cur.get("spec") or {}).get("nodeName"):
                    return
                cur["spec"]["nodeName"] = node
                try:
                    await self.core.replace_namespaced_pod(name, ns, cur)
                    return
                except ApiException as exc:
                    if exc.status != 409:
                        log.warning("could not bind pod %s/%s to %s: %s", ns, name, node, exc.reason)
                        return
        finally:
            self._binding.discard((ns, name))

    # ------------------------------------------------------------------ running
    async def _run_pod(self, pod: dict[str, Any]) -> None:
        key = _run_key(pod)
        node = pod["spec"]["nodeName"]
        assert self._tmp is not None
        workdir = self._tmp / f"{key[0]}_{key[1]}_{secrets.token_hex(3)}"
        workdir.mkdir(parents=True)
        try:
            plan = plan_pod(pod, self.root / node, workdir, images=self.images, bin_dir=self.bin_dir,
                            kubeconfig=self.kubeconfig)
        except MountPending as exc:
            if key not in self._pending_mount:
                self._pending_mount.add(key)
                await self._event(pod, "Warning", "FailedMount", str(exc))
            shutil.rmtree(workdir, ignore_errors=True)
            return  # the resync loop retries, like kubelet's volume manager
        except Refused as exc:
            self._pending_mount.discard(key)
            await self._event(pod, "Warning", REFUSED, str(exc))
            await self._set_terminated(pod, None, 128, REFUSED, str(exc), phase="Failed", refused=True)
            return
        self._pending_mount.discard(key)
        started = SimClock.now_rfc3339()
        await self._set_running(pod, started)
        buf = self._logs[(key[0], key[1])] = bytearray()  # logs of the latest pod with this name
        proc = await asyncio.create_subprocess_exec(
            *plan.argv, cwd=plan.cwd, env=plan.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
        )
        self._runs[key].proc = proc
        assert proc.stdout is not None
        deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        killer = None
        if deadline:
            # Real seconds, NOT scaled by the sim clock: the process runs in real time (a Python
            # start-up alone can exceed a scaled deadline). kubelet kills the pod and reports
            # reason DeadlineExceeded.
            killer = asyncio.get_running_loop().call_later(float(deadline), _kill, proc)
        while True:
            chunk = await proc.stdout.read(65536)
            if not chunk:
                break
            buf.extend(chunk)
        code = await proc.wait()
        timed_out = bool(getattr(proc, "_sim_deadline", False))
        if killer is not None:
            killer.cancel()
        if code < 0:
            code = 128 - code  # killed by signal N -> 128+N, as the container runtime reports
        if timed_out:
            await self._set_terminated(pod, started, code, "DeadlineExceeded",
                                       "Pod was active on the node longer than the specified deadline",
                                       phase="Failed", refused=False, pod_reason="DeadlineExceeded")
            shutil.rmtree(workdir, ignore_errors=True)
            return
        try:
            message = plan.termination_file.read_bytes()[:MAX_TERMINATION_MESSAGE].decode("utf-8", errors="replace")
        except OSError:
            message = ""
        reason = "Completed" if code == 0 else "Error"
        await self._set_terminated(pod, started, code, reason, message, phase="Succeeded" if code == 0 else "Failed")
        shutil.rmtree(workdir, ignore_errors=True)

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = await self.core.read_namespaced_pod(name, namespace, _preload_content=False)
            return json.loads(await resp.read())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _write_status(self, pod: dict[str, Any], mutate: Any) -> None:
        """Until it lands: kubelet's status manager keeps each pod's latest status and writes it
        again after a failed write (a 5xx, a throttled or dropped request), so a pod's outcome is
        never lost to a passing API error; a pod that is gone needs no status."""
        ns, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
        backoff = 0.05
        while True:
            try:
                cur = await self._read(ns, name)
                if cur is None:
                    return
                status = cur.setdefault("status", {})
                mutate(status, cur)
                await self.core.replace_namespaced_pod_status(name, ns, cur)
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status == 409:
                    await asyncio.sleep(0.01)
                    continue
                log.debug("status of pod %s/%s not written (%s); again in %.2fs", ns, name, exc.status, backoff)
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:  # unreachable for a moment
                log.debug("status of pod %s/%s not written (%s); again in %.2fs", ns, name, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _container_name(self, pod: dict[str, Any]) -> str:
        cs = (pod.get("spec") or {}).get("containers") or [{}]
        return cs[0].get("name", "main")

    async def _set_running(self, pod: dict[str, Any], started: str) -> None:
        cname = self._container_name(pod)
        image = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("image", "")

        def mutate(st: dict[str, Any], cur: dict[str, Any]) -> None:
            st.update(phase="Running", startTime=started, hostIP="127.0.0.1", podIP="127.0.0.1")
            st["conditions"] = [
                {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                {"type": "Ready", "status": "True", "lastTransitionTime": started},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            ]
            st["containerStatuses"] = [{
                "name": cname, "image": image, "imageID": "", "ready": True, "restartCount": 0, "started": True,
                "containerID": f"sim://{secrets.token_hex(8)}",
                "state": {"running": {"startedAt": started}}, "lastState": {},
            }]

        await self._write_status(pod, mutate)

    async def _set_terminated(self, pod: dict[str, Any], started: str | None, code: int, reason: str, message: str,
                              *, phase: str, refused: bool = False, pod_reason: str | None = None) -> None:
        cname = self._container_name(pod)
        image = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("image", "")
        finished = SimClock.now_rfc3339()

        def mutate(st: dict[str, Any], cur: dict[str, Any]) -> None:
            st["phase"] = phase
            if refused or pod_reason:
                st["reason"] = pod_reason or REFUSED
                st["message"] = message
            for c in st.get("conditions") or []:
                if c.get("type") in ("Ready", "ContainersReady"):
                    c.update(status="False", reason="PodCompleted", lastTransitionTime=finished)
            term: dict[str, Any] = {"exitCode": code, "reason": reason, "finishedAt": finished}
            if started:
                term["startedAt"] = started
            if message:
                term["message"] = message
            prev = (st.get("containerStatuses") or [{}])[0]
            st["containerStatuses"] = [{
                "name": cname, "image": image, "imageID": "", "ready": False, "restartCount": 0, "started": False,
                "containerID": prev.get("containerID", ""), "state": {"terminated": term}, "lastState": {},
            }]

        await self._write_status(pod, mutate)

    async def _event(self, pod: dict[str, Any], etype: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        now = SimClock.now_rfc3339()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta.get("namespace", "default")},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta.get("namespace", ""), "uid": meta.get("uid", "")},
            "reason": reason, "message": message, "type": etype,
            "source": {"component": "kubelet", "host": (pod.get("spec") or {}).get("nodeName", "")},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self.core.create_namespaced_event(meta.get("namespace", "default"), body)
        except Exception as exc:  # best effort, like kubelet's recorder
            log.warning("failed to record pod event: %s", exc)
