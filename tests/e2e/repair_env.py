"""An emulated cluster for the repair's end-to-end tests: API server, simulated Longhorn, kubelet,
bimguard's CRDs and namespaces, and `bimguard repair` run as a real process against it, its
on-node pods in a namespace of their own (REWRITER_NS), as the chart runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import parse_qsl

import yaml
from kubernetes_asyncio import client

from bimguard.kube import api_client
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.authz import request_attributes
from bimguard.sim.history import History
from bimguard.sim.longhorn.cluster import SimCluster
from jobs.repair_runner import Runner

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "charts" / "bimguard" / "crds"
BIN = Path(sys.executable).parent
NS = "bimguard"
REWRITER_NS = "bimguard-rewriter"
LH_NS = "longhorn-system"
RW = "bimguard.io/v1alpha1/diskrewrites"
JOB_USER = "system:serviceaccount:bimguard:bimguard-repair"


@dataclass
class Env:
    api: ApiServer
    cluster: SimCluster
    kubeconfig: Path
    history: History
    root: Path
    job_kubeconfig: Path
    runs: list[tuple[int, str, str]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    async def repair(self, *args: str, timeout: float = 90.0, identity: str = "e2e", kill_after_writes: int = 0,
                     kill_after_seconds: float = 0.0, stop_signal: int = signal.SIGKILL) -> tuple[int, str, str]:
        """`bimguard repair ARGS` as a process, authenticated as its own service account:
        (exit code, stdout, stderr). With `kill_after_writes` it gets SIGKILL right after that many
        of its writes succeeded (a step boundary); with `kill_after_seconds`, after that long
        (wherever it is, mostly in a wait). A killed run's exit code is -9; `stop_signal` sends
        another signal instead (SIGTERM: what Kubernetes sends when the Job's pod is deleted)."""
        env = {**os.environ, "KUBECONFIG": str(self.job_kubeconfig), "BIMGUARD_REPAIR_IDENTITY": identity}
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "bimguard"), "repair", "--namespace", NS, "--rewriter-namespace", REWRITER_NS,
            "--poll-interval", "0.2", "--pod-start-timeout", "10",
            "--pod-deadline", "10", "--lease-duration", "6", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        writes = 0

        def count(method: str, path: str, status: int, user: str) -> None:
            nonlocal writes
            # Access reviews are questions, not writes: counting them would spend every kill on the preflight.
            if (user == JOB_USER and method not in ("GET", "HEAD") and status < 400 and "dryRun" not in path
                    and "/authorization.k8s.io/" not in path):
                writes += 1
                if writes == kill_after_writes and proc.returncode is None:
                    proc.send_signal(stop_signal)

        sent = {"reads": 0, "writes": 0, "checks": 0}

        def tally(method: str, path: str, status: int, user: str) -> None:
            if user == JOB_USER:
                kind = ("reads" if method in ("GET", "HEAD") else
                        "checks" if "/authorization.k8s.io/" in path or "dryRun=" in path else "writes")
                sent[kind] += 1

        self.api.request_listeners.append(tally)
        if kill_after_writes:
            self.api.request_listeners.append(count)
        timer = asyncio.get_running_loop().call_later(kill_after_seconds, proc.send_signal, stop_signal) if kill_after_seconds else None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        finally:
            if timer is not None:
                timer.cancel()
            self.api.request_listeners.remove(tally)
            if kill_after_writes:
                self.api.request_listeners.remove(count)
        self.sent = sent  # what the API server saw of this run, by kind
        result = (proc.returncode or 0, out.decode(), err.decode())
        self.runs.append(result)
        return result

    async def scan(self) -> tuple[int, dict[str, Any]]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = await asyncio.create_subprocess_exec(str(BIN / "bimguard"), "scan", "-o", "json", stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, json.loads(out)

    def records(self) -> list[dict[str, Any]]:
        return self.api.store.list(RW, NS)[0]

    def record_of(self, node: str, disk: str) -> dict[str, Any] | None:
        return next((r for r in self.records() if r["spec"]["node"] == node and r["spec"]["disk"] == disk
                     and r["spec"]["origin"] == "job"), None)

    def node(self, name: str) -> dict[str, Any]:
        return self.api.store.get("longhorn.io/v1beta2/nodes", LH_NS, name)

    def objects(self, plural: str) -> list[dict[str, Any]]:
        return self.api.store.list(f"longhorn.io/v1beta2/{plural}", LH_NS)[0]


def env_runs(env: Env) -> list[tuple[int, str, str]]:
    return env.runs


@contextlib.asynccontextmanager
async def repair_env(tmp_path: Path, *, nodes: int = 8, seed: int = 1, time_scale: float = 0.01,
                     longhorn_version: str = "v1.7.2") -> AsyncIterator[Env]:
    api = ApiServer(longhorn_version=longhorn_version)
    await api.start()
    history = History(api.store, "nodes", "replicas", "backingimages", "volumes", "volumeattachments", "pods",
                      "prefixclaims")
    cluster = SimCluster(api, tmp_path / "hosts", nodes=nodes, disks_per_node=1, seed=seed, time_scale=time_scale,
                         longhorn_version=longhorn_version)
    try:
        await cluster.start()
        await cluster.wait_until_ready(60)
        await cluster.start_kubelet(images=["bimguard"])
        kubeconfig = tmp_path / "kubeconfig"
        api.kubeconfig(kubeconfig)
        api.add_user("repair-token", JOB_USER)
        job_kubeconfig = tmp_path / "job.kubeconfig"
        api.kubeconfig(job_kubeconfig, token="repair-token")
        ac = await api_client(str(kubeconfig))
        try:
            for crd in sorted(CRDS.glob("*.yaml")):
                await client.ApiextensionsV1Api(ac).create_custom_resource_definition(yaml.safe_load(crd.read_text()))
            await client.CoreV1Api(ac).create_namespace({"metadata": {"name": NS}})
            await client.CoreV1Api(ac).create_namespace({"metadata": {"name": REWRITER_NS}})
        finally:
            await ac.close()
        calls: set[tuple[str, str, str, str, str]] = set()

        def note(method: str, path: str, status: int, user: str) -> None:
            if user == JOB_USER:
                where, _, query = path.partition("?")
                a = request_attributes(method, where, dict(parse_qsl(query)), {"username": user})
                resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
                where = {LH_NS: "lh", NS: "own", REWRITER_NS: "pods"}.get(a.namespace, a.namespace)
                calls.add((a.verb, a.group, resource, where, a.name))

        api.request_listeners.append(note)
        yielded = Env(api, cluster, kubeconfig, history, tmp_path, job_kubeconfig)
        yield yielded
        # Every request the runs sent is one Runner.PERMISSIONS lists (what its preflight asks and the
        # chart grants); access reviews need no grant (system:basic-user).
        unlisted = sorted(c for c in calls if c[1] != "authorization.k8s.io" and not any(
            p[:4] == c[:4] and p[4] in ("", c[4]) for p in Runner.PERMISSIONS))
        assert unlisted == [], f"requests the repair sent that Runner.PERMISSIONS does not list: {unlisted}"
        # No key material and no token in anything a run printed, progress lines and errors alike
        # (the in-process loggers: tests/e2e/conftest.py).
        from tests.e2e.conftest import leaks

        printed = [found for _, out, err in env_runs(yielded) for found in leaks(out + err, {"repair-token", "sim-token"})]
        assert printed == [], printed
    finally:
        history.close()
        await cluster.stop()
        await api.stop()
