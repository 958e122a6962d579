"""An emulated cluster for the repair's end-to-end tests: API server, simulated Longhorn, kubelet,
bimguard's CRDs and namespace, and `bimguard repair` run as a real process against it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import yaml
from kubernetes_asyncio import client

from bimguard.kube import api_client
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.history import History
from bimguard.sim.longhorn.cluster import SimCluster

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "charts" / "bimguard" / "crds"
BIN = Path(sys.executable).parent
NS = "bimguard"
LH_NS = "longhorn-system"
RW = "bimguard.io/v1alpha1/diskrewrites"


@dataclass
class Env:
    api: ApiServer
    cluster: SimCluster
    kubeconfig: Path
    history: History
    root: Path
    runs: list[tuple[int, str, str]] = field(default_factory=list)

    async def repair(self, *args: str, timeout: float = 90.0, identity: str = "e2e") -> tuple[int, str, str]:
        """`bimguard repair ARGS` as a process: (exit code, stdout, stderr)."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "BIMGUARD_REPAIR_IDENTITY": identity}
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "bimguard"), "repair", "--namespace", NS, "--poll-interval", "0.2", "--pod-start-timeout", "20",
            "--lease-duration", "6", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
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


@contextlib.asynccontextmanager
async def repair_env(tmp_path: Path, *, nodes: int = 8, seed: int = 1, time_scale: float = 0.01,
                     longhorn_version: str = "v1.7.2") -> AsyncIterator[Env]:
    api = ApiServer(longhorn_version=longhorn_version)
    await api.start()
    history = History(api.store, "nodes", "replicas", "backingimages", "volumes", "volumeattachments")
    cluster = SimCluster(api, tmp_path / "hosts", nodes=nodes, disks_per_node=1, seed=seed, time_scale=time_scale,
                         longhorn_version=longhorn_version)
    try:
        await cluster.start()
        await cluster.wait_until_ready(60)
        await cluster.start_kubelet(images=["bimguard"])
        kubeconfig = tmp_path / "kubeconfig"
        api.kubeconfig(kubeconfig)
        ac = await api_client(str(kubeconfig))
        try:
            for crd in sorted(CRDS.glob("*.yaml")):
                await client.ApiextensionsV1Api(ac).create_custom_resource_definition(yaml.safe_load(crd.read_text()))
            await client.CoreV1Api(ac).create_namespace({"metadata": {"name": NS}})
        finally:
            await ac.close()
        yield Env(api, cluster, kubeconfig, history, tmp_path)
    finally:
        history.close()
        await cluster.stop()
        await api.stop()
