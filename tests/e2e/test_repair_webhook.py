"""The webhook and a repair at the same time: new colliding disks arrive (some aimed at the very
prefixes the Job claims) while the Job regenerates old ones. Prefix claims keep every allocation
unique, and each process drives only its own records."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from bimguard.sim.scenarios import plant
from tests.e2e.test_prevention import NAMESPACE, one_webhook, phase, running

BIN = Path(sys.executable).parent
JOB_USER = "system:serviceaccount:bimguard:bimguard-repair"


async def test_webhook_and_repair_together_never_share_a_prefix_or_a_record(tmp_path: Path) -> None:
    async with running(tmp_path, nodes=10, seed=17) as env:
        c = env.cluster
        await plant(c, ["empty", "empty", "data", "stuck-replica"])  # before bimguard was installed
        await one_webhook(env)
        env.api.add_user("repair-token", JOB_USER)
        job_config = tmp_path / "job.kubeconfig"
        env.api.kubeconfig(job_config, token="repair-token")
        foreign: list[str] = []

        def watch(method: str, path: str, status: int, user: str) -> None:
            if method not in ("GET", "HEAD") and status < 400 and "/diskrewrites/j-" in path and user != JOB_USER:
                foreign.append(f"{user} {method} {path}")
            if method not in ("GET", "HEAD") and status < 400 and "/diskrewrites/r-" in path and user == JOB_USER:
                foreign.append(f"{user} {method} {path}")

        env.api.request_listeners.append(watch)
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "bimguard"), "repair", "--apply", "--evict", "--namespace", NAMESPACE, "--poll-interval", "0.2",
            "--pod-start-timeout", "10", "--pod-deadline", "10",
            env={**os.environ, "KUBECONFIG": str(job_config), "BIMGUARD_REPAIR_IDENTITY": "job"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        added = 0
        while proc.returncode is None and added < 12:
            claims = env.api.store.list("bimguard.io/v1alpha1/prefixclaims", NAMESPACE)[0]
            job_prefixes = [x["metadata"]["name"] for x in claims if x["spec"].get("record", "").startswith("j-")]
            existing = [env.status_uuid(n, d)[:4] for n, d in env.spec_disks() if env.status_uuid(n, d)]
            target = (job_prefixes or existing)[added % len(job_prefixes or existing)]
            node = c.node_names[added % len(c.node_names)]
            await c.add_disk(node, f"new-{added}", force_uuid=target)
            added += 1
            await asyncio.sleep(0.3)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, (out.decode(), err.decode()[-2000:])
        await c.wait_until_ready(60)
        for n, d in env.spec_disks():
            if d.startswith("new-"):
                await env.settled(n, d, timeout=30)
        prefixes = [env.status_uuid(n, d)[:4] for n, d in env.spec_disks()]
        assert len(prefixes) == len(set(prefixes)), "two disks share a prefix"
        assert not foreign, foreign  # neither process wrote the other's records
        recs = env.records()
        assert all(phase(r) == "Done" for r in recs if r["spec"]["origin"] == "job")
        assert any(r["spec"]["origin"] == "webhook" and phase(r) == "Done" for r in recs)
        for n, d in env.spec_disks():
            assert env.agrees(n, d), (n, d)
