"""examples/scan-role.yaml grants exactly what a live `bimguard scan` sends: every request of a real
scan of the emulated cluster (as its own user) is allowed by the Role, and the Role grants nothing
that scan did not use."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import yaml

from bimguard.sim.authz import request_attributes
from bimguard.sim.serve import simulated_cluster
from tests.chart.rbac import rule_allows

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USER = "alice"


async def test_the_example_role_is_what_a_live_scan_sends(tmp_path: Path) -> None:
    role = yaml.safe_load((REPO / "examples" / "scan-role.yaml").read_text())
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "longhorn-system"
    sent: set[tuple[str, str, str, str]] = set()

    def note(method: str, path: str, status: int, user: str) -> None:
        if user == USER:
            where, _, query = path.partition("?")
            a = request_attributes(method, where, dict(p.split("=", 1) for p in query.split("&") if "=" in p),
                                   {"username": user})
            sent.add((a.verb, a.group, a.resource, a.namespace))

    async with simulated_cluster(nodes=2, disks_per_node=1, seed=3, time_scale=0.02, root=tmp_path / "n") as (api, _):
        api.add_user("alice-token", USER)
        api.kubeconfig(tmp_path / "kc", token="alice-token")
        api.request_listeners.append(note)
        proc = await asyncio.to_thread(
            subprocess.run, [str(BIN / "bimguard"), "scan", "--kubeconfig", str(tmp_path / "kc")],
            capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    assert sent, "the scan sent nothing as its user"
    assert all(ns == "longhorn-system" for *_, ns in sent)
    denied = [s for s in sent if not any(rule_allows(r, s[0], s[1], s[2]) for r in role["rules"])]
    assert denied == []
    granted = {(v, g, res) for r in role["rules"] for v in r["verbs"] for g in r["apiGroups"] for res in r["resources"]}
    assert granted == {s[:3] for s in sent}  # nothing unused
