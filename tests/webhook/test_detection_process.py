"""`bimguard webhook` as a process finds a collision the cluster already had (webhook/main.py wires
webhook/detection.py): the gauge on /metrics and one Warning Event per affected Longhorn Node.

As tests/webhook/test_process.py: `bimguard sim serve`, the chart's CRDs and webhook
configuration applied with kubectl, the webhook started with the chart's arguments. The collision
is recorded before the webhook runs (the configuration is not installed yet), as on a cluster
that had it before bimguard was installed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import yaml

from tests.webhook.test_process import BIN, ENV, NAMESPACE, REPO, free_port, kubectl, rendered, wait


def test_the_webhook_process_reports_an_existing_collision(tmp_path: Path) -> None:
    docs = rendered()
    mwc = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    svc = mwc["webhooks"][0]["clientConfig"]["service"]
    port, metrics_port = free_port(), free_port()
    kubeconfig, root = tmp_path / "sim.kubeconfig", tmp_path / "nodes"
    sim = subprocess.Popen([str(BIN / "bimguard"), "sim", "serve", "--nodes", "2", "--disks-per-node", "1",
                            "--seed", "5", "--time-scale", "0.01", "--kubeconfig", str(kubeconfig), "--root", str(root),
                            "--service", f"{svc['name']}.{svc['namespace']}.svc=127.0.0.1:{port}", "--no-kubelet"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    hook = None
    try:
        assert sim.stdout.readline().startswith("starting")  # type: ignore[union-attr]
        assert sim.stdout.readline().startswith("ready in")  # type: ignore[union-attr]

        # Before bimguard: a disk moved in from elsewhere, whose cfg shares worker-1's prefix.
        nodes = json.loads(kubectl(kubeconfig, "get", "nodes.longhorn.io", "-n", "longhorn-system", "-o", "json"))
        w1 = next(n for n in nodes["items"] if n["metadata"]["name"] == "worker-1")
        taken = next(iter(w1["status"]["diskStatus"].values()))["diskUUID"]
        moved_uuid = taken[:4] + "cafe-0000-4000-8000-000000000002"
        disk_dir = root / "worker-2" / "mnt" / "moved"
        disk_dir.mkdir(parents=True)
        (disk_dir / "longhorn-disk.cfg").write_text(json.dumps({"diskName": "moved", "diskUUID": moved_uuid,
                                                                 "diskDriver": ""}, separators=(",", ":")))
        kubectl(kubeconfig, "patch", "nodes.longhorn.io", "worker-2", "-n", "longhorn-system", "--type=merge", "-p",
                json.dumps({"spec": {"disks": {"moved": {"path": "/mnt/moved", "allowScheduling": True,
                                                         "diskType": "filesystem", "evictionRequested": False,
                                                         "storageReserved": 0, "tags": []}}}}))

        def recorded() -> bool:
            n2 = json.loads(kubectl(kubeconfig, "get", "nodes.longhorn.io", "worker-2", "-n", "longhorn-system",
                                    "-o", "json"))
            return (n2["status"].get("diskStatus") or {}).get("moved", {}).get("diskUUID") == moved_uuid

        wait(recorded, 30, "Longhorn to record the moved disk")

        # Now bimguard: CRDs, webhook configuration, the webhook process.
        kubectl(kubeconfig, "create", "namespace", NAMESPACE)
        crds = [str(p) for p in sorted((REPO / "charts/bimguard/crds").glob("*.yaml"))]
        kubectl(kubeconfig, "apply", *sum((["-f", c] for c in crds), []))
        kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(mwc))
        local = [a for a in args if not a.startswith(("--port=", "--metrics-port="))]
        hook = subprocess.Popen([str(BIN / "bimguard"), *local, "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
                                 f"--port={port}", f"--metrics-port={metrics_port}", "--shutdown-delay=0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**ENV, "POD_NAME": "bimguard-0"})

        def scraped() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            except OSError:
                return ""

        wait(lambda: 'bimguard_collision_groups{kind="prefix"} 1.0' in scraped(), 30, "the gauge to show the group")
        assert 'bimguard_collision_groups{kind="duplicate-uuid"} 0.0' in scraped()

        def warnings() -> list[dict]:
            events = json.loads(kubectl(kubeconfig, "get", "events", "-n", "longhorn-system", "-o", "json"))["items"]
            return [e for e in events if e.get("reason") == "DiskUUIDPrefixCollision"]

        wait(lambda: len(warnings()) == 2, 30, "one Warning on each affected node")
        assert sorted(e["involvedObject"]["name"] for e in warnings()) == ["worker-1", "worker-2"]
        assert all(moved_uuid in e["message"] and taken in e["message"] for e in warnings())

        hook.send_signal(signal.SIGTERM)
        out, _ = hook.communicate(timeout=30)
        assert hook.returncode == 0, out
        assert any('"collision groups: 1' in line for line in out.splitlines()), out[-2000:]
    finally:
        for proc in (hook, sim):
            if proc and proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=30)
