"""Pod Security Standards of every pod the chart and the code make, judged by the emulator's
re-description of k8s.io/pod-security-admission (bimguard/sim/podsecurity.py):

- the webhook's pods, every Job's pods (repair hook, scheduled scan and repair, manual runs,
  uninstall) and the `helm test` Pod pass `restricted` (latest), with every option on: their
  namespace can enforce it;
- the on-node pods need `privileged` (root and a hostPath: `baseline` already refuses them), which
  is why they have a namespace of their own -- the only one the chart labels privileged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from bimguard import records
from bimguard.rewrite.pod import inspector_pod, rewriter_pod
from bimguard.sim import podsecurity

CHART = Path(__file__).resolve().parents[2] / "charts" / "bimguard"
RELEASE, NS = "bg", "bimguard-system"
EVERYTHING = {
    "repair": {"cronJob": {"enabled": True, "mode": "repair"}, "nodeSelector": {"kubernetes.io/os": "linux"},
               "tolerations": [{"key": "dedicated", "operator": "Exists"}]},
    "imagePullSecrets": [{"name": "regcred"}], "metrics": {"tls": True, "authorization": True},
    "tls": {"mode": "files", "secretName": "serving", "injectCABundle": True},
}
SCAN = {"repair": {"cronJob": {"enabled": True, "mode": "scan"}}}


def pod_templates(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NS, is_install=True)
    docs = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    found = {}
    for d in docs:
        if d["kind"] == "Deployment" or d["kind"] == "Job":
            found[f"{d['kind']}/{d['metadata']['name']}"] = d["spec"]["template"]
        elif d["kind"] == "Pod":  # the `helm test` Pod
            found[f"Pod/{d['metadata']['name']}"] = {"metadata": d["metadata"], "spec": d["spec"]}
        elif d["kind"] == "CronJob":
            found[f"CronJob/{d['metadata']['name']}"] = d["spec"]["jobTemplate"]["spec"]["template"]
    return found


def violations(level: str, template: dict[str, Any]) -> str:
    results = podsecurity.evaluate(podsecurity.LevelVersion(level), template.get("metadata") or {}, template["spec"])
    return podsecurity.aggregate(results).forbidden_detail()


@pytest.mark.parametrize("values", [{}, EVERYTHING, SCAN], ids=["defaults", "everything", "scan"])
def test_the_webhook_and_the_jobs_pass_restricted(values: dict[str, Any]) -> None:
    templates = pod_templates(values)
    assert any(k.startswith("Deployment/") for k in templates) and any(k.startswith("Job/") for k in templates)
    assert f"Pod/{RELEASE}-bimguard-test" in templates
    for name, template in templates.items():
        assert violations(podsecurity.RESTRICTED, template) == "", name


def test_the_check_can_refuse() -> None:
    """The same evaluation says no to a pod that drops one setting (so the test above can fail)."""
    template = pod_templates({})[f"Deployment/{RELEASE}-bimguard"]
    template = json.loads(json.dumps(template))
    del template["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    assert "allowPrivilegeEscalation != false" in violations(podsecurity.RESTRICTED, template)


def test_the_on_node_pods_need_privileged_and_only_they_do() -> None:
    record = records.rewrite_manifest(name="r-x", namespace=NS, node="worker-1", disk="d", disk_name="d",
                                      disk_path="/var/lib/longhorn/", old_uuid="a" * 8, new_uuid="b" * 8,
                                      reason="t", origin="webhook")
    for pod in (rewriter_pod(record, attempt=1, namespace="rw", image="i"),
                inspector_pod(record, attempt=1, namespace="rw", image="i")):
        baseline = violations(podsecurity.BASELINE, pod)
        assert "hostPath volumes" in baseline, baseline
        assert violations(podsecurity.PRIVILEGED, pod) == ""
    with helm.Chart.load(CHART) as chart:
        out = chart.render({}, name=RELEASE, namespace=NS, is_install=True)
    namespaces = [d for path, text in out.items() if not path.endswith("NOTES.txt")
                  for d in yaml.safe_load_all(text) if d and d["kind"] == "Namespace"]
    assert [(n["metadata"]["name"], n["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]) for n in namespaces] \
        == [(f"{NS}-{RELEASE}-bimguard-rewriter", "privileged")]
