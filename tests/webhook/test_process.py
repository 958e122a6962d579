"""`bimguard webhook` as a process against `bimguard sim serve`, installed from the Helm chart.

Nothing in-process: the emulator, the webhook and kubectl are separate processes talking real
HTTP(S), the way an operator would run them: the chart is rendered with Helm's SDK, its CRDs and
MutatingWebhookConfiguration are applied with kubectl, and the webhook is started with the
arguments the chart's Deployment gives it (plus --kubeconfig and local ports).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
RELEASE = NAMESPACE = "bimguard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), *args], input=stdin,
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    return r.stdout


def rendered() -> list[dict]:
    with helm.Chart.load(REPO / "charts" / "bimguard") as chart:
        out = chart.render({}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def add_moved_disk(kubeconfig: Path, root: Path, uuid_tail: str) -> tuple[str, str, Path]:
    """A disk `moved` on worker-2 that arrives with an existing cfg whose UUID shares worker-1's
    prefix (moved from elsewhere), added to the Longhorn Node's spec with kubectl: (worker-1's
    UUID, the moved disk's, its cfg file)."""
    nodes = json.loads(kubectl(kubeconfig, "get", "nodes.longhorn.io", "-n", "longhorn-system", "-o", "json"))
    w1 = next(n for n in nodes["items"] if n["metadata"]["name"] == "worker-1")
    taken = next(iter(w1["status"]["diskStatus"].values()))["diskUUID"]
    moved_uuid = f"{taken[:4]}cafe-{uuid_tail}"
    disk_dir = root / "worker-2" / "mnt" / "moved"
    disk_dir.mkdir(parents=True)
    cfg = disk_dir / "longhorn-disk.cfg"
    cfg.write_text(json.dumps({"diskName": "moved", "diskUUID": moved_uuid, "diskDriver": ""}, separators=(",", ":")))
    kubectl(kubeconfig, "patch", "nodes.longhorn.io", "worker-2", "-n", "longhorn-system", "--type=merge", "-p",
            json.dumps({"spec": {"disks": {"moved": {"path": "/mnt/moved", "allowScheduling": True,
                                                     "diskType": "filesystem", "evictionRequested": False,
                                                     "storageReserved": 0, "tags": []}}}}))
    return taken, moved_uuid, cfg


def test_webhook_process_prevents_a_collision_end_to_end(tmp_path: Path):
    docs = rendered()
    mwc = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    svc = mwc["webhooks"][0]["clientConfig"]["service"]
    port, metrics_port = free_port(), free_port()
    kubeconfig, root = tmp_path / "sim.kubeconfig", tmp_path / "nodes"
    sim = subprocess.Popen([str(BIN / "bimguard"), "sim", "serve", "--nodes", "2", "--disks-per-node", "1",
                            "--seed", "4", "--time-scale", "0.01", "--kubeconfig", str(kubeconfig), "--root", str(root),
                            "--service", f"{svc['name']}.{svc['namespace']}.svc=127.0.0.1:{port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    hook = None
    try:
        assert sim.stdout.readline().startswith("starting")  # type: ignore[union-attr]
        assert sim.stdout.readline().startswith("ready in")  # type: ignore[union-attr]
        kubectl(kubeconfig, "create", "namespace", NAMESPACE)
        crds = [str(p) for p in sorted((REPO / "charts/bimguard/crds").glob("*.yaml"))]
        kubectl(kubeconfig, "apply", *sum((["-f", c] for c in crds), []))
        # As Helm renders it for a cluster older than 1.28 (no matchConditions), the cluster since upgraded.
        old_form = {**mwc, "webhooks": [{k: v for k, v in h.items() if k != "matchConditions"} for h in mwc["webhooks"]]}
        assert mwc["webhooks"][0]["matchConditions"] and "matchConditions" not in old_form["webhooks"][0]
        kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(old_form))
        # The rewriter pods' namespace, ServiceAccount and ValidatingAdmissionPolicy, as the chart installs them:
        # the webhook's pods must pass the policy for the rewrite below to finish.
        rewriter = [d for d in docs if d["kind"] in ("Namespace", "ValidatingAdmissionPolicy",
                                                     "ValidatingAdmissionPolicyBinding")
                    or (d["kind"] == "ServiceAccount" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "rewriter")]
        assert len(rewriter) == 4
        kubectl(kubeconfig, "apply", "-f", "-", stdin="\n---\n".join(yaml.safe_dump(d) for d in
                                                                     sorted(rewriter, key=lambda d: d["kind"] != "Namespace")))
        local = [a for a in args if not a.startswith(("--port=", "--metrics-port="))]
        hook = subprocess.Popen([str(BIN / "bimguard"), *local, "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
                                 f"--port={port}", f"--metrics-port={metrics_port}", "--shutdown-delay=0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**ENV, "POD_NAME": "bimguard-0"})

        def injected() -> bool:
            live = json.loads(kubectl(kubeconfig, "get", "mutatingwebhookconfiguration", mwc["metadata"]["name"],
                                      "-o", "json"))
            return bool(live["webhooks"][0]["clientConfig"].get("caBundle"))

        wait(injected, 30, "the leader to inject the caBundle")

        def conditions() -> Any:
            live = json.loads(kubectl(kubeconfig, "get", "mutatingwebhookconfiguration", mwc["metadata"]["name"],
                                      "-o", "json"))
            return live["webhooks"][0].get("matchConditions")

        assert wait(conditions, 30, "the leader to add matchConditions") == mwc["webhooks"][0]["matchConditions"]

        taken, moved_uuid, cfg = add_moved_disk(kubeconfig, root, "0000-4000-8000-000000000002")

        def done():
            recs = json.loads(kubectl(kubeconfig, "get", "diskrewrites.bimguard.io", "-n", NAMESPACE, "-o", "json"))
            return [r for r in recs["items"] if (r.get("status") or {}).get("phase") == "Done"]

        (record,) = wait(done, 60, "the rewrite to be Done")
        # ... under the policy, which is live: any other pod there is refused.
        rewriter_ns = next(d for d in rewriter if d["kind"] == "Namespace")["metadata"]["name"]
        refused = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), "-n", rewriter_ns, "run", "x",
                                  "--image=busybox", "--dry-run=server", "--", "sh"],
                                 capture_output=True, text=True, timeout=60, env=ENV)
        assert refused.returncode != 0 and "ValidatingAdmissionPolicy" in refused.stderr, refused.stderr
        assert not json.loads(kubectl(kubeconfig, "get", "pods", "-n", NAMESPACE, "-o", "json"))["items"]
        new_uuid = record["spec"]["newUUID"]
        assert record["spec"]["oldUUID"] == moved_uuid and new_uuid[:4] != taken[:4]

        def ready_under_new_uuid() -> bool:
            n2 = json.loads(kubectl(kubeconfig, "get", "nodes.longhorn.io", "worker-2", "-n", "longhorn-system",
                                    "-o", "json"))
            entry = n2["status"]["diskStatus"]["moved"]
            ready = [c["status"] for c in entry["conditions"] if c["type"] == "Ready"]
            return entry["diskUUID"] == new_uuid and ready == ["True"]

        wait(ready_under_new_uuid, 30, "Longhorn to see the disk Ready under the new UUID")
        assert json.loads(cfg.read_text())["diskUUID"] == new_uuid  # the host file agrees (rewriter pod)
        events = json.loads(kubectl(kubeconfig, "get", "events", "-n", "longhorn-system", "-o", "json"))
        assert any(new_uuid in (e.get("message") or "") for e in events["items"])
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'bimguard_admission_outcomes_total{outcome="rewritten"} 1.0' in metrics

        def synced() -> bool:  # refreshed once a second from the watches; 0 while one relists
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            return 'bimguard_index_synced{resource="nodes"} 1.0' in text

        wait(synced, 15, "the nodes index to report synced")

        hook.send_signal(signal.SIGTERM)
        out, _ = hook.communicate(timeout=30)
        assert hook.returncode == 0, out
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert lines and all({"ts", "level", "msg"} <= set(line) for line in lines)
        assert any(line["msg"].startswith("rewrote disk worker-2/moved") for line in lines)
        assert not any("BEGIN" in line["msg"] or "PRIVATE" in json.dumps(line) for line in lines)
    finally:
        for proc in (hook, sim):
            if proc and proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=30)


def test_webhook_misconfigured_says_so_in_one_line(tmp_path: Path):
    """A namespace that does not exist: one line naming the Secret and the flag, exit 2, and no
    "Unclosed client session" noise. Without bimguard's CRDs: the leader's failing pass is one log
    line without a traceback, said once while it lasts (readiness says the rest)."""
    kubeconfig = tmp_path / "sim.kubeconfig"
    sim = subprocess.Popen([str(BIN / "bimguard"), "sim", "serve", "--nodes", "1", "--disks-per-node", "1",
                            "--time-scale", "0.01", "--kubeconfig", str(kubeconfig), "--no-kubelet"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        assert sim.stdout.readline().startswith("starting")  # type: ignore[union-attr]
        assert sim.stdout.readline().startswith("ready in")  # type: ignore[union-attr]
        common = ["webhook", "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1", "--port=0", "--metrics-port=0",
                  "--shutdown-delay=0"]
        r = subprocess.run([str(BIN / "bimguard"), *common, "--namespace", "nope"], capture_output=True, text=True,
                           timeout=60, env=ENV)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.splitlines() == ["bimguard webhook: cannot read or create the TLS Secret "
                                         "nope/bimguard-webhook-tls: 404 NotFound (does namespace nope exist? --namespace)"]

        hook = subprocess.Popen([str(BIN / "bimguard"), *common, "--namespace", "default"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**ENV, "POD_NAME": "bimguard-0"})
        try:  # the leader's passes run every 5 s: let it fail at least twice more
            out, _ = hook.communicate(timeout=12)
        except subprocess.TimeoutExpired:
            hook.send_signal(signal.SIGTERM)
            out, _ = hook.communicate(timeout=30)
        lines = [json.loads(line) for line in out.splitlines()]
        assert any(e["msg"].startswith("leading") for e in lines)
        failures = [e for e in lines if "pass failed" in e["msg"]]
        assert [e["msg"] for e in failures] == [
            "rewrite controller pass failed: the server could not find the requested resource "
            "(are bimguard CRDs installed?)"]
        assert not [e for e in lines if "Traceback" in json.dumps(e)]
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=30)


def test_the_readme_recipe_runs_the_webhook_against_the_emulator(tmp_path: Path):
    """README's "run the real webhook against the emulator", as written: `sim serve --with-bimguard`
    installs what the chart would and prints the webhook's command line; with that process running,
    a disk that arrives with a taken prefix is rewritten at admission."""
    kubeconfig, root, port = tmp_path / "sim.kubeconfig", tmp_path / "nodes", free_port()
    sim = subprocess.Popen([str(BIN / "bimguard"), "sim", "serve", "--nodes", "2", "--disks-per-node", "1",
                            "--seed", "5", "--kubeconfig", str(kubeconfig), "--root", str(root),
                            "--with-bimguard", f"127.0.0.1:{port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    hook = None
    try:
        assert sim.stdout is not None
        printed = [sim.stdout.readline() for _ in range(6)]
        command = next(line.split() for line in printed if line.strip().startswith("bimguard webhook"))
        hook = subprocess.Popen([str(BIN / command[0]), *command[1:]], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**ENV, "POD_NAME": "bimguard-0"})

        def injected() -> bool:
            mwc = json.loads(kubectl(kubeconfig, "get", "mutatingwebhookconfiguration", "bimguard-webhook", "-o", "json"))
            return bool(mwc["webhooks"][0]["clientConfig"].get("caBundle"))

        wait(injected, 30, "the leader to inject the caBundle")
        taken, _, _ = add_moved_disk(kubeconfig, root, "0000-4000-8000-000000000003")

        def rewritten():
            recs = json.loads(kubectl(kubeconfig, "get", "diskrewrites.bimguard.io", "-n", "bimguard", "-o", "json"))
            return recs["items"]

        (record,) = wait(rewritten, 30, "the webhook to record a rewrite")
        assert record["spec"]["disk"] == "moved" and record["spec"]["newUUID"][:4] != taken[:4]
    finally:
        for p in (hook, sim):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=30)
